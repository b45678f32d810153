"""``llmsparse prune``: one-shot, layer-by-layer pruning (flags from :class:`~llmsparse.pruning.PruneSettings`)."""

from __future__ import annotations

import argparse

from ..calibration import check_calib
from ..methods import METHODS
from ..pruning import PruneSettings, calibration_needs, check_request, prune
from ..recipe import load_recipe
from . import flags, preflight, tail

HELP = "one-shot, layer-by-layer pruning"
DESCRIPTION = "Prune the decoder Linear layers of a causal LM."


def add(parser: argparse.ArgumentParser) -> None:
    seen: set[str] = {"runtime", "load_in"}  # no --runtime or --load-in: pruning edits dense weights
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
        check_calib(settings.calib, needs, settings.text_field)
    directory = preflight.model_dir(args.model, bool(args.trust_remote_code))
    if directory is not None:
        preflight.check_shapes(directory, settings, pattern, bool(needs), bool(args.trust_remote_code))
    with tail.claimed_output(args, settings, pattern) as out:
        model, tokenizer = flags.load(args)
        return tail.finish(args, out, model, tokenizer, lambda: prune(model, tokenizer, **vars(settings)), settings, "report")
