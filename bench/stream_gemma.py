"""Peak memory and wall time of pruning in memory vs streamed (``--stream``), and that both give the same tensors.

Models: a synthetic Llama-architecture checkpoint (random weights, written shard by shard into a
temporary directory by this script, never kept) at two depths, and Gemma 3 270M (the cached
safetensors conversion of the bundled GGUF). Each run is a fresh subprocess, so its peak RSS
(``ru_maxrss``) is that run's own: in memory = ``load_model`` + ``prune`` + ``save_pruned``;
streamed = ``prune_checkpoint`` (which writes the same output directory). Magnitude pruning at 50%
keeps the CPU time short on a shared machine (``--method wanda`` runs Wanda with 8 x 256 calibration
tokens from the first 300 lines of wiki.valid.tokens). Writes docs/stream_bench.json.

    python bench/stream_gemma.py                      # depths 10 and 14 (2.3 GB and 3.0 GB float32)
    python bench/stream_gemma.py --depths 8 --no-gemma
    python bench/stream_gemma.py --depths                 # Gemma 3 270M only
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "wikitext2"
SETTINGS = dict(method="magnitude", sparsity=0.5, device="cpu")
CALIB_LINES = 300  # of wiki.valid.tokens (plenty for 8 x 257 tokens): tokenizing the whole file costs ~300 MB of RSS in both modes


def synthetic_llama(directory: Path, layers: int, hidden: int, intermediate: int, vocab: int) -> int:
    """A random float32 Llama checkpoint (one shard per decoder layer, embeddings and head in their own) plus a small tokenizer; returns its bytes."""
    import torch
    import transformers
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    directory.mkdir(parents=True)
    heads = hidden // 128
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads // 4, max_position_embeddings=4096, tie_word_embeddings=False,
    )
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = "float32"
    config.save_pretrained(directory)
    g = torch.Generator().manual_seed(0)
    kv = hidden // 4

    def rand(*shape):
        return torch.randn(*shape, generator=g) * 0.02

    def shards():  # made one at a time, so this process never holds the model
        yield {"model.embed_tokens.weight": rand(vocab, hidden)}
        for i in range(layers):
            p = f"model.layers.{i}."
            yield {
                p + "self_attn.q_proj.weight": rand(hidden, hidden), p + "self_attn.k_proj.weight": rand(kv, hidden),
                p + "self_attn.v_proj.weight": rand(kv, hidden), p + "self_attn.o_proj.weight": rand(hidden, hidden),
                p + "mlp.gate_proj.weight": rand(intermediate, hidden), p + "mlp.up_proj.weight": rand(intermediate, hidden),
                p + "mlp.down_proj.weight": rand(hidden, intermediate),
                p + "input_layernorm.weight": torch.ones(hidden), p + "post_attention_layernorm.weight": torch.ones(hidden),
            }
        yield {"model.norm.weight": torch.ones(hidden), "lm_head.weight": rand(vocab, hidden)}

    weight_map, total, count = {}, 0, layers + 2
    for k, tensors in enumerate(shards(), start=1):
        name = f"model-{k:05d}-of-{count:05d}.safetensors"
        save_file(tensors, str(directory / name), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(tensors, name)
        total += sum(t.numel() * 4 for t in tensors.values())
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    lines = (DATA / "wiki.valid.tokens").read_text(encoding="utf-8").splitlines()[:400]
    tok.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=320, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>").save_pretrained(directory)
    return total


def child(mode: str, source: str, output: str, calib: str) -> None:
    """One measured run (in its own process): prints ``{"wall": s, "peak": bytes}``."""
    sys.path.insert(0, str(ROOT))
    import llmsparse
    from llmsparse.core.memory import peak_rss

    started = time.perf_counter()
    if mode == "memory":
        model, tok = llmsparse.load_model(source)
        report = llmsparse.prune(model, tok, calib=calib, **SETTINGS)
        llmsparse.save_pruned(model, tok, output, report=report)
    else:
        llmsparse.prune_checkpoint(source, output, calib=calib, **SETTINGS)
    print(json.dumps({"wall": time.perf_counter() - started, "peak": peak_rss()}))


def measure(mode: str, source: Path, output: Path) -> dict:
    calib = output.parent / "calib.txt"
    if not calib.is_file():
        calib.write_text("\n".join((DATA / "wiki.valid.tokens").read_text(encoding="utf-8").splitlines()[:CALIB_LINES]) + "\n", encoding="utf-8")
    command = [sys.executable, __file__, "--method", SETTINGS["method"], "--child", mode, str(source), str(output), str(calib)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def same_tensors(a: Path, b: Path) -> bool:
    """Every tensor of output ``a`` equals the one of the same name in ``b`` (read one at a time)."""
    import torch
    from safetensors import safe_open

    from llmsparse.formats import shard_files

    def where(d):
        out = {}
        for shard in shard_files(d):
            with safe_open(str(shard), "pt") as f:
                out |= dict.fromkeys(f.keys(), shard)
        return out

    wa, wb = where(a), where(b)
    if set(wa) != set(wb):
        return False
    for key in wa:
        with safe_open(str(wa[key]), "pt") as fa, safe_open(str(wb[key]), "pt") as fb:
            if not torch.equal(fa.get_tensor(key), fb.get_tensor(key)):
                return False
    return True


def case(name: str, source: Path, nbytes: int, work: Path) -> dict:
    memory = measure("memory", source, work / "memory")
    streamed = measure("stream", source, work / "stream")
    same = same_tensors(work / "memory", work / "stream")
    shutil.rmtree(work / "memory")
    shutil.rmtree(work / "stream")
    row = {"model": name, "checkpoint_bytes": nbytes, "memory": memory, "stream": streamed, "same_tensors": same}
    print(f"{name}: checkpoint {nbytes / 2**30:.2f} GiB | in memory {memory['peak'] / 2**30:.2f} GiB {memory['wall']:.1f} s | "
          f"streamed {streamed['peak'] / 2**30:.2f} GiB ({streamed['peak'] / nbytes:.2f}x checkpoint) {streamed['wall']:.1f} s "
          f"({streamed['wall'] / memory['wall']:.2f}x) | same tensors {same}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=4, metavar=("MODE", "SOURCE", "OUTPUT", "CALIB"), help=argparse.SUPPRESS)
    parser.add_argument("--depths", type=int, nargs="*", default=[10, 14], help="synthetic depths (none: only Gemma)")
    parser.add_argument("--method", default="magnitude", choices=["magnitude", "wanda"])
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--no-gemma", action="store_true")
    args = parser.parse_args()
    SETTINGS.update(method=args.method, **({"nsamples": 8, "seqlen": 256} if args.method == "wanda" else {}))
    if args.child:
        return child(*args.child)
    sys.path.insert(0, str(ROOT))
    rows = []
    with tempfile.TemporaryDirectory(prefix="stream-bench-") as tmp:
        work = Path(tmp)
        for depth in args.depths:
            source = work / f"llama-{depth}"
            nbytes = synthetic_llama(source, depth, args.hidden, args.intermediate, args.vocab)
            rows.append(case(f"synthetic Llama, {depth} layers", source, nbytes, work))
            shutil.rmtree(source)
        if not args.no_gemma:
            from llmsparse.checkpoint.load import _bundled_gemma_gguf, _gguf_to_safetensors
            from llmsparse.core.memory import weight_bytes
            from llmsparse.formats import shard_files

            source = _gguf_to_safetensors(Path(_bundled_gemma_gguf()))
            rows.append(case("Gemma 3 270M", source, weight_bytes(shard_files(source)), work))
    path = ROOT / "docs" / "stream_bench.json"  # rows of other models from earlier runs are kept
    kept = [r for r in (json.loads(path.read_text())["rows"] if path.is_file() else []) if r["model"] not in {row["model"] for row in rows}]
    path.write_text(json.dumps({"settings": SETTINGS | {"calib": f"first {CALIB_LINES} lines of wiki.valid.tokens"}, "rows": kept + rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
