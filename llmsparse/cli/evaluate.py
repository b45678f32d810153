"""``llmsparse eval``: perplexity and lm-eval tasks of one model, or against a baseline (flags from :class:`~llmsparse.EvalSettings`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..activation import measure_activation_sparsity, settings_of
from ..core.layout import resolve_device
from ..evaluation.compare import EvalSettings, evaluate_model
from ..evaluation.harness import check_tasks, task_manager
from . import compare, flags

HELP = "perplexity and lm-eval tasks of a model (optionally against a baseline)"
DESCRIPTION = "Evaluate a model as llmsparse runs it (pruned weights, activation sparsity): perplexity with the papers' protocol and/or lm-eval tasks."


def add(parser: argparse.ArgumentParser) -> None:
    seen: set[str] = set()
    flags.add_model_flags(parser, seen)
    flags.add_settings(parser, EvalSettings, seen, "evaluation (perplexity and/or lm-eval tasks)", aliases={"ppl_seqlen": ["--seqlen"], "ppl_windows": ["--windows"]})
    parser.add_argument("--compare", metavar="BASE", help="also evaluate BASE (e.g. the dense model) and print one table with relative recovery")
    parser.add_argument("--output", help="directory for the results (evaluation.json, or comparison.json/.md with --compare)")


def run(args: argparse.Namespace) -> int:
    settings = flags.settings_from(EvalSettings, args)
    settings.check()
    if args.compare:
        return compare.run_compare([args.compare, args.model], None, settings, args)
    compare.check_before_loading([args.model], settings, args.output, bool(args.trust_remote_code))
    if settings.tasks:
        check_tasks(settings.tasks, task_manager(settings.include_path or None, settings.tasks))
    model, tokenizer = flags.load(args)
    model.to(resolve_device(args.device))
    row = evaluate_model(model, tokenizer, args.model, settings)
    if row.ppl:
        print(row.ppl)
    if row.tasks:
        print(row.tasks.table())
    if settings_of(model) is not None and settings.ppl:
        m = measure_activation_sparsity(model, tokenizer, settings.ppl, settings.ppl_seqlen, min(settings.ppl_windows or 4, 4))
        print(f"activation sparsity ({settings_of(model)['method']}): {m['overall']:.2%} of block weights skipped per token ({m['tokens']} tokens)")
    if args.output:
        Path(args.output).mkdir(parents=True, exist_ok=True)
        (Path(args.output) / "evaluation.json").write_text(json.dumps(row.to_dict(), indent=2) + "\n")
    return 0
