"""Training-free activation sparsity (TEAL, WINA, CHESS): calibrate, apply at inference, save, decode faster.

::

    report = llmsparse.sparsify_activations(model, tok, method="teal", sparsity=0.5, calib="wiki.valid.tokens")
    llmsparse.activation.enable_sparse_decode(model)   # batch-1 CPU decoding skips zeroed weight rows

Methods live in :mod:`llmsparse.activation.methods`, one module each, registered by name.

Imports the root, :mod:`llmsparse.core`, :mod:`llmsparse.data` and :mod:`llmsparse.runtime` (for its decode
kernel); it sits beside :mod:`llmsparse.pruning` and does not import it.
"""

from __future__ import annotations

from . import methods  # noqa: F401  (registers the methods)
from .base import ACTIVATION_METHODS, ActivationMethod, get_activation_method, register
from .calibrate import ALLOCATIONS, SparsifySettings, check_request, sparsify_activations
from .hooks import PREFILL, Site, attach, detach, disable_sparse_decode, enable_sparse_decode, set_prefill, settings_of, sites_of
from .report import ActivationReport, measure_activation_sparsity
from .sites import Block, find_blocks

__all__ = [
    "ACTIVATION_METHODS",
    "ALLOCATIONS",
    "PREFILL",
    "ActivationMethod",
    "ActivationReport",
    "Block",
    "Site",
    "SparsifySettings",
    "attach",
    "check_request",
    "detach",
    "disable_sparse_decode",
    "enable_sparse_decode",
    "find_blocks",
    "get_activation_method",
    "measure_activation_sparsity",
    "register",
    "set_prefill",
    "settings_of",
    "sites_of",
    "sparsify_activations",
]
