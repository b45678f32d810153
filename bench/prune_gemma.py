"""Benchmark: prune Gemma 3 270M with each method and print one table.

Setup (the core issue's protocol): calibration 32 x 512 tokens from WikiText-2 valid
(``wiki.valid.tokens``), perplexity on ``wiki.test.raw`` at seqlen 1024 over the first 8 windows.
Every configuration runs in a fresh subprocess, so "peak RSS" is that run's own high-water mark
(model load + calibration + pruning, measured before the perplexity evaluation).

    python bench/prune_gemma.py                       # all rows, float32 forwards
    python bench/prune_gemma.py --compute-dtype bfloat16
    python bench/prune_gemma.py --only sparsegpt:2:4
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikitext2"
ROWS = ["dense", "magnitude:unstructured", "wanda:unstructured", "sparsegpt:unstructured", "wanda:2:4", "sparsegpt:2:4"]


def run_one(row: str, compute_dtype: str, windows: int, seed: int) -> dict:
    import llmsparse

    model, tok = llmsparse.load_model("gemma-3-270m")
    seconds = 0.0
    if row != "dense":
        method, pattern = row.split(":", 1)
        started = time.perf_counter()
        llmsparse.prune(
            model,
            tok,
            method=method,
            sparsity=None if ":" in pattern else 0.5,
            pattern=pattern,
            calib=str(DATA / "wiki.valid.tokens"),
            nsamples=32,
            seqlen=512,
            seed=seed,
            device="cpu",
            compute_dtype=compute_dtype,
        )
        seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB -> GiB
    ppl = llmsparse.perplexity(model, tok, str(DATA / "wiki.test.raw"), seqlen=1024, windows=windows)
    return {"row": row, "seconds": seconds, "peak_rss_gib": peak, "ppl": ppl.ppl, "windows": ppl.windows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compute-dtype", default="auto", help="dtype of the calibration forwards (auto = float32 here)")
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="calibration seed")
    parser.add_argument("--only", nargs="+", choices=ROWS, help="run only these rows")
    parser.add_argument("--json", help="also write the rows as JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args.compute_dtype, args.windows, args.seed)))
        return
    results = []
    for row in args.only or ROWS:
        cmd = [sys.executable, __file__, "--child", row, "--compute-dtype", args.compute_dtype, "--windows", str(args.windows), "--seed", str(args.seed)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(f"done {row}", file=sys.stderr)
    print(f"Gemma 3 270M, calib 32x512 wiki.valid.tokens (seed {args.seed}), compute dtype {args.compute_dtype}, ppl wiki.test.raw seqlen 1024 x {args.windows} windows")
    print(f"| {'method':<10} | {'pattern':<12} | {'prune s':>7} | {'peak RSS GiB':>12} | {'ppl':>8} |")
    print(f"|{'-' * 12}|{'-' * 14}|{'-' * 9}|{'-' * 14}|{'-' * 10}|")
    for r in results:
        method, _, pattern = r["row"].partition(":")
        print(f"| {method:<10} | {pattern or '-':<12} | {r['seconds']:7.1f} | {r['peak_rss_gib']:12.2f} | {r['ppl']:8.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
