"""Structured pruning: whole FFN neurons, attention modules and decoder blocks removed, for a smaller dense model.

One module per method in :mod:`.methods`, registered in :data:`STRUCTURED` (``2ssp``, ``shortgpt``, ``width``);
:func:`prune_structured` runs one, :mod:`.surgery` edits the model, and
:func:`llmsparse.checkpoint.structured.save_structured` (a layer up) writes a checkpoint that stock
transformers loads as the same function. Imports the root, :mod:`llmsparse.core` and :mod:`llmsparse.data`;
it sits beside :mod:`llmsparse.pruning`.
"""

from __future__ import annotations

from . import methods  # noqa: F401  (registers the methods)
from .api import StructuredSettings, prune_structured
from .base import STRUCTURED, StructuredMethod, StructuredReport

__all__ = ["STRUCTURED", "StructuredMethod", "StructuredReport", "StructuredSettings", "prune_structured"]
