"""Process memory: the peak resident set of a run, and the guard before loading a model that will not fit.

A model loaded whole needs at least its weights' bytes in memory (the safetensors files hold
exactly those bytes at the stored dtype; a ``--dtype`` cast scales them by the element size).
The guard compares that with the memory the kernel says is available (``MemAvailable``) and
refuses a run that cannot fit, pointing at ``--stream``, which holds one decoder layer at a time.
"""

from __future__ import annotations

import json
import os
import resource
import struct
import sys
from pathlib import Path

import torch

from .errors import MemoryLimitError

#: Bytes per element of each safetensors dtype.
ELEMENT_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def peak_rss() -> int:
    """The peak resident memory of this process so far, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def available_memory() -> int | None:
    """Bytes the kernel can give a new allocation without swapping (``MemAvailable``), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def weight_bytes(shards: list[Path], dtype: torch.dtype | None = None) -> int:
    """Bytes of the tensors in safetensors ``shards`` (read from their headers), as ``dtype`` when given."""
    total = 0
    for shard in shards:
        with open(shard, "rb") as f:
            header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
        for key, entry in header.items():
            if key == "__metadata__":
                continue
            start, end = entry["data_offsets"]
            size = end - start
            if dtype is not None and entry["dtype"] in ELEMENT_BYTES and entry["dtype"] not in ("I64", "I32", "I16", "I8", "U8", "BOOL"):
                size = size // ELEMENT_BYTES[entry["dtype"]] * dtype.itemsize
            total += size
    return total


def check_fits(shards: list[Path], dtype: torch.dtype | None = None, available: int | None = None) -> None:
    """Refuse to load a model whose weights alone exceed the available memory (suggesting ``--stream``)."""
    need = weight_bytes(shards, dtype)
    free = available_memory() if available is None else available
    if free is not None and need > free:
        raise MemoryLimitError(
            f"the model's weights take {need / 2**30:.2f} GiB but only {free / 2**30:.2f} GiB of memory is available: "
            "prune it with --stream --output DIR (one decoder layer in memory at a time)"
        )
