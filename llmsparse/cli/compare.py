"""``llmsparse compare``: dense vs sparse, several models on the same tasks, one table."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..checkpoint.card import update_card
from ..checkpoint.load import LoadSettings, check_source
from ..checkpoint.outdir import check_results_dir
from ..checkpoint.save import METADATA_FILE
from ..data.text import check_eval_source
from ..errors import EvaluationError
from ..evaluation.compare import EvalSettings, comma_list, compare
from . import flags, preflight

HELP = "dense vs sparse: several models on the same tasks, one table"
DESCRIPTION = "Evaluate several models on the same tasks and perplexity; the first is the baseline. Saves comparison.json and comparison.md."


def add(parser: argparse.ArgumentParser) -> None:
    seen: set[str] = set()
    parser.add_argument("models", nargs="+", metavar="MODEL", help="baseline first, then the models to compare with it")
    parser.add_argument("--labels", type=comma_list, help="comma-separated row labels, one per model (default: the paths)")
    flags.add_settings(parser, LoadSettings, seen, "model loading")
    flags.add_settings(parser, flags.Compute, seen)
    flags.add_settings(parser, EvalSettings, seen, "evaluation (perplexity and/or lm-eval tasks)")
    parser.add_argument("--output", help="directory for comparison.json and comparison.md")
    parser.add_argument("--update-card", action="store_true", help="put the table into the model card (README.md) of every compared llmsparse directory")


def check_before_loading(models: list[str], settings: EvalSettings, output: str | None, trust_remote_code: bool = False) -> None:
    """The settings, the models' directories, the perplexity text and the results directory, checked before any model loads."""
    settings.check()
    for source in models:
        check_source(source)
        directory = preflight.model_dir(source, trust_remote_code)
        if directory is not None and settings.ppl:
            preflight.check_length(directory, settings.ppl_seqlen, trust_remote_code, "perplexity seqlen", EvaluationError)
    if settings.ppl:
        check_eval_source(settings.ppl)
    if output:
        check_results_dir(output)


def run_compare(models: list[str], labels: list[str] | None, settings: EvalSettings, args: argparse.Namespace) -> int:
    check_before_loading(models, settings, args.output, bool(args.trust_remote_code))
    load = LoadSettings(**flags.given(LoadSettings, args))
    result = compare(models, settings, labels, load.dtype, args.device, load.trust_remote_code, load.runtime, load.load_in)
    print(result.markdown())
    if args.output:
        for path in result.save(args.output):
            print(f"wrote {path}")
    if getattr(args, "update_card", False):
        for source in models:
            if (Path(source) / METADATA_FILE).is_file():
                print(f"updated {update_card(source, result.markdown())}")
    return 0


def run(args: argparse.Namespace) -> int:
    return run_compare(args.models, args.labels, flags.settings_from(EvalSettings, args), args)
