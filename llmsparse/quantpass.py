"""The quantization pass after a mask: GPTQ that keeps the mask, or round to nearest, on every pruned matrix.

A :class:`~llmsparse.layerwise.Pass`: it runs after the method (and after weight reconstruction)
on each matrix, so the mask is fixed; pruned weights stay exactly zero and receive no update
(:func:`llmsparse.quantize.gptq` with ``keep``), kept weights end on the grid. SparseGPT
quantizes inside its own column loop instead (the paper's joint mode, see
:func:`llmsparse.methods.sparsegpt.sparsegpt_prune`), unless a reconstruction pass runs between.
The grid parameters travel in :attr:`PruneResult.quant` so exports can store codes and scales.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .masks import Pattern
from .methods.base import PruneResult
from .methods.sparsegpt import prepare_hessian, reconstruction_error
from .quantize import Grid, gptq, rtn
from .stats import Hessian


@dataclass
class Quantization:
    """Quantize the kept weights of every matrix: ``method`` ``gptq`` (mask-keeping GPTQ) or ``rtn``."""

    grid: Grid
    method: str = "gptq"
    blocksize: int = 128
    percdamp: float = 0.01
    storage_dtype: torch.dtype = torch.float32
    name: str = field(default="quantize", init=False)
    needs_dense: bool = field(default=False, init=False)

    @property
    def needs_calibration(self) -> bool:
        return self.method != "rtn"

    def new_stats(self, columns: int, device, method_stats):
        if self.method == "rtn":
            return None
        return method_stats if type(method_stats) is Hessian else Hessian(columns, device)

    def apply(self, name: str, dense: torch.Tensor, result: PruneResult, stats: Hessian | None, pattern: Pattern) -> PruneResult:
        self.grid.check(name, result.weight.shape[1])
        keep = result.weight != 0
        notes = dict(result.notes)
        if result.error is not None:
            notes["err_before_quantize"] = round(result.error, 6)
        if self.method == "rtn":  # no Hessian here: the error after rounding is not measured
            weight, state = rtn(result.weight, self.grid, self.storage_dtype)
            return PruneResult(weight, error=None, notes=notes, quant=state)
        key = ("prepare_hessian", self.percdamp)  # matrices sharing an input (and SparseGPT) share the factorisation
        if getattr(stats, "prepared", (None,))[0] != key:
            stats.prepared = (key, prepare_hessian(stats.H, self.percdamp))
        _, U, _ = stats.prepared[1]  # a dead input (H_jj = 0) is rounded without moving anything else
        weight, state = gptq(result.weight, U, self.grid, keep, self.blocksize, self.storage_dtype)
        return PruneResult(weight.float(), error=reconstruction_error(dense, weight.float(), stats.H), notes=notes, quant=state)
