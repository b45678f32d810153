"""Pruning methods, one module each, registered by name: the CLI, YAML recipes and the Python API look them up here.

Every module of this package is imported on first use of the package, so a new method is one
new file (see :mod:`llmsparse.methods.base` for the contract).

Imports the root and :mod:`llmsparse.core` only (the pruning pipeline above calls the methods, never the reverse).
"""

from __future__ import annotations

from ..registry import import_submodules
from .base import METHODS, Method, PruneResult, get_method, register

import_submodules(__name__, __path__)

__all__ = ["METHODS", "Method", "PruneResult", "get_method", "register"]
