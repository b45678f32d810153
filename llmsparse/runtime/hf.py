"""The standard entry point: with llmsparse imported, ``AutoModelForCausalLM.from_pretrained(DIR)`` of a compact checkpoint runs sparse.

:func:`register` adds llmsparse to transformers' quantizer registry under ``quant_method:
"llmsparse"`` (:mod:`.hf_quantizer`). Importing that registry takes about 2 s, so ``import llmsparse``
does not: :func:`install` registers at once if transformers' registry is already loaded, and
otherwise the moment it is (every model load imports it before reading a config).
:func:`load_compact` is how :func:`llmsparse.load_model` itself loads a compact checkpoint sparse.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import logging
import sys
from pathlib import Path

import torch
from torch import nn

from .. import formats
from ..errors import CheckpointError
from .convert import summary

log = logging.getLogger(__name__)

REGISTRY = "transformers.quantizers.auto"


def register() -> None:
    """Register llmsparse's config and quantizer with transformers (once: :mod:`.hf_quantizer` registers them when first imported).

    When that module is imported first, its own import of transformers' registry runs this hook
    while the module is half-built; it then registers itself at the end of its import.
    """
    importlib.import_module(f"{__package__}.hf_quantizer")


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Runs :func:`register` right after transformers' quantizer registry module executes, then steps aside."""

    def find_spec(self, name, path=None, target=None):
        if name != REGISTRY:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            try:
                register()
            except Exception as err:  # noqa: BLE001 - never break the user's transformers import; stock loads then stop at the guard
                log.warning("could not register llmsparse with transformers (%s): load compact checkpoints with llmsparse.load_model", err)

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    """Register now if transformers' quantizer registry is loaded, else as soon as it is."""
    if REGISTRY in sys.modules:
        register()
    elif not any(isinstance(finder, _RegisterAfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())


def load_compact(directory: Path, config, block: dict, dtype: torch.dtype | None, trust_remote_code: bool) -> nn.Module:
    """A compact checkpoint as a sparse-runtime model, through transformers with llmsparse's quantizer (never dense)."""
    from transformers import AutoModelForCausalLM

    register()
    config.quantization_config = {
        "quant_method": formats.QUANT_METHOD,
        "weights": formats.weights_file(directory),
        "sparsity_config": block,
    }
    model, info = AutoModelForCausalLM.from_pretrained(
        str(directory),
        config=config,
        dtype=dtype or "auto",
        trust_remote_code=trust_remote_code,
        use_safetensors=True,
        output_loading_info=True,
    )
    if info.get("missing_keys"):
        raise CheckpointError(
            f"{directory}: partial checkpoint, {len(info['missing_keys'])} tensors missing (first: {sorted(info['missing_keys'])[0]})"
        )
    if info.get("unexpected_keys"):
        raise CheckpointError(f"{directory}: unexpected tensor {sorted(info['unexpected_keys'])[0]!r} for {type(model).__name__}")
    log.info("sparse runtime: %s", summary(model))
    return model
