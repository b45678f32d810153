"""Benchmark: prune Gemma 3 270M at 50% / 2:4 with each method and print one table.

Protocol in ``bench/_gemma.py`` (32 x 512 calibration tokens, ppl at seqlen 1024 over 8 windows).

    python bench/prune_gemma.py                       # all rows, float32 forwards
    python bench/prune_gemma.py --compute-dtype bfloat16
    python bench/prune_gemma.py --only sparsegpt:2:4
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _gemma import run_here, run_isolated  # noqa: E402

ROWS = ["dense", "magnitude:unstructured", "wanda:unstructured", "sparsegpt:unstructured", "wanda:2:4", "sparsegpt:2:4"]


def spec_for(row: str, args: argparse.Namespace) -> dict:
    spec = {"compute_dtype": args.compute_dtype, "windows": args.windows, "seed": args.seed}
    if row != "dense":
        method, pattern = row.split(":", 1)
        spec["prune"] = {"method": method, "sparsity": None if ":" in pattern else 0.5, "pattern": pattern}
    return spec


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
        print(json.dumps(run_here(json.loads(args.child))))
        return
    results = []
    for row in args.only or ROWS:
        results.append({"row": row, **run_isolated(__file__, spec_for(row, args))})
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
