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
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from .. import formats
from ..activation.io import save_activation_state
from ..core import bnb
from ..core.cpu import machine
from ..core.layout import target_weights
from ..errors import SettingsError
from ..pruning.report import PruneReport
from ..version import __version__
from .card import model_card
from .outdir import METADATA_FILE, claim, publish, staging
from .recipe import dump_recipe

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
    with claim(output_dir, overwrite, inputs) as out, staging(out) as tmp:
        write_output(tmp, model, tokenizer, fmt, targets, report, recipe, base_model, activation, comparison, recipe_kind, recovery=recovery)
        publish(tmp, out, overwrite, inputs)
    return Path(output_dir)


def write_output(
    tmp: Path, model, tokenizer, fmt: formats.Format, targets, report, recipe, base_model, activation=None, comparison=None, recipe_kind="prune", weights_saved=False,
    recovery=None,
) -> None:
    """Every file of a saved model, into the staging directory ``tmp`` (``weights_saved``: the safetensors are there already)."""
    if weights_saved:  # a streamed run wrote them layer by layer (llmsparse.checkpoint.stream)
        model.config.save_pretrained(tmp)
        if model.can_generate() and model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
    else:
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
    (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")  # last: marks a complete llmsparse output
