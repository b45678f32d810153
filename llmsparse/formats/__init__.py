"""Compact sparse checkpoint formats: one registered class per file (:mod:`.base` is the contract),
written and read by :mod:`.shards`. Every module of this package is imported here, so a new format is one new file.

Imports the root and :mod:`llmsparse.core` only.
"""

from __future__ import annotations

from ..registry import import_submodules
from .base import FORMATS, Format, get_format, register
from .shards import (
    GUARD,
    INDEX,
    QUANT_METHOD,
    STEM,
    checkpoint_format,
    compress_checkpoint,
    read_state,
    shard_files,
    sparsity_config,
    weights_file,
)

import_submodules(__name__, __path__)

__all__ = [
    "FORMATS", "GUARD", "INDEX", "QUANT_METHOD", "STEM", "Format", "compress_checkpoint", "get_format", "read_state", "register",
    "shard_files", "checkpoint_format", "sparsity_config", "weights_file",
]
