"""Benchmark: sparse and quantized together on Gemma 3 270M (issue table): dense, SparseGPT and Wanda at 50%
and 2:4, each x {no quantization, int8, int4 g128} x {joint/GPTQ-with-mask, prune then RTN, bitsandbytes}.

Protocol in ``bench/_gemma.py`` (32 x 512 calibration tokens of wiki.valid.tokens, seed 0; ppl on
wiki.test.raw at seqlen 1024 over 8 windows). One fresh process per group (a method and pattern):

* ``none``: the pruned model as it is; bytes are the pruned matrices saved as ``bitmask`` (dense: float32).
* ``gptq``: ``prune(..., quantize=...)``: SparseGPT's joint mode, GPTQ that keeps the mask after
  Wanda, plain GPTQ for dense (``sparsegpt`` at sparsity 0); bytes as saved in ``pack-quantized``.
* ``rtn``: the pruned checkpoint, then round to nearest on the same grid (``magnitude`` at sparsity
  0 with ``quantize_method='rtn'``: it keeps every weight, zeros included); ``pack-quantized`` bytes.
* ``bnb``: the pruned checkpoint loaded with bitsandbytes (int4: NF4 with bf16 compute, block 64;
  int8: LLM.int8); bytes are the quantized matrices in memory (codes plus absmax/row scales).

int8 is per output channel, int4 has a scale per 128 inputs. "s" is the time to make the model from
the dense one: the pruning call for ``none``/``gptq``, plus the RTN call or the bitsandbytes load.
"bytes" and bits/w: ``pack-quantized`` for gptq/rtn rows; "bitmask bits/w" is our smallest form (the
bit mask plus the kept weights' codes and scales; unquantized rows: float32 values), which the plot uses.
"sparsity" is the fraction of the decoder matrices' weights that are exactly zero after quantization;
"pruned kept 0" the fraction of the pruned weights still zero after RTN or bitsandbytes (must be 1);
joint and GPTQ rows are runs of their own (later layers calibrate on quantized outputs, so their
masks differ slightly from the unquantized run's) that keep their own mask exactly zero by construction. bits/weight counts every
byte of those matrices (codes, masks, scales). The plot is bits per weight against ppl.

    python bench/quant_gemma.py --json docs/quant_gemma.json --plot docs/quant_gemma.png
    python bench/quant_gemma.py --only sparsegpt-50%
    python bench/quant_gemma.py --only sparsegpt-50% --grids "int4 g128 asym" --kinds gptq rtn --json docs/quant_gemma.json
    python bench/quant_gemma.py --no-run --json docs/quant_gemma.json --plot docs/quant_gemma.png
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _gemma import DATA, machine_header, run_isolated  # noqa: E402

GROUPS = {
    "dense": None,
    "sparsegpt-50%": ("sparsegpt", "unstructured"),
    "sparsegpt-2:4": ("sparsegpt", "2:4"),
    "wanda-50%": ("wanda", "unstructured"),
    "wanda-2:4": ("wanda", "2:4"),
}
GRIDS = {
    "int8": {"quantize": "int8", "group_size": -1},
    "int4 g128": {"quantize": "int4", "group_size": 128},
    "int4 g128 asym": {"quantize": "int4", "group_size": 128, "symmetric": False},  # a zero point per group (--grids)
}
DEFAULT_GRIDS = ["int8", "int4 g128"]
CALIB = {"calib": str(DATA / "wiki.valid.tokens"), "nsamples": 32, "seqlen": 512, "seed": 0, "device": "cpu", "compute_dtype": "float32"}


def decoder_matrices(model):
    import torch

    return [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n]


def measure(model, tok, windows: int, pruned: dict | None) -> dict:
    """ppl, and zeros of the decoder matrices as computed with (bitsandbytes: dequantized)."""
    import llmsparse
    from llmsparse.core.bnb import dequantized

    zeros = total = still = pruned_total = 0
    for name, m in decoder_matrices(model):
        w = dequantized(m) if type(m).__module__.startswith("bitsandbytes") else m.weight
        w = w.reshape(m.out_features, m.in_features)
        zeros += int((w == 0).sum())
        total += w.numel()
        if pruned is not None:
            still += int((w[pruned[name]] == 0).sum())
            pruned_total += int(pruned[name].sum())
    ppl = llmsparse.perplexity(model, tok, str(DATA / "wiki.test.raw"), seqlen=1024, windows=windows)
    return {"ppl": ppl.ppl, "sparsity": zeros / total, "pruned_still_zero": still / pruned_total if pruned_total else 1.0, "weights": total}


def saved_bytes(model, tok, report, fmt: str) -> int:
    import llmsparse

    with tempfile.TemporaryDirectory() as tmp:
        llmsparse.save_pruned(model, tok, Path(tmp) / "out", report=report, format=fmt)
    return report.storage["bytes_compressed"]


def sizes(model, tok, report, symmetric: bool = True) -> dict:
    """Bytes of the quantized decoder matrices as ``pack-quantized`` (what stock tools load; symmetric grids only, else
    ``bitmask`` again) and as our quantized ``bitmask``."""
    bitmask = saved_bytes(model, tok, report, "bitmask")
    return {"bytes": saved_bytes(model, tok, report, "pack-quantized") if symmetric else bitmask, "bytes_bitmask": bitmask}


def bnb_bytes(model) -> int:
    """In-memory bytes of the bitsandbytes matrices: packed codes plus NF4 absmax (and its nesting) or int8 row scales."""
    total = 0
    for _, m in decoder_matrices(model):
        w = m.weight
        total += w.data.numel() * w.data.element_size()
        state = getattr(w, "quant_state", None)
        if state is not None:
            total += state.absmax.numel() * state.absmax.element_size()
        if getattr(w, "SCB", None) is not None:
            total += w.SCB.numel() * w.SCB.element_size()
    return total


def run_here(spec: dict) -> list[dict]:
    import llmsparse

    group, windows, kinds = spec["group"], spec["windows"], spec["kinds"]
    grids = {label: GRIDS[label] for label in spec.get("grids", DEFAULT_GRIDS)}
    method, pattern = GROUPS[group] or ("sparsegpt", "unstructured")
    prune_args = {"method": method, "pattern": pattern, "sparsity": 0.5 if GROUPS[group] else 0.0, **CALIB}
    rows = []
    model, tok = llmsparse.load_model("gemma-3-270m")
    started = time.perf_counter()
    report = llmsparse.prune(model, tok, **prune_args) if GROUPS[group] else None
    base_s = time.perf_counter() - started
    pruned = {n: m.weight == 0 for n, m in decoder_matrices(model)} if GROUPS[group] else None
    dense_bytes = sum(m.weight.numel() * 4 for _, m in decoder_matrices(model))
    if "none" in kinds:
        size = saved_bytes(model, tok, report, "bitmask") if report else dense_bytes
        rows.append({"quant": "none", "via": "-", "seconds": base_s, "bytes": size, **measure(model, tok, windows, pruned)})
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        llmsparse.save_pruned(model, tok, base, report=report)
        del model
        for label, grid in grids.items():
            if "gptq" in kinds:
                model, tok = llmsparse.load_model("gemma-3-270m")
                started = time.perf_counter()
                rep = llmsparse.prune(model, tok, **prune_args, **grid)
                seconds = time.perf_counter() - started
                rows.append({"quant": label, "via": "joint" if method == "sparsegpt" and GROUPS[group] else "gptq", "seconds": seconds,
                             **sizes(model, tok, rep, grid.get("symmetric", True)), **measure(model, tok, windows, pruned)})
            if "rtn" in kinds:
                model, tok = llmsparse.load_model(base)
                started = time.perf_counter()
                rep = llmsparse.prune(model, tok, method="magnitude", sparsity=0.0, quantize_method="rtn", **grid)
                seconds = base_s + time.perf_counter() - started
                rows.append({"quant": label, "via": "rtn", "seconds": seconds, **sizes(model, tok, rep, grid.get("symmetric", True)),
                             **measure(model, tok, windows, pruned)})
            if "bnb" in kinds and grid.get("symmetric", True):
                started = time.perf_counter()
                model, tok = llmsparse.load_model(base, load_in="4bit" if grid["quantize"] == "int4" else "8bit")
                seconds = base_s + time.perf_counter() - started
                rows.append({"quant": label, "via": "bnb nf4" if grid["quantize"] == "int4" else "bnb int8", "seconds": seconds,
                             "bytes": bnb_bytes(model), **measure(model, tok, windows, pruned)})
            model = None
    return [{"group": group, "dense_bytes": dense_bytes, **r, "bits_per_weight": 8 * r["bytes"] / r["weights"],
             "bitmask_bits_per_weight": 8 * r.get("bytes_bitmask", r["bytes"]) / r["weights"]} for r in rows]


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    markers = {"-": "o", "joint": "*", "gptq": "s", "rtn": "x", "bnb nf4": "^", "bnb int8": "v"}
    colors = dict(zip(GROUPS, ["black", "tab:red", "tab:orange", "tab:blue", "tab:cyan"]))
    for r in rows:
        ax.scatter(r["bitmask_bits_per_weight"], r["ppl"], marker=markers[r["via"]], color=colors[r["group"]], s=60)
    for group, color in colors.items():
        ax.scatter([], [], color=color, marker="o", label=group)
    for via, marker in markers.items():
        ax.scatter([], [], color="gray", marker=marker, label={"-": "unquantized"}.get(via, via))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight of the decoder matrices, smallest form (bitmask + codes + scales; bnb: in memory)")
    ax.set_ylabel("perplexity, wiki.test.raw (8 x 1024)")
    ax.set_title("Gemma 3 270M: sparsity x quantization (bench/quant_gemma.py)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(rows: list[dict], windows: int) -> None:
    print(machine_header())
    print(f"Gemma 3 270M, calib 32x512 wiki.valid.tokens (seed 0), ppl wiki.test.raw seqlen 1024 x {windows} windows; "
          "int8 per channel, int4 g128; bytes of the decoder matrices (float32 dense: "
          f"{rows[0]['dense_bytes']:,})")
    print(f"| {'model':<13} | {'quant':<9} | {'via':<8} | {'ppl':>8} | {'s':>6} | {'sparsity':>8} | {'pruned kept 0':>13} | {'bytes':>11} | {'bits/w':>6} | {'bitmask bits/w':>14} |")
    print(f"|{'-' * 15}|{'-' * 11}|{'-' * 10}|{'-' * 10}|{'-' * 8}|{'-' * 10}|{'-' * 15}|{'-' * 13}|{'-' * 8}|{'-' * 16}|")
    for r in rows:
        kept0 = "own run" if r["via"] in ("joint", "gptq") else f"{r['pruned_still_zero']:.4%}"  # a run of its own, with its own mask
        print(f"| {r['group']:<13} | {r['quant']:<9} | {r['via']:<8} | {r['ppl']:8.2f} | {r['seconds']:6.1f} | {r['sparsity']:8.4f} | "
              f"{kept0:>13} | {r['bytes']:11,} | {r['bits_per_weight']:6.2f} | {r['bitmask_bits_per_weight']:14.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--only", nargs="+", choices=list(GROUPS), help="run only these groups")
    parser.add_argument("--kinds", nargs="+", default=["none", "gptq", "rtn", "bnb"], choices=["none", "gptq", "rtn", "bnb"])
    parser.add_argument("--grids", nargs="+", default=DEFAULT_GRIDS, choices=list(GRIDS), help="quantization grids (asym: bytes are bitmask, pack-quantized is symmetric only)")
    parser.add_argument("--json", help="also write the rows as JSON here (after each group)")
    parser.add_argument("--plot", help="write the bits-per-weight vs ppl plot here (PNG)")
    parser.add_argument("--no-run", action="store_true", help="only print the table and draw the plot from --json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_here(json.loads(args.child))))
        return
    if args.no_run:
        rows = json.loads(Path(args.json).read_text())
        table(rows, args.windows)
        if args.plot:
            plot(rows, Path(args.plot))
        return
    groups = args.only or list(GROUPS)
    rows: list[dict] = json.loads(Path(args.json).read_text()) if args.json and Path(args.json).is_file() else []
    for group in groups:  # a new row replaces the earlier row of the same group, grid and way; the others are kept
        new = run_isolated(__file__, {"group": group, "windows": args.windows, "kinds": args.kinds, "grids": args.grids})
        keys = {(r["group"], r["quant"], r["via"]) for r in new}
        rows = [r for r in rows if (r["group"], r["quant"], r["via"]) not in keys] + new
        rows.sort(key=lambda r: list(GROUPS).index(r["group"]))  # stable: each group's rows stay in run order
        print(f"done {group}", file=sys.stderr, flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    table(rows, args.windows)
    if args.plot:
        plot(rows, Path(args.plot))


if __name__ == "__main__":
    main()
