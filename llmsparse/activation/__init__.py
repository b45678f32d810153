"""Training-free activation sparsity (TEAL, WINA, CHESS): calibrate, apply at inference, save, decode faster.

::

    report = llmsparse.sparsify_activations(model, tok, method="teal", sparsity=0.5, calib="wiki.valid.tokens")
    llmsparse.activation.enable_sparse_decode(model)   # batch-1 CPU decoding skips zeroed weight rows
"""

from __future__ import annotations

from .base import ActivationMethod
from .calibrate import ALLOCATIONS, check_request, measure_activation_sparsity, sparsify_activations
from .chess import CHESS
from .report import ActivationReport
from .runtime import PREFILL, Site, attach, detach, disable_sparse_decode, enable_sparse_decode, set_prefill, settings_of, sites_of
from .sites import Block, find_blocks
from .teal import TEAL
from .wina import WINA

ACTIVATION_METHODS: dict[str, type[ActivationMethod]] = {cls.name: cls for cls in (TEAL, WINA, CHESS)}


def get_activation_method(name: str, **options) -> ActivationMethod:
    """An activation sparsifier by name, configured with ``options``."""
    if name not in ACTIVATION_METHODS:
        raise ValueError(f"unknown activation sparsity method {name!r}; choose one of {', '.join(sorted(ACTIVATION_METHODS))}")
    return ACTIVATION_METHODS[name](**options)


__all__ = [
    "ACTIVATION_METHODS",
    "ALLOCATIONS",
    "PREFILL",
    "ActivationMethod",
    "ActivationReport",
    "Block",
    "Site",
    "attach",
    "check_request",
    "detach",
    "disable_sparse_decode",
    "enable_sparse_decode",
    "find_blocks",
    "get_activation_method",
    "measure_activation_sparsity",
    "set_prefill",
    "settings_of",
    "sites_of",
    "sparsify_activations",
]
