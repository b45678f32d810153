"""Structured pruning methods, one module each; every module here registers itself in :data:`~llmsparse.structured.STRUCTURED` on import."""

from __future__ import annotations

from ...registry import import_submodules

import_submodules(__name__, __path__)
