"""Activation sparsity on Gemma 3 270M: perplexity and sparsity figures for TEAL (uniform, greedy), WINA and CHESS.

Calibration: 16 x 512 tokens of WikiText-2 valid (seed 0; ``--seeds`` adds other calibration
windows, to see how much a result moves with the calibration sample); perplexity on wiki.test.raw at seqlen 1024
over the first 8 windows, every token sparsified (prefill ``all``); the measured common figure
(parameter-weighted fraction of block-Linear weights skipped per token) on the first 2 of those windows.
TEAL greedy searches once per variant, at the highest sparsity; lower targets replay its recorded
steps, which gives exactly the allocation a search for that target would find. The "TEAL greedy"
rows search with ``greedy_step`` 0.1 on 1 sequence of 512 tokens, to keep the search to minutes on
2 CPU cores; "TEAL greedy (API defaults)" uses the API's defaults (step 0.05 on 4 sequences, about 8x
the time); "TEAL greedy (reference error)" is the same search on the TEAL reference's block error.
Results are appended to ``--json`` after every run, so an interrupted run resumes where
it stopped.

    python bench/activation_gemma.py                 # run what is missing, print the table
    python bench/activation_gemma.py --no-run        # only print the table
    python bench/activation_gemma.py --variants "TEAL greedy (API defaults)" --sparsities 0.5
    python bench/activation_gemma.py --variants "TEAL uniform" --sparsities 0.5 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _gemma import DATA, machine_header  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"
QUICK = {"greedy_step": 0.1, "greedy_samples": 1}
# (label, method, allocation, method options, greedy search settings)
VARIANTS = [
    ("TEAL uniform", "teal", "uniform", {}, {}),
    ("TEAL greedy", "teal", "greedy", {}, {**QUICK, "greedy_error": "relative"}),
    ("TEAL greedy on MSE", "teal", "greedy", {}, {**QUICK, "greedy_error": "mse"}),
    ("TEAL greedy (API defaults)", "teal", "greedy", {}, {"greedy_step": 0.05, "greedy_samples": 4, "greedy_error": "relative"}),
    ("TEAL greedy (reference error)", "teal", "greedy", {}, {"greedy_step": 0.05, "greedy_samples": 4, "greedy_error": "reference"}),
    ("WINA top-k", "wina", "uniform", {}, {}),
    ("CHESS", "chess", "uniform", {}, {}),
]


def key(label: str, sparsity: float, seed: int = 0) -> str:
    return f"{label}|{sparsity:g}" + (f"|seed{seed}" if seed else "")


def table(results: dict, sparsities: list[float], seeds: list[int]) -> str:
    dense = results.get("dense")
    lines = [
        f"Dense: ppl {dense['ppl']:.2f}." if dense else "Dense: not measured.",
        "",
        "| method | target | calibration seed | ppl | paper's figure | measured common figure | calibration s |",
        "|---|---|---|---|---|---|---|",
    ]
    spread = []
    for label, *_ in VARIANTS:
        for s in sparsities:
            found = [(seed, results[key(label, s, seed)]) for seed in seeds if key(label, s, seed) in results]
            for seed, r in found:
                lines.append(
                    f"| {label} | {s:.0%} | {seed} | {r['ppl']:.2f} | {r['paper_sparsity']:.1%} | {r['measured']:.1%} | {r['seconds']:.0f} |"
                )
            if len(found) > 1:
                ppl = [r["ppl"] for _, r in found]
                spread.append(f"| {label} | {s:.0%} | {len(ppl)} | {sum(ppl) / len(ppl):.2f} | {min(ppl):.2f} | {max(ppl):.2f} |")
    if spread:
        lines += ["", "| method | target | seeds | mean ppl | min | max |", "|---|---|---|---|---|---|", *spread]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sparsities", default="0.25,0.4,0.5")
    parser.add_argument("--json", default=str(DOCS / "activation_gemma.json"))
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--variants", help="comma-separated labels to run (default: all)")
    parser.add_argument("--seeds", default="0", help="comma-separated calibration seeds (default 0)")
    parser.add_argument("--no-run", action="store_true")
    args = parser.parse_args()
    sparsities = [float(s) for s in args.sparsities.split(",")]
    seeds = [int(seed) for seed in args.seeds.split(",")]
    path = Path(args.json)
    results = json.loads(path.read_text()) if path.is_file() else {}

    if not args.no_run:
        import llmsparse
        from llmsparse.activation import detach, find_blocks, measure_activation_sparsity
        from llmsparse.activation.greedy import replay

        model, tok = llmsparse.load_model("gemma-3-270m")
        test, valid = str(DATA / "wiki.test.raw"), str(DATA / "wiki.valid.tokens")

        def save():
            path.write_text(json.dumps(results, indent=1) + "\n")

        if "dense" not in results:
            results["dense"] = {"ppl": llmsparse.perplexity(model, tok, test, 1024, args.windows).ppl}
            save()
        weights = find_blocks(model)[0].weights()
        chosen = args.variants.split(",") if args.variants else [v[0] for v in VARIANTS]
        unknown = set(chosen) - {v[0] for v in VARIANTS}
        if unknown:
            parser.error(f"unknown variants {sorted(unknown)}; known: {[v[0] for v in VARIANTS]}")
        for (label, method, allocation, options, greedy), seed in itertools.product(VARIANTS, seeds):
            if label not in chosen:
                continue
            # the greedy search runs at the highest target first; lower ones replay its steps
            for s in sorted(sparsities, reverse=allocation == "greedy"):
                if key(label, s, seed) in results:
                    continue
                if allocation == "greedy" and s < max(sparsities):
                    paths = results[key(label, max(sparsities), seed)]["greedy_paths"]
                    allocation_s = [replay(p, weights, s) for p in paths]
                else:
                    allocation_s = allocation
                start = time.perf_counter()
                report = llmsparse.sparsify_activations(
                    model, tok, method, s, calib=valid, nsamples=16, seqlen=512, seed=seed, allocation=allocation_s,
                    method_options=options, device="cpu", **greedy,
                )
                seconds = time.perf_counter() - start
                ppl = llmsparse.perplexity(model, tok, test, 1024, args.windows).ppl
                measured = measure_activation_sparsity(model, tok, test, 1024, 2)
                results[key(label, s, seed)] = {
                    "ppl": ppl, "paper_sparsity": report.paper_sparsity, "measured": measured["overall"],
                    "by_role": measured["by_role"], "seconds": seconds, "layers": report.layers,
                    "greedy_paths": report.greedy_paths,
                }
                detach(model)
                save()
                print(f"done {label} {s:g} seed {seed}: ppl {ppl:.2f}, measured {measured['overall']:.1%}, {seconds:.0f} s", flush=True)
    print(machine_header())
    print(table(results, sparsities, seeds))


if __name__ == "__main__":
    main()
