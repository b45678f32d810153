"""Prune Gemma 3 270M with each method and compare perplexity with the dense model (the notebook workflow).

    python examples/prune_and_compare.py [--methods wanda sparsegpt] [--pattern 2:4]

Uses ../shared/data (WikiText-2) when present, else calibrates on text the model generates itself.
"""

import argparse
from pathlib import Path

import llmsparse

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext2"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", nargs="+", default=["magnitude", "wanda", "sparsegpt"])
    parser.add_argument("--pattern", default=None, help="e.g. 2:4 (default: 50%% unstructured)")
    parser.add_argument("--save", help="directory to save the last pruned model in")
    args = parser.parse_args()

    model, tok = llmsparse.load_model("gemma-3-270m")
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    calib = str(DATA / "wiki.valid.tokens") if DATA.is_dir() else "self"
    text = str(DATA / "wiki.test.raw")
    print("dense:", llmsparse.perplexity(model, tok, text, seqlen=1024, windows=8))
    for method in args.methods:
        model.load_state_dict(dense)
        report = llmsparse.prune(
            model, tok, method=method, sparsity=None if args.pattern else 0.5, pattern=args.pattern,
            calib=calib, nsamples=32, seqlen=512,
        )
        print(f"{method}: sparsity {report.global_sparsity:.3f} in {report.seconds['prune']:.0f} s,",
              llmsparse.perplexity(model, tok, text, seqlen=1024, windows=8))
    if args.save:
        llmsparse.save_pruned(model, tok, args.save, report=report, base_model="gemma-3-270m")


if __name__ == "__main__":
    main()
