"""Saving a pruned model: a loadable Hugging Face directory plus what is needed to repeat the run.

The directory is claimed, staged and published by :mod:`llmsparse.checkpoint.outdir`: never over the run's
inputs or the working directory, one writer at a time, written to a staging sibling and renamed
into place, so a failure (or a killed process) leaves nothing half-written. The registered
formats (:mod:`llmsparse.formats`) decide how the pruned matrices are stored: ``dense`` as
ordinary safetensors with exact zeros; ``bitmask`` and ``N:M`` (e.g. ``2:4``) compactly, in a
layout :func:`llmsparse.load_model` reads back.
"""

from __future__ import annotations

import json
import logging
import platform
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .. import formats
from ..activation.io import save_activation_state
from ..core import bnb
from ..core.checks import nonfinite
from ..core.cpu import machine
from ..core.layout import target_weights
from ..errors import OutputDirError, SettingsError
from ..pruning.report import PruneReport
from ..version import __version__
from .card import model_card
from .outdir import claim, publish, staging
from .ownership import METADATA_FILE, follow_umask, output_files
from .recipe import dump_recipe

log = logging.getLogger(__name__)

REPORT_FILE = "sparsity_report.json"
ACTIVATION_REPORT_FILE = "activation_report.json"
RECOVERY_REPORT_FILE = "recovery_report.json"
RECIPE_FILE = "recipe.yaml"
CARD_FILE = "README.md"


def compressible_weights(model, fmt: formats.Format, report: PruneReport | None = None) -> list[str]:
    """State-dict keys of the matrices to store compactly: the pruned ones (from ``report``), else every decoder matrix."""
    modules = target_weights(model)
    names = [m.name for m in report.matrices] if report is not None else list(modules)
    for name in names:
        fmt.check_module(name, modules[name])
    fmt.prepare(model, names)
    return [f"{n}.weight" for n in names]


def check_bnb_format(fmt: formats.Format, load_in: str | None) -> None:
    """A model quantized by bitsandbytes (``load_in``) is saved with its quantized weights, so only as ``dense``."""
    if load_in and fmt.compact:
        raise SettingsError(f"the model is quantized by bitsandbytes ({load_in}) and is saved as it is: --format {fmt.label} needs float weights; use --format dense")


def nonfinite_tensors(model) -> list[str]:
    """``"name: 2 NaN and 0 inf values"`` for every non-finite tensor of ``model``, each logged as a warning.

    Pruning refuses non-finite weights in the decoder layers and non-finite calibration statistics (those
    change masks); a NaN elsewhere (an embedding row calibration never reads, the head) cannot change a
    mask and is the input model's own, so it is saved as it came, but never silently: the warning and
    ``llmsparse.json``'s ``warnings`` name it.
    """
    found = []
    for name, tensor in model.state_dict().items():
        bad = nonfinite(tensor)
        if bad:
            found.append(f"{name}: {bad}")
            log.warning("the model saved has %s in %s (the input model had them; no mask reads them)", bad, name)
    return found


