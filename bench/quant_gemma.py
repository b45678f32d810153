"""Benchmark: sparse and quantized together on Gemma 3 270M: SparseGPT 50% unquantized, joint SparseGPT 50% + int4 g128
(prune and quantize in one column loop), and SparseGPT 50% then round-to-nearest int4 g128.

Protocol in ``bench/_gemma.py`` (32 x 512 calibration tokens of wiki.valid.tokens, seed 0; ppl on
wiki.test.raw at seqlen 1024 over 8 windows). Each row runs in a fresh process; "bytes" are those of
the pruned matrices as saved (unquantized: the ``bitmask`` format; quantized: ``pack-quantized``),
"dense" the same matrices as plain float32 safetensors.

    python bench/quant_gemma.py
    python bench/quant_gemma.py --only joint-int4-g128
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _gemma import DATA, run_isolated  # noqa: E402

QUANT = {"quantize": "int4", "group_size": 128}
ROWS = {
    "sparsegpt-50%": ({}, "bitmask"),
    "joint-int4-g128": (QUANT, "pack-quantized"),
    "sparsegpt-then-rtn-int4-g128": ({**QUANT, "quantize_method": "rtn"}, "pack-quantized"),
}


def run_here(spec: dict) -> dict:
    import llmsparse

    model, tok = llmsparse.load_model("gemma-3-270m")
    started = time.perf_counter()
    report = llmsparse.prune(
        model, tok, method="sparsegpt", sparsity=0.5, calib=str(DATA / "wiki.valid.tokens"), nsamples=32, seqlen=512, seed=0, device="cpu",
        **spec["quant"],
    )
    seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        llmsparse.save_pruned(model, tok, Path(tmp) / "out", report=report, format=spec["format"])
    ppl = llmsparse.perplexity(model, tok, str(DATA / "wiki.test.raw"), seqlen=1024, windows=spec["windows"])
    return {"seconds": seconds, "ppl": ppl.ppl, "windows": ppl.windows, "global_sparsity": report.global_sparsity, **report.storage}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--only", nargs="+", choices=list(ROWS), help="run only these rows")
    parser.add_argument("--json", help="also write the rows as JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_here(json.loads(args.child))))
        return
    results = []
    for row in args.only or ROWS:
        quant, fmt = ROWS[row]
        results.append({"row": row, **run_isolated(__file__, {"quant": quant, "format": fmt, "windows": args.windows})})
        print(f"done {row}", file=sys.stderr)
    print(f"Gemma 3 270M, SparseGPT 50%, calib 32x512 wiki.valid.tokens (seed 0), ppl wiki.test.raw seqlen 1024 x {args.windows} windows")
    print(f"| {'run':<28} | {'ppl':>7} | {'prune+quant s':>13} | {'sparsity':>8} | {'format':<14} | {'bytes':>11} | {'dense bytes':>11} |")
    print(f"|{'-' * 30}|{'-' * 9}|{'-' * 15}|{'-' * 10}|{'-' * 16}|{'-' * 13}|{'-' * 13}|")
    for r in results:
        print(
            f"| {r['row']:<28} | {r['ppl']:7.2f} | {r['seconds']:13.1f} | {r['global_sparsity']:8.4f} | {r['format']:<14} "
            f"| {r['bytes_compressed']:11,} | {r['bytes_dense']:11,} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
