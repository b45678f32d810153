"""Speed of structurally pruned 7B-shaped models under stock transformers (the GPU table of docs/STRUCTURED.md).

A random Llama-2-7B-shaped model (hidden 4096, FFN 11008, 32 blocks, 32 heads; bfloat16) gets, for
each method and target, exactly the cuts the method's budget gives (``budget()`` of 2ssp, shortgpt and
width): the first neurons of every FFN, the first attention modules zeroed, the first blocks dropped
(which ones does not change the speed). Prefill of 512 tokens (``logits_to_keep=1``) and batch-1
greedy decoding are timed as in bench/structured_gemma.py, dense vs pruned, one model at a time.

    python bench/structured_7b.py --device cuda          # the GPU table (~14 GB per model)
    python bench/structured_7b.py --device cpu --tiny    # a smoke run of the script on a small shape
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).parent))
from structured_gemma import SPARSITIES, STRUCTURED, speed  # noqa: E402

from llmsparse.structured import STRUCTURED as METHODS  # noqa: E402
from llmsparse.structured.anatomy import blocks  # noqa: E402
from llmsparse.structured.base import Shape  # noqa: E402
from llmsparse.structured.surgery import narrow_ffn, remove_attention, remove_blocks  # noqa: E402

SHAPE_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32)
SHAPE_TINY = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4)


def build(shape: dict, device: str) -> transformers.PreTrainedModel:
    config = transformers.LlamaConfig(vocab_size=32000, max_position_embeddings=4096, **shape)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    return model.eval()


def cut(model, method: str, sparsity: float) -> dict:
    """Apply ``method``'s budget at ``sparsity`` with arbitrary choices; the counts it removed."""
    _, found = blocks(model)
    shape = Shape.of(found)
    budget = METHODS.create(method).budget(shape, sparsity)
    if budget.neurons:
        narrow_ffn(model, [torch.arange(budget.neurons, shape.width) for _ in found])
    remove_attention(model, range(budget.attention))
    remove_blocks(model, range(budget.blocks))
    return vars(budget)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a small shape, to check the script")
    parser.add_argument("--json", default=str(Path(__file__).resolve().parents[1] / "docs" / "structured_7b.json"))
    args = parser.parse_args()
    shape = SHAPE_TINY if args.tiny else SHAPE_7B
    ids = torch.randint(0, 32000, (1, 512), generator=torch.Generator().manual_seed(0))
    results = {}
    for method, sparsity in [("dense", 0.0)] + [(m, s) for s in SPARSITIES for m in STRUCTURED]:
        model = build(shape, args.device)
        budget = cut(model, method, sparsity) if method != "dense" else {}
        results[f"{method}|{sparsity:g}"] = {"budget": budget, **speed(model, ids, args.device)}
        print(method, sparsity, json.dumps(results[f"{method}|{sparsity:g}"]), flush=True)
        del model
        gc.collect()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    if not args.tiny:
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device, **results}, indent=1) + "\n")
    dense = results["dense|0"]
    for name, r in results.items():
        print(f"| {name} | {r['prefill_tok_s']:.0f} ({r['prefill_tok_s'] / dense['prefill_tok_s']:.2f}x) | {r['decode_tok_s']:.1f} ({r['decode_tok_s'] / dense['decode_tok_s']:.2f}x) |")


if __name__ == "__main__":
    main()
