"""GPU out-of-memory during pruning as one line that names the layer and what to change.

torch's ``OutOfMemoryError`` is a multi-line allocator report that names neither the layer nor a
remedy. :func:`layer_oom` turns it into a :class:`GpuMemoryError` (an ``LlmsparseError``, so the
CLI prints one line and exits 2; nothing is written, because saving happens only after pruning
finished). :func:`llmsparse.pruning.layerwise.prune_layers` wraps its walk in it, naming the layer it was at.

The remedies are in the order that frees most: fewer or shorter calibration sequences (the
activations and forward batch scale with ``nsamples x seqlen``), the activations in host memory
(``host_flag``, the setting that does it, when the engine has one), then the CPU.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from ..errors import MemoryLimitError


class GpuMemoryError(MemoryLimitError):
    """The GPU ran out of memory while pruning a layer (the message names the layer and the settings to change)."""


def _requested(error: BaseException) -> str:
    found = re.search(r"Tried to allocate ([\d.]+ [KMGT]?i?B)", str(error))
    return f" allocating {found.group(1)}" if found else ""


def oom_message(where: str, nsamples: int, seqlen: int, host_flag: str | None = None, error: BaseException | None = None) -> str:
    """The one-line explanation of an out-of-memory error in ``where`` (e.g. ``layer 7``)."""
    host = f", keep the calibration activations in host memory ({host_flag})" if host_flag else ""
    return (
        f"GPU out of memory in {where}{_requested(error) if error else ''}: use a smaller --nsamples (now {nsamples}) "
        f"or --seqlen (now {seqlen}){host}, or --device cpu"
    )


@contextmanager
def layer_oom(where: str | Callable[[], str], nsamples: int, seqlen: int, host_flag: str | None = None) -> Iterator[None]:
    """Re-raise a ``torch.OutOfMemoryError`` inside the block as :class:`GpuMemoryError`, after releasing cached GPU memory.

    ``where`` may be a callable, asked when the error happens (the layer a walk was at)."""
    try:
        yield
    except torch.OutOfMemoryError as error:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the caller may retry with other settings in the same process
        raise GpuMemoryError(oom_message(where() if callable(where) else where, nsamples, seqlen, host_flag, error)) from None
