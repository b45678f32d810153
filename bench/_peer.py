"""The llm-compressor side of ``bench/prune_gemma.py --vs-peer``: run by the peer's Python, never imports llmsparse.

    PEER_PYTHON bench/_peer.py '{"model": DIR, "ids": IDS.pt, "method": "sparsegpt", "pattern": "unstructured", "t0": ...}'

Loads the same float32 Gemma 3 270M checkpoint llmsparse uses (its converted cache directory),
prunes it with llm-compressor's ``oneshot`` on the calibration windows llmsparse used (token ids
saved by the llmsparse run, so both see the same 32 x 512 tokens), and prints one JSON line: the
``oneshot`` wall time, the time since the parent started this process (``t0``: interpreter start,
imports, load and pruning), the peak RSS after pruning, and the sparsity of the decoder matrices.
"""

from __future__ import annotations

import json
import resource
import sys
import time


def main() -> None:
    spec = json.loads(sys.argv[1])
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
    from transformers import AutoModelForCausalLM

    torch.set_grad_enabled(False)
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    ids = torch.load(spec["ids"])
    data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    structure = "0:0" if spec["pattern"] == "unstructured" else spec["pattern"]
    sparsity = 0.5
    cls = {"sparsegpt": SparseGPTModifier, "wanda": WandaPruningModifier}[spec["method"]]
    recipe = cls(sparsity=sparsity, mask_structure=structure, targets=["Linear"], ignore=["re:.*lm_head"])  # as llmsparse: decoder Linears only
    started = time.perf_counter()
    oneshot(model=model, dataset=data, recipe=recipe, num_calibration_samples=ids.shape[0], max_seq_length=ids.shape[1], shuffle_calibration_samples=False)
    seconds = time.perf_counter() - started
    whole = time.time() - spec["t0"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    zeros = total = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in name:
            zeros += int((module.weight == 0).sum())
            total += module.weight.numel()
    print(json.dumps({"seconds": seconds, "whole_s": whole, "peak_rss_gib": peak, "global_sparsity": zeros / max(total, 1)}))


if __name__ == "__main__":
    main()
