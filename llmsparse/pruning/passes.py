"""Passes after the mask: steps that refine each pruned matrix without changing which weights are zero.

:mod:`llmsparse.pruning.layerwise` runs the method on a matrix, then every pass in order:

* :class:`Reconstruction` re-solves the kept weights by least squares (ADMM or PCG, the math in
  :mod:`llmsparse.core.solvers`), toward the dense layer's outputs on the pruned model's inputs
  (``target='pruned'``) or on the dense model's inputs (``'dense'``: it then needs the engine's dense stream).
* :class:`Quantization` puts the kept weights on an int4/int8 grid: GPTQ that keeps the mask
  (:func:`llmsparse.core.quantgrid.gptq` with ``keep``: pruned weights stay exactly zero and receive
  no update) or round to nearest. SparseGPT quantizes inside its own column loop instead (the paper's
  joint mode, :func:`llmsparse.methods.sparsegpt.sparsegpt_prune`) unless a reconstruction runs
  between. The grid parameters travel in :attr:`PruneResult.quant` so exports can store codes and scales.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from .. import gpu
from ..core.hessian import prepare_hessian, reconstruction_error
from ..core.masks import Pattern
from ..core.quantgrid import Grid, gptq, rtn
from ..core.solvers import DEFAULT_ITERS, problem, solve
from ..core.stats import CrossHessian, Hessian
from ..methods.base import PruneResult


class Pass(Protocol):
    """A step after the method on one matrix; it must keep every pruned weight exactly zero."""

    name: str
    needs_dense: bool  # its statistics pair the pruned stream's inputs with the dense model's
    needs_calibration: bool  # False: it works from the weights alone (then ``stats`` is None)

    def new_stats(self, columns: int, device, method_stats: Any) -> Any: ...

    def apply(self, name: str, dense: torch.Tensor, result: PruneResult, stats: Any, pattern: Pattern) -> PruneResult: ...


TARGETS = ("pruned", "dense")


@dataclass
class Reconstruction:
    """The pass after a mask method that re-solves the kept weights (see the module docstring)."""

    solver: str
    target: str = "pruned"
    iters: int | None = None
    damp: float = 0.01
    name = "reconstruct"
    needs_calibration = True

    @property
    def needs_dense(self) -> bool:
        return self.target == "dense"

    def new_stats(self, columns: int, device, method_stats):
        if self.needs_dense:
            return CrossHessian(columns, device)
        return method_stats if type(method_stats) is Hessian else Hessian(columns, device)

    def apply(self, name: str, dense: torch.Tensor, result: PruneResult, stats: Hessian, pattern) -> PruneResult:
        keep = result.weight != 0
        G = stats.G if self.needs_dense else None
        iters = self.iters if self.iters is not None else DEFAULT_ITERS[self.solver]
        weight = solve(problem(dense, keep, stats.H, G, self.damp), result.weight, self.solver, iters)
        before = result.error if result.error is not None else reconstruction_error(dense, result.weight, stats.H)
        notes = dict(result.notes, err_before_reconstruct=round(before, 6))
        return PruneResult(weight, error=reconstruction_error(dense, weight, stats.H), notes=notes)


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
        fused = gpu.gptq(result.weight, U, self.grid, keep, self.blocksize, self.storage_dtype)  # Triton on CUDA, else None
        weight, state = fused or gptq(result.weight, U, self.grid, keep, self.blocksize, self.storage_dtype)
        return PruneResult(weight.float(), error=reconstruction_error(dense, weight.float(), stats.H), notes=notes, quant=state)
