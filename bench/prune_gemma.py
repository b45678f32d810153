"""Benchmark: prune Gemma 3 270M at 50% / 2:4 with each method and print one table.

Protocol in ``bench/_gemma.py`` (32 x 512 calibration tokens, ppl at seqlen 1024 over 8 windows).

    python bench/prune_gemma.py                       # all rows, float32 forwards
    python bench/prune_gemma.py --compute-dtype bfloat16
    python bench/prune_gemma.py --only sparsegpt:2:4
    python bench/prune_gemma.py --vs-peer --peer-python /tmp/peer-venv/bin/python

``--vs-peer`` runs llm-compressor (``bench/_peer.py``, in the Python given by ``--peer-python`` or
``$LLMSPARSE_PEER_PYTHON``: keep it in its own venv, it pins other transformers versions) after each
llmsparse row of SparseGPT 50%, Wanda 50% and SparseGPT 2:4, on the calibration windows that row
used, one fresh process each, and prints both tools' wall time and peak RSS with their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _gemma import machine_header, run_here, run_isolated  # noqa: E402

PEER_ROWS = ["sparsegpt:unstructured", "wanda:unstructured", "sparsegpt:2:4"]
ROWS = ["dense", "magnitude:unstructured", "wanda:unstructured", "sparsegpt:unstructured", "wanda:2:4", "sparsegpt:2:4"]


def spec_for(row: str, args: argparse.Namespace) -> dict:
    spec = {"compute_dtype": args.compute_dtype, "windows": args.windows, "seed": args.seed, "nsamples": args.nsamples}
    if row != "dense":
        method, pattern = row.split(":", 1)
        spec["prune"] = {"method": method, "sparsity": None if ":" in pattern else 0.5, "pattern": pattern}
    return spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compute-dtype", help="dtype of the calibration forwards (default: float32, the core protocol; with --vs-peer: auto, llmsparse's default)")
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--nsamples", type=int, default=32, help="calibration windows of 512 tokens")
    parser.add_argument("--seed", type=int, default=0, help="calibration seed")
    parser.add_argument("--only", nargs="+", choices=ROWS, help="run only these rows")
    parser.add_argument("--json", help="also write the rows as JSON here")
    parser.add_argument("--vs-peer", action="store_true", help="also run llm-compressor on the same windows (rows: " + ", ".join(PEER_ROWS) + ")")
    parser.add_argument("--peer-python", default=os.environ.get("LLMSPARSE_PEER_PYTHON"), help="a Python with llmcompressor installed")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_here(json.loads(args.child))))
        return
    args.compute_dtype = args.compute_dtype or ("auto" if args.vs_peer else "float32")
    if args.vs_peer:
        vs_peer(args)
        return
    results = []
    for row in args.only or ROWS:
        results.append({"row": row, **run_isolated(__file__, spec_for(row, args))})
        print(f"done {row}", file=sys.stderr)
    print(machine_header())
    print(f"Gemma 3 270M, calib {args.nsamples}x512 wiki.valid.tokens (seed {args.seed}), compute dtype {args.compute_dtype}, ppl wiki.test.raw seqlen 1024 x {args.windows} windows")
    print(f"| {'method':<10} | {'pattern':<12} | {'prune s':>7} | {'peak RSS GiB':>12} | {'ppl':>8} |")
    print(f"|{'-' * 12}|{'-' * 14}|{'-' * 9}|{'-' * 14}|{'-' * 10}|")
    for r in results:
        method, _, pattern = r["row"].partition(":")
        print(f"| {method:<10} | {pattern or '-':<12} | {r['seconds']:7.1f} | {r['peak_rss_gib']:12.2f} | {r['ppl']:8.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


def peer_run(python: str, spec: dict) -> dict:
    """One llm-compressor run in a fresh ``python`` process; its JSON line (stderr is passed through on failure)."""
    done = subprocess.run([python, str(Path(__file__).with_name("_peer.py")), json.dumps(spec)], capture_output=True, text=True)
    if done.returncode:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"llm-compressor run failed (exit {done.returncode}); its stderr is above")
    return json.loads(done.stdout.strip().splitlines()[-1])


def vs_peer(args: argparse.Namespace) -> None:
    """llmsparse then llm-compressor for each of PEER_ROWS, on the same calibration ids; one table."""
    if not args.peer_python:
        raise SystemExit("--vs-peer needs --peer-python (or $LLMSPARSE_PEER_PYTHON): a Python with llmcompressor, e.g. a venv under /tmp")
    check = subprocess.run([args.peer_python, "-c", "import llmcompressor; print(llmcompressor.__version__)"], capture_output=True, text=True)
    if check.returncode:
        raise SystemExit(f"{args.peer_python} cannot import llmcompressor: {check.stderr.strip().splitlines()[-1]}")
    version = check.stdout.strip().splitlines()[-1]  # llm-compressor logs to stdout on import
    print(machine_header())
    print(f"Gemma 3 270M float32, calib {args.nsamples}x512 wiki.valid.tokens (seed {args.seed}, same ids for both), llmsparse compute dtype {args.compute_dtype}, "
          f"llm-compressor {version} (oneshot, float32); prune s = the pruning call, whole s = process start to pruned model")
    print("| method    | pattern      | llmsparse forwards | llmsparse prune s | whole s | peak RSS GiB | llm-compressor prune s | whole s | peak RSS GiB | whole-s ratio |")
    print("|-----------|--------------|--------------------|------------------:|--------:|-------------:|-----------------------:|--------:|-------------:|--------------:|", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for row in args.only or PEER_ROWS:  # each row printed when done: a stopped run keeps the finished rows
            ids = str(Path(tmp) / "ids.pt")
            load = os.getloadavg()[0]
            ours = run_isolated(__file__, {**spec_for(row, args), "ids_out": ids, "t0": time.time()})
            method, pattern = row.split(":", 1)
            peer = peer_run(args.peer_python, {"model": ours["model_dir"], "ids": ids, "method": method, "pattern": pattern, "t0": time.time()})
            rows.append({"row": row, "llmsparse": ours, "llm-compressor": peer, "load_average": [load, os.getloadavg()[0]]})
            print(f"| {method:<9} | {pattern:<12} | {ours['compute_dtype']:<18} | {ours['seconds']:17.1f} | {ours['whole_s']:7.1f} | {ours['peak_rss_gib']:12.2f} | "
                  f"{peer['seconds']:22.1f} | {peer['whole_s']:7.1f} | {peer['peak_rss_gib']:12.2f} | {ours['whole_s'] / peer['whole_s']:12.2f}x |", flush=True)
            print(f"  {row}: sparsity of the decoder matrices llmsparse {ours['global_sparsity']:.4f}, llm-compressor {peer['global_sparsity']:.4f}; "
                  f"llmsparse ppl {ours['ppl']:.2f} ({ours['windows']} windows); load average {load:.1f} -> {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
