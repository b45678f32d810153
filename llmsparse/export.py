"""Saving a pruned model: a loadable Hugging Face directory plus what is needed to repeat the run.

The directory is written to a temporary sibling and renamed into place, so a failure leaves
nothing half-written. The weight format is a pluggable writer (``WRITERS``); ``dense`` stores
ordinary safetensors with the pruned weights as exact zeros.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .recipe import dump_recipe
from .report import PruneReport

METADATA_FILE = "llmsparse.json"
REPORT_FILE = "sparsity_report.json"
RECIPE_FILE = "recipe.yaml"


class OutputDirError(ValueError):
    """The output directory cannot be used (not empty, or a file)."""


def _write_dense(model, directory: Path) -> None:
    model.save_pretrained(directory, safe_serialization=True)


WRITERS: dict[str, Callable[[Any, Path], None]] = {"dense": _write_dense}


def check_output_dir(path: str | Path, overwrite: bool = False) -> Path:
    """Refuse an output path that is a file, or a non-empty directory unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"output {str(path)!r} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise OutputDirError(f"output directory {str(path)!r} is not empty (pass overwrite=True / --overwrite)")
    return path


def versions() -> dict[str, str]:
    import torch
    import transformers

    from . import __version__

    return {"llmsparse": __version__, "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}


def save_pruned(
    model,
    tokenizer,
    output_dir: str | Path,
    report: PruneReport | None = None,
    recipe: dict[str, Any] | None = None,
    base_model: str | None = None,
    format: str = "dense",
    overwrite: bool = False,
) -> Path:
    """Write model, tokenizer, ``recipe.yaml``, ``sparsity_report.json`` and ``llmsparse.json`` to ``output_dir``."""
    if format not in WRITERS:
        raise OutputDirError(f"unknown format {format!r}; available: {', '.join(WRITERS)}")
    out = check_output_dir(output_dir, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        WRITERS[format](model, tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        metadata: dict[str, Any] = {"format": format, "base_model": base_model, "versions": versions()}
        if recipe is not None:
            metadata["recipe"] = recipe
            (tmp / RECIPE_FILE).write_text(dump_recipe(recipe))
        if report is not None:
            metadata["report"] = report.to_dict()
            report.save_json(tmp / REPORT_FILE)
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
