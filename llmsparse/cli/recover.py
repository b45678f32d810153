"""``llmsparse recover``: retraining after pruning that keeps the mask (PERP; flags from :class:`~llmsparse.recovery.RecoverSettings`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..checkpoint.recipe import load_recipe
from ..checkpoint.resume import partial_dir
from ..errors import SettingsError
from ..recovery import RecoverSettings, recover
from ..recovery.api import check_request
from . import finish as tail
from . import flags

HELP = "retrain norms, biases and masked LoRA after pruning (pruned weights stay zero)"
DESCRIPTION = (
    "Parameter-efficient retraining after pruning (PERP): trains the chosen groups on --data (its end held out "
    "for validation and early stopping), merges the masked adapters and saves a normal llmsparse output."
)


def add(parser: argparse.ArgumentParser) -> None:
    seen: set[str] = {"runtime", "load_in"}  # training needs float weights, held dense
    flags.add_model_flags(parser, seen)
    parser.add_argument("--recipe", help="YAML recipe with recover() arguments; flags given on the command line override it")
    flags.add_settings(parser, RecoverSettings, seen, "recovery")
    flags.add_settings(parser, tail.OutputSettings, seen, "output")
    flags.add_settings(parser, tail.PplCheck, seen, "perplexity before and after")


def run(args: argparse.Namespace) -> int:
    settings = flags.settings_from(RecoverSettings, args, load_recipe(args.recipe, "recover") if args.recipe else None)
    if args.output:  # the resumable state lives beside the output, as a streamed prune's does
        settings.state_dir = str(partial_dir(Path(args.output).resolve()))
    elif settings.resume:
        raise SettingsError("--resume continues an interrupted run into its --output: give --output DIR")
    check_request(settings, args.eval_ppl)  # before the (slow) model load
    with tail.claimed_output(args, settings) as out:
        model, tokenizer = flags.load(args)
        work = lambda: recover(model, tokenizer, **vars(settings))  # noqa: E731
        return tail.finish(args, out, model, tokenizer, work, settings, "recovery", recipe_kind="recover")
