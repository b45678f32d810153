"""Calibration activations for the GPU engine: on the device when they fit, else pinned host memory with asynchronous copies.

The CPU engine keeps every layer's inputs as a list of per-sequence CPU tensors and moves each to
the device for its forward and back (the issue's profile: ``.to()`` held 6.1 s of a 20.7 s 7B
layer, forwards ran one sequence at a time). :class:`ActivationStore` holds one stream (a layer's
inputs, or its outputs) as one ``[nsamples, seqlen, hidden]`` tensor:

* on the device when it fits beside what the layer step needs (``reserve`` bytes; see
  :mod:`llmsparse.gpu.plan`): reads are views, writes are in-place copies, nothing crosses PCIe;
* else in pinned host memory: :meth:`read` and :meth:`write` copy with ``non_blocking=True``, so
  a batch's transfer overlaps the previous batch's forward on the same stream (stream order keeps
  the data correct; the host never reads these tensors).

The engine holds two stores and swaps them after each layer (the outputs of layer ``i`` are the
inputs of layer ``i+1``), and runs its forwards over :meth:`batches` of ``batch`` sequences.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def fits(nbytes: int, device: torch.device, reserve: int = 0) -> bool:
    """Whether ``nbytes`` more fit on ``device`` while keeping ``reserve`` bytes free (CPU: always)."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes + reserve <= free


class ActivationStore:
    """One stream of calibration activations ``[nsamples, seqlen, hidden]``, resident on ``device`` or pinned on the host."""

    def __init__(
        self, nsamples: int, seqlen: int, hidden: int, dtype: torch.dtype, device: torch.device, reserve: int = 0, on_device: bool | None = None
    ):
        self.device = torch.device(device)
        nbytes = nsamples * seqlen * hidden * torch.empty((), dtype=dtype).element_size()
        self.on_device = fits(nbytes, self.device, reserve) if on_device is None else on_device
        where = self.device if self.on_device else torch.device("cpu")
        pinned = not self.on_device and self.device.type == "cuda"
        self.data = torch.empty(nsamples, seqlen, hidden, dtype=dtype, device=where, pin_memory=pinned)

    @property
    def nsamples(self) -> int:
        return self.data.shape[0]

    def batches(self, batch: int) -> Iterator[slice]:
        """Consecutive slices of at most ``batch`` sequences covering all of them."""
        for start in range(0, self.nsamples, batch):
            yield slice(start, min(start + batch, self.nsamples))

    def read(self, rows: slice) -> torch.Tensor:
        """Sequences ``rows`` on the compute device (a view when resident there; an asynchronous copy from pinned memory otherwise)."""
        part = self.data[rows]
        return part if self.on_device else part.to(self.device, non_blocking=True)

    def write(self, rows: slice, value: torch.Tensor) -> None:
        """Store sequences ``rows`` (``value`` on the compute device; copied without waiting when the store is on the host)."""
        self.data[rows].copy_(value, non_blocking=not self.on_device)