def versions() -> dict[str, str]:
    """The versions that decide a saved run's numbers (``llmsparse.json``; ``llmsparse env`` prints more)."""
    import transformers


    return {
        "llmsparse": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def save_pruned(
    model,
    tokenizer,
    output_dir: str | Path,
    report: PruneReport | None = None,
    recipe: dict[str, Any] | None = None,
    base_model: str | None = None,
    format: str = "dense",
    overwrite: bool = False,
    activation=None,
    comparison=None,
    recipe_kind: str = "prune",
    inputs: Iterable[str | Path | None] = (),
    recovery=None,
) -> Path:
    """Write model, tokenizer, ``recipe.yaml``, ``sparsity_report.json``, ``llmsparse.json`` and a model card (``README.md``).

    ``llmsparse.json`` also records the versions and the machine (CPU features, threads, GPUs) the run used.

    ``format`` is ``dense``, ``bitmask`` or an N:M pattern such as ``2:4``; with a compact format the
    byte counts of the pruned matrices before and after land in ``report.storage``. Activation
    sparsity attached to ``model`` is saved with it (``activation_sparsity.safetensors``); pass its
    :class:`~llmsparse.activation.ActivationReport` as ``activation`` for the card and ``activation_report.json``,
    and a :class:`~llmsparse.evaluation.Comparison` as ``comparison`` for the card's dense-vs-sparse table.
    ``recipe`` holds the arguments of ``prune()`` or, with ``recipe_kind='sparsify'``, of ``sparsify_activations()``
    (``'recover'``: of ``recover()``, whose :class:`~llmsparse.recovery.RecoverReport` goes in ``recovery``).

    ``overwrite`` replaces only a previous llmsparse output (or an empty directory). The output may
    not hold the model's own source directory or any of ``inputs`` (calibration text, recipe...).
    """
    fmt = formats.get_format(format)
    check_bnb_format(fmt, bnb.quantized_in(model.config))
    targets = compressible_weights(model, fmt, report) if fmt.compact else []
    inputs = [*inputs, getattr(model, "name_or_path", None) or None]
    with claim(output_dir, overwrite, inputs) as out, staging(out) as tmp, write_errors(out):
        write_output(tmp, model, tokenizer, fmt, targets, report, recipe, base_model, activation, comparison, recipe_kind, recovery=recovery)
        publish(tmp, out, overwrite, inputs)
    return Path(output_dir)


@contextmanager
def write_errors(out: Path) -> Iterator[None]:
    """A failed write (a full disk: ``OSError`` or safetensors' ``SafetensorError``) as one :class:`OutputDirError` line naming ``out``;
    the staging directory around it is removed as for any failure."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, SafetensorError) as err:
        detail = " ".join(str(getattr(err, "strerror", None) or err).split())
        raise OutputDirError(f"cannot write output {str(out)!r}: {detail} (is the disk full?); nothing was saved") from err


def write_output(
    tmp: Path, model, tokenizer, fmt: formats.Format, targets, report, recipe, base_model, activation=None, comparison=None, recipe_kind="prune", weights_saved=False,
    recovery=None,
) -> None:
    """Every file of a saved model, into the staging directory ``tmp`` (``weights_saved``: the safetensors are there already)."""
    warnings: list[str] = []
    if weights_saved:  # a streamed run wrote them layer by layer (llmsparse.checkpoint.stream)
        model.config.save_pretrained(tmp)
        if model.can_generate() and model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
    else:
        warnings = nonfinite_tensors(model)
        model.save_pretrained(tmp, safe_serialization=True)
    save_activation_state(model, tmp)
    if fmt.compact:
        config = formats.compress_checkpoint(tmp, fmt, targets)
        storage = {"format": fmt.label, "bytes_dense": config["bytes_dense"], "bytes_compressed": config["bytes_compressed"]}
        if report is not None:
            report.storage = storage
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    metadata: dict[str, Any] = {"format": fmt.label, "base_model": base_model, "versions": versions(), "machine": machine().to_dict()}
    if warnings:
        metadata["warnings"] = [f"non-finite values in {w}" for w in warnings]
    if recipe is not None:
        metadata["recipe"] = recipe
        metadata["recipe_kind"] = recipe_kind
        (tmp / RECIPE_FILE).write_text(dump_recipe(recipe, recipe_kind))
    if report is not None:
        metadata["report"] = report.to_dict()
        report.save_json(tmp / REPORT_FILE)
    if activation is not None:
        metadata["activation"] = activation.to_dict()
        activation.save_json(tmp / ACTIVATION_REPORT_FILE)
    if comparison is not None:
        comparison.save(tmp)
    if recovery is not None:  # llmsparse recover (llmsparse.recovery)
        metadata["recovery"] = recovery.to_dict()
        recovery.save_json(tmp / RECOVERY_REPORT_FILE)
    table = comparison.markdown() if comparison is not None else None
    card = model_card(report, recipe, base_model, fmt, activation, table, recipe_kind, bnb.quantized_in(model.config))
    (tmp / CARD_FILE).write_text(card + (recovery.card_section() if recovery is not None else ""), encoding="utf-8")
    metadata["files"] = [*output_files(tmp), METADATA_FILE]  # what --overwrite may replace later (outdir.foreign_entry)
    (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")  # last: marks a complete llmsparse output
    follow_umask(tmp)
