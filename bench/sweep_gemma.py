"""Sweep: sparsity 50-80% x {magnitude, wanda, sparsegpt} x {uniform, OWL} x {without, with DSnoT} on Gemma 3 270M,
and (``--extra``) RIA, ALPS and fixed-mask ADMM reconstruction after Wanda and SparseGPT at 50/60/70% and 2:4.

Protocol in ``bench/_gemma.py`` (32 x 512 calibration tokens, ppl at seqlen 1024 over 8 windows).
"+DSnoT" means ``method="dsnot", init=<method>``: the method's scores give the initial per-row
mask, then DSnoT refines it (no SparseGPT weight update). OWL uses m=5, lambda=0.08. Results are
appended to ``--json`` after every run, so an interrupted sweep resumes where it stopped.

    python bench/sweep_gemma.py                                   # table + docs/sweep_gemma.png
    python bench/sweep_gemma.py --sparsity 0.7 --methods wanda    # a slice
    python bench/sweep_gemma.py --extra                           # + the second table (ria, alps, +ADMM)
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _gemma import machine_header, run_here, run_isolated  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"
METHODS = ["magnitude", "wanda", "sparsegpt"]
VARIANTS = [("uniform", False), ("owl", False), ("uniform", True), ("owl", True)]
LABELS = {("uniform", False): "plain", ("owl", False): "+OWL", ("uniform", True): "+DSnoT", ("owl", True): "+OWL+DSnoT"}
#: ``--extra``: the methods of the reconstruction issue, in the order they run (most informative first).
EXTRA_TARGETS = {"50%": {"sparsity": 0.5}, "2:4": {"pattern": "2:4"}, "70%": {"sparsity": 0.7}, "60%": {"sparsity": 0.6}}
EXTRA = {
    "wanda": {"method": "wanda"}, "sparsegpt": {"method": "sparsegpt"},
    "wanda+ADMM": {"method": "wanda", "reconstruct": "admm"}, "sparsegpt+ADMM": {"method": "sparsegpt", "reconstruct": "admm"},
    "ria": {"method": "ria"}, "alps": {"method": "alps"},
}
EXTRA_STYLE = {"wanda+ADMM": ("tab:blue", "P"), "sparsegpt+ADMM": ("tab:red", "P"), "ria": ("tab:green", "o"), "alps": ("tab:purple", "o")}


def extra_key(target: str, name: str) -> str:
    return f"extra|{target}|{name}"


def extra_result(results: dict, target: str, name: str) -> dict | None:
    """An ``--extra`` cell; plain Wanda/SparseGPT at 50-70% come from the main sweep."""
    sparsity = EXTRA_TARGETS[target].get("sparsity")
    if name in METHODS and sparsity is not None:
        return results.get(key(sparsity, name, "uniform", False))
    return results.get(extra_key(target, name))


def extra_table(results: dict, field: str, fmt: str) -> str:
    head = f"| target | {' | '.join(f'{n:>14}' for n in EXTRA)} |"
    lines = [head, "|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|"]
    for target in sorted(EXTRA_TARGETS, key=lambda t: (t == "2:4", t)):
        cells = [extra_result(results, target, n) for n in EXTRA]
        lines.append(f"| {target:<6} | {' | '.join(f'{format(r[field], fmt) if r else chr(45):>14}' for r in cells)} |")
    return "\n".join(lines)


def key(sparsity: float, method: str, budget: str, dsnot: bool) -> str:
    return f"{method}|{sparsity:g}|{budget}|{'dsnot' if dsnot else '-'}"


def spec_for(sparsity: float, method: str, budget: str, dsnot: bool, args: argparse.Namespace) -> dict:
    prune = {"method": "dsnot" if dsnot else method, "sparsity": sparsity, "layer_budget": budget}
    if dsnot:
        prune["method_options"] = {"init": method}
    return {"prune": prune, "compute_dtype": args.compute_dtype, "windows": args.windows, "seed": args.seed}


def table(results: dict, sparsities: list[float], methods: list[str], field: str, fmt: str) -> str:
    head = f"| sparsity | method    | {' | '.join(f'{LABELS[v]:>10}' for v in VARIANTS)} |"
    lines = [head, "|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|"]
    for s, m in itertools.product(sparsities, methods):
        cells = []
        for budget, dsnot in VARIANTS:
            r = results.get(key(s, m, budget, dsnot))
            cells.append(f"{format(r[field], fmt):>10}" if r else f"{'-':>10}")
        lines.append(f"| {s:>7.0%}  | {m:<9} | {' | '.join(cells)} |")
    return "\n".join(lines)


def plot(results: dict, dense: float | None, methods: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    colors = dict(zip(METHODS, ["tab:gray", "tab:blue", "tab:red"]))
    styles = {("uniform", False): ("-", "o"), ("owl", False): ("--", "s"), ("uniform", True): (":", "^"), ("owl", True): ("-.", "D")}
    for m in methods:
        for variant in VARIANTS:
            points = sorted((r["sparsity"], r["ppl"]) for r in results.values() if (r.get("method"), r.get("budget"), r.get("dsnot")) == (m, *variant))
            if points:
                line, marker = styles[variant]
                ax.plot(*zip(*points), line, marker=marker, color=colors[m], label=f"{m} {LABELS[variant]}")
    for name, (color, marker) in EXTRA_STYLE.items():
        points = sorted((EXTRA_TARGETS[t]["sparsity"], r["ppl"]) for t in EXTRA_TARGETS if "sparsity" in EXTRA_TARGETS[t] and (r := results.get(extra_key(t, name))))
        if points:
            ax.plot(*zip(*points), "-", marker=marker, color=color, linewidth=2, label=name)
    if dense:
        ax.axhline(dense, color="black", linewidth=0.8, label=f"dense ({dense:.1f})")
    ax.set_yscale("log")
    ax.set_xlabel("sparsity of the decoder Linear layers")
    ax.set_ylabel("WikiText-2 perplexity (seqlen 1024, 8 windows, log scale)")
    ax.set_title("Gemma 3 270M: one-shot pruning, 32x512 calibration tokens")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.7, 0.5, 0.6, 0.8])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    parser.add_argument("--compute-dtype", default="float32", help="dtype of the calibration forwards (float32: the core protocol, the same on every machine)")
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=DOCS / "sweep_gemma.json", help="results file, read to resume and rewritten after every run")
    parser.add_argument("--png", type=Path, default=DOCS / "sweep_gemma.png")
    parser.add_argument("--extra", action="store_true", help="also run the second table: ria, alps and +ADMM (resumable like the rest)")
    parser.add_argument("--no-run", action="store_true", help="only print the table and draw the plot from --json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_here(json.loads(args.child))))
        return
    results = json.loads(args.json.read_text()) if args.json.is_file() else {}
    if "dense" not in results:
        results["dense"] = run_isolated(__file__, {"windows": args.windows})
    for s, m, (budget, dsnot) in itertools.product(args.sparsity, args.methods, VARIANTS):
        k = key(s, m, budget, dsnot)
        if k in results or args.no_run:
            continue
        results[k] = {"sparsity": s, "method": m, "budget": budget, "dsnot": dsnot, **run_isolated(__file__, spec_for(s, m, budget, dsnot, args))}
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"done {k}: ppl {results[k]['ppl']:.2f} in {results[k]['seconds']:.1f} s", file=sys.stderr, flush=True)
    for target, name in itertools.product(EXTRA_TARGETS, EXTRA) if args.extra and not args.no_run else ():
        k = extra_key(target, name)
        if k in results or extra_result(results, target, name):
            continue
        prune = EXTRA[name] | EXTRA_TARGETS[target]
        results[k] = {"target": target, "name": name, **run_isolated(__file__, {"prune": prune, "compute_dtype": args.compute_dtype, "windows": args.windows, "seed": args.seed})}
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"done {k}: ppl {results[k]['ppl']:.2f} in {results[k]['seconds']:.1f} s", file=sys.stderr, flush=True)
    sparsities = sorted({r["sparsity"] for k, r in results.items() if k != "dense" and "sparsity" in r})
    methods = [m for m in METHODS if any(k.startswith(m + "|") for k in results)]
    print(machine_header())
    print(f"Gemma 3 270M, calib 32x512 wiki.valid.tokens (seed {args.seed}), compute dtype {args.compute_dtype}, "
          f"ppl wiki.test.raw seqlen 1024 x {args.windows} windows; dense ppl {results['dense']['ppl']:.2f}\n")
    print("Perplexity\n\n" + table(results, sparsities, methods, "ppl", ".2f"))
    print("\nPruning time (s)\n\n" + table(results, sparsities, methods, "seconds", ".1f"))
    if any(k.startswith("extra|") for k in results):
        print("\nRIA, ALPS and fixed-mask ADMM reconstruction (--extra): perplexity\n\n" + extra_table(results, "ppl", ".2f"))
        print("\nPruning time (s)\n\n" + extra_table(results, "seconds", ".1f"))
    plot(results, results["dense"]["ppl"], methods, args.png)
    print(f"\nplot: {args.png}")


if __name__ == "__main__":
    main()
