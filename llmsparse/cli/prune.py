"""``llmsparse prune``: one-shot, layer-by-layer pruning (flags from :class:`~llmsparse.checkpoint.jobs.PruneJob`)."""

from __future__ import annotations

import argparse

from ..checkpoint.jobs import PruneJob
from ..checkpoint.layerstore import checkpoint_dir
from ..checkpoint.recipe import load_recipe
from ..checkpoint.stream import prune_checkpoint
from ..core.cpu import parse_dtype
from ..core.memory import check_fits
from ..data.calibration import check_calib
from ..errors import SettingsError
from ..formats import shard_files
from ..methods import METHODS
from ..pruning.api import calibration_needs, check_request, prune
from ..recovery.api import RecoverSettings, recover
from ..recovery.api import check_request as check_recovery
from ..structured import STRUCTURED
from . import finish as tail
from . import flags, preflight
from . import structured as structured_cli

HELP = "one-shot, layer-by-layer pruning"
DESCRIPTION = "Prune the decoder Linear layers of a causal LM."


def add(parser: argparse.ArgumentParser) -> None:
    seen: set[str] = {"runtime", "load_in"}  # no --runtime or --load-in: pruning edits dense weights
    flags.add_model_flags(parser, seen)
    parser.add_argument("--recipe", help="YAML recipe with prune() arguments; flags given on the command line override it")
    flags.add_settings(parser, PruneJob, seen, "pruning", more_choices={"method": STRUCTURED})
    flags.add_settings(parser, tail.OutputSettings, seen, "output")
    flags.add_settings(parser, tail.PplCheck, seen, "perplexity before and after")
    flags.add_option_flags(parser, METHODS, "method options (defaults follow the papers)")
    structured_cli.accept_structured(parser)  # --method 2ssp|shortgpt|width: llmsparse.cli.structured


def run(args: argparse.Namespace) -> int:
    if structured_cli.wanted(args):
        return structured_cli.run(args)
    settings = flags.settings_from(PruneJob, args, load_recipe(args.recipe, "prune") if args.recipe else None, METHODS)
    # everything that can be checked before the (slow) model load
    method, _, pattern = check_request(settings)
    parse_dtype(settings.compute_dtype)  # --compute-dtype int8: refused now, not after the load
    needs = calibration_needs(method, settings)
    if needs:
        check_calib(settings.calib, needs, settings.text_field)
    if settings.stream or settings.resume:
        return _stream(args, settings, pattern, bool(needs))
    recovery = _recovery(settings, args)
    directory = preflight.model_dir(args.model, bool(args.trust_remote_code))
    if directory is not None:
        preflight.check_shapes(directory, settings, pattern, bool(needs), bool(args.trust_remote_code))
        check_fits(shard_files(directory), parse_dtype(args.dtype))
    with tail.claimed_output(args, settings, pattern, recovery) as out:
        model, tokenizer = flags.load(args)
        structured_cli.leave_removed_attention(settings, model)
        then = (lambda: recover(model, tokenizer, **vars(recovery)), recovery) if recovery else None
        return tail.finish(args, out, model, tokenizer, lambda: prune(model, tokenizer, **vars(settings.pruning())), settings, "report", then=then)


def _recovery(settings: PruneJob, args: argparse.Namespace) -> RecoverSettings | None:
    """``--recover RECIPE``: the recovery step's settings, checked before the model loads (never the evaluation text)."""
    if settings.recover is None:
        return None
    recovery = RecoverSettings(**load_recipe(settings.recover, "recover"))
    check_recovery(recovery, args.eval_ppl)
    return recovery


def _stream(args: argparse.Namespace, settings: PruneJob, pattern, calibrated: bool) -> int:
    """``--stream``: the checkpoint is pruned one decoder layer at a time straight into ``--output``."""
    if not settings.stream:
        raise SettingsError("--resume continues an interrupted --stream run: give --stream as well")
    if not args.output:
        raise SettingsError("--stream writes each finished layer to the output at once: give --output DIR")
    if args.eval_ppl:
        raise SettingsError("--eval-ppl needs the whole model in memory; with --stream, evaluate the saved output (llmsparse eval DIR)")
    if settings.recover:
        raise SettingsError("--recover trains the whole model in memory; with --stream, run llmsparse recover on the saved output")
    directory = preflight.model_dir(str(checkpoint_dir(args.model)), bool(args.trust_remote_code))
    preflight.check_shapes(directory, settings, pattern, calibrated, bool(args.trust_remote_code))
    with tail.claimed_output(args, settings, pattern) as out:
        report = prune_checkpoint(args.model, out.output, format=out.format, overwrite=out.overwrite, dtype=args.dtype, **vars(settings.streaming()))
        print(report.table() if args.verbose else report.summary())
        tail.saved_summary(out, report, out.output)
    return 0
