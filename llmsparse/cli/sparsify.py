"""``llmsparse sparsify``: training-free activation sparsity (flags from :class:`~llmsparse.activation.SparsifySettings`)."""

from __future__ import annotations

import argparse

from ..activation import ACTIVATION_METHODS, SparsifySettings, check_request, measure_activation_sparsity, sparsify_activations
from ..checkpoint.recipe import load_recipe
from ..core.layout import resolve_device
from ..data.calibration import check_calib
from . import finish as tail
from . import flags, preflight

HELP = "training-free activation sparsity (TEAL, WINA, CHESS)"
DESCRIPTION = "Calibrate activation thresholds and save them with the model."


def add(parser: argparse.ArgumentParser) -> None:
    seen: set[str] = {"runtime"}  # no --runtime: the output stores the weights as loaded (--load-in: quantized by bitsandbytes)
    flags.add_model_flags(parser, seen)
    parser.add_argument("--recipe", help="YAML recipe with sparsify_activations() arguments; flags given on the command line override it")
    flags.add_settings(parser, SparsifySettings, seen, "activation sparsity")
    flags.add_settings(parser, tail.OutputSettings, seen, "output")
    flags.add_settings(parser, tail.PplCheck, seen, "perplexity (dense and sparse) and the skipped-weight fraction")
    flags.add_option_flags(parser, ACTIVATION_METHODS, "method options")


def run(args: argparse.Namespace) -> int:
    settings = flags.settings_from(SparsifySettings, args, load_recipe(args.recipe, "sparsify") if args.recipe else None, ACTIVATION_METHODS)
    # everything that can be checked before the (slow) model load
    method = check_request(settings)
    calibrated = method.needs_calibration(settings.allocation)
    if calibrated:
        check_calib(settings.calib, f"{method.name} with {settings.allocation} allocation", settings.text_field)
    directory = preflight.model_dir(args.model, bool(args.trust_remote_code))
    if directory is not None and calibrated:
        preflight.check_length(directory, settings.seqlen, bool(args.trust_remote_code))
    with tail.claimed_output(args, settings) as out:
        model, tokenizer = flags.load(args)
        model.to(resolve_device(args.device))

        def measure(report, check: tail.PplCheck) -> None:
            report.measured = measure_activation_sparsity(model, tokenizer, check.eval_ppl, check.ppl_seqlen, min(check.ppl_windows or 4, 4))

        work = lambda: sparsify_activations(model, tokenizer, **vars(settings))  # noqa: E731
        return tail.finish(args, out, model, tokenizer, work, settings, "activation", measure, recipe_kind="sparsify")
