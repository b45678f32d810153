"""Process memory: the peak resident set of a run, which tensors read from a mapped file, and the guard before loading a model that will not fit.

A model loaded whole needs at least its weights' bytes in memory (the safetensors files hold
exactly those bytes at the stored dtype; a ``--dtype`` cast scales them by the element size).
The guard compares that with the memory the kernel says is available (``MemAvailable``) and
refuses a run that cannot fit, pointing at ``--stream``, which holds one decoder layer at a time.
"""

from __future__ import annotations

import bisect
import ctypes
import os
import resource
import sys
from pathlib import Path

import torch

from ..errors import MemoryLimitError
from .tensorfile import TORCH, nbytes, read_header


def _proc_bytes(path: str, key: str) -> int | None:
    """The ``key`` line of a /proc file (a count of KiB) in bytes, or None where there is no such file or line."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss() -> int:
    """The peak resident memory of this process so far, in bytes.

    Linux: ``VmHWM``, the high-water mark of this program's own address space (``ru_maxrss`` also
    keeps the mark of the process that forked it, from before ``exec``); elsewhere ``ru_maxrss``.
    """
    hwm = _proc_bytes("/proc/self/status", "VmHWM:")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


#: glibc's ``mallopt`` parameter for the size from which blocks are mapped (and unmapped when freed) on their own.
M_MMAP_THRESHOLD = -3


def return_freed_blocks(threshold: int = 1 << 20) -> bool:
    """Make glibc's malloc give every freed block of ``threshold`` bytes or more back to the kernel at once.

    By default glibc raises this threshold (up to 32 MiB) each time a large block is freed, so the
    next tensors below it come from the heap, whose freed space stays resident and fragments: the
    peak of a streamed run grew with every decoder layer. A fixed threshold keeps a layer-at-a-time
    run flat, at the cost of a page fault per fresh page. Process-wide; False where
    there is no glibc.
    """
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


class FileMappings:
    """Address ranges of the files this process has memory-mapped (Linux ``/proc/self/maps``; none elsewhere).

    safetensors loads tensors as zero-copy views of the mapped checkpoint; a view keeps the whole
    mapping, and with it every page of the file that was ever read, in the resident set.
    """

    def __init__(self) -> None:
        ranges = []
        try:
            for line in Path("/proc/self/maps").read_text().splitlines():
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[4] != "0" and fields[5].startswith("/"):
                    lo, hi = fields[0].split("-")
                    ranges.append((int(lo, 16), int(hi, 16)))
        except OSError:
            pass
        ranges.sort()
        self._starts = [lo for lo, _ in ranges]
        self._ends = [hi for _, hi in ranges]

    def holds(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor``'s memory lies in a mapped file."""
        if tensor.device.type != "cpu" or tensor.numel() == 0:
            return False
        address = tensor.untyped_storage().data_ptr()
        i = bisect.bisect_right(self._starts, address) - 1
        return i >= 0 and address < self._ends[i]


def available_memory() -> int | None:
    """Bytes the kernel can give a new allocation without swapping (``MemAvailable``), or None where unknown."""
    available = _proc_bytes("/proc/meminfo", "MemAvailable:")
    if available is not None:
        return available
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def weight_bytes(shards: list[Path], dtype: torch.dtype | None = None) -> int:
    """Bytes of the tensors in safetensors ``shards`` (read from their headers), floating ones as ``dtype`` when given."""
    total = 0
    for shard in shards:
        for entry in read_header(shard)[0].values():
            size = nbytes(entry)
            if dtype is not None and TORCH[entry["dtype"]].is_floating_point:
                size = size // TORCH[entry["dtype"]].itemsize * dtype.itemsize
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
