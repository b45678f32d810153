"""``llmsparse prune``: one-shot, layer-by-layer pruning (flags from :class:`~llmsparse.pruning.PruneSettings`)."""

from __future__ import annotations

import argparse

from ..calibration import check_calib
from ..methods import METHODS
from ..pruning import PruneSettings, calibration_needs, check_request, prune
from ..recipe import load_recipe
from . import flags, tail

HELP = "one-shot, layer-by-layer pruning"
DESCRIPTION = "Prune the decoder Linear layers of a causal LM."


def add(parser: argparse.ArgumentParser) -> None:
    seen: set[str] = set()
    flags.add_model_flags(parser, seen)
    parser.add_argument("--recipe", help="YAML recipe with prune() arguments; flags given on the command line override it")
    flags.add_settings(parser, PruneSettings, seen, "pruning")
    flags.add_settings(parser, tail.OutputSettings, seen, "output")
    flags.add_settings(parser, tail.PplCheck, seen, "perplexity before and after")
    flags.add_option_flags(parser, METHODS, "method options (defaults follow the papers)")


def run(args: argparse.Namespace) -> int:
    settings = flags.settings_from(PruneSettings, args, load_recipe(args.recipe, "prune") if args.recipe else None, METHODS)
    # everything that can be checked before the (slow) model load
    method, _, pattern = check_request(settings)
    needs = calibration_needs(method, settings)
    if needs:
        check_calib(settings.calib, needs)
    tail.check_output(args, pattern)
    model, tokenizer = flags.load(args)
    return tail.finish(args, model, tokenizer, lambda: prune(model, tokenizer, **vars(settings)), settings, "report")
