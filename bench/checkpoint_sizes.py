"""Checkpoint sizes of Gemma 3 270M pruned to 50% and 2:4 in each format, and reload exactness.

Gemma is loaded in bfloat16 and pruned with Wanda (32 x 512 calibration tokens of wiki.valid.tokens);
each format is saved, its size measured, the directory reloaded with ``llmsparse.load_model``, and
perplexity (wiki.test.raw, seqlen 1024, 8 windows) compared with the in-memory pruned model.

    python bench/checkpoint_sizes.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _gemma import DATA, machine_header  # noqa: E402

import llmsparse  # noqa: E402


def directory_bytes(path: Path, suffix: str = ".safetensors") -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.name.endswith(suffix))


def main() -> None:
    text = str(DATA / "wiki.test.raw")
    rows = []
    for pattern, formats in ((None, ["dense", "bitmask"]), ("2:4", ["dense", "bitmask", "2:4"])):
        model, tok = llmsparse.load_model("gemma-3-270m", dtype="bfloat16")
        report = llmsparse.prune(model, tok, method="wanda", sparsity=None if pattern else 0.5, pattern=pattern,
                                 calib=str(DATA / "wiki.valid.tokens"), nsamples=32, seqlen=512, device="cpu")
        in_memory = llmsparse.perplexity(model, tok, text, seqlen=1024, windows=8).ppl
        for fmt in formats:
            with tempfile.TemporaryDirectory() as tmp:
                out = llmsparse.save_pruned(model, tok, Path(tmp) / "out", report=report, format=fmt)
                size = directory_bytes(out)
                again, _ = llmsparse.load_model(out)
                same = all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))
                reloaded = llmsparse.perplexity(again, tok, text, seqlen=1024, windows=8).ppl
            storage = report.storage if fmt != "dense" else {}
            report.storage = {}
            rows.append((pattern or "50%", fmt, size, storage, in_memory, reloaded, same))
            print(f"done {pattern or '50%'} {fmt}", file=sys.stderr)
    print(machine_header())
    print("Gemma 3 270M (bfloat16), Wanda, calib 32x512 wiki.valid.tokens; ppl wiki.test.raw seqlen 1024 x 8 windows")
    print("| sparsity | format | safetensors bytes | pruned matrices: dense -> stored | ratio | ppl in memory | ppl reloaded | tensors identical |")
    print("|---|---|---|---|---|---|---|---|")
    for sparsity, fmt, size, s, before, after, same in rows:
        matrices = f"{s['bytes_dense']:,} -> {s['bytes_compressed']:,}" if s else "-"
        ratio = f"{s['bytes_compressed'] / s['bytes_dense']:.3f}" if s else "1"
        print(f"| {sparsity} | {fmt} | {size:,} | {matrices} | {ratio} | {before:.3f} | {after:.3f} | {same} |")


if __name__ == "__main__":
    main()
