"""Weight quantization that keeps a sparsity mask: the integer grid, round-to-nearest, and GPTQ with a fixed mask.

The grid is compressed-tensors' (and GPTQ's ``quant.py``): per output row and per group of
``group_size`` consecutive inputs (``-1``: one group per row), signed codes
``q = clamp(round(w/scale) + zp, -2^(b-1), 2^(b-1)-1)`` and values ``(q - zp)·scale``. The range of
every group includes 0 and the zero point is an integer on the grid, so an exact zero quantizes to
the code ``zp`` and dequantizes to exactly 0: pruned weights stay pruned. Symmetric: ``zp = 0``,
``scale = absmax / ((2^b - 1)/2)`` (absmax/7.5 for int4, as GPTQ's symmetric mode); asymmetric:
``scale = (max(x,0) - min(x,0)) / (2^b - 1)``, ``zp = round(-min(x,0)/scale) - 2^(b-1)``. Scales are
rounded to the weight's storage dtype before use, so the values in memory are exactly what a
reader computes from the stored codes and scales.

:func:`gptq` is GPTQ's column loop (Frantar et al. 2022) with an optional ``keep`` mask: both the
in-block and the lazy update are multiplied by the mask (llm-compressor's behaviour before 2026-06),
so a pruned weight never moves and quantizes to 0. Group parameters are fitted on the working copy
when a group starts (not on the original weights, which would miss the updates of earlier columns).
SparseGPT's joint prune+quantize mode uses the same :class:`ColumnQuantizer` inside its own loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import SettingsError, UnknownNameError

#: ``quantize`` setting -> bits.
BITS = {"int4": 4, "int8": 8}
QUANTIZE_METHODS = ("gptq", "rtn")


@dataclass(frozen=True)
class Grid:
    """An integer grid: ``bits`` per weight, ``group_size`` inputs per scale (``-1``: per output channel), symmetric or not."""

    bits: int
    group_size: int = 128
    symmetric: bool = True

    def __post_init__(self) -> None:
        if self.bits not in BITS.values():
            raise UnknownNameError(f"unknown quantization bit width {self.bits}; available: {', '.join(map(str, sorted(BITS.values())))}")
        if self.group_size != -1 and self.group_size < 1:
            raise SettingsError(f"group_size must be -1 (per output channel) or a positive number of inputs, got {self.group_size}")

    @classmethod
    def named(cls, name: str, group_size: int = 128, symmetric: bool = True) -> Grid:
        """The grid of a ``quantize`` setting (``int4``/``int8``)."""
        if name not in BITS:
            raise UnknownNameError(f"unknown quantization {name!r}; available: {', '.join(BITS)}")
        return cls(BITS[name], group_size, symmetric)

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1))

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1

    def width(self, columns: int) -> int:
        """Inputs per group for a matrix with ``columns`` inputs."""
        return columns if self.group_size == -1 else self.group_size

    def check(self, name: str, columns: int) -> None:
        """Refuse a matrix whose width the group size does not divide (before any weight changes)."""
        if self.group_size != -1 and columns % self.group_size:
            raise SettingsError(f"{name}: group_size {self.group_size} does not divide its {columns} inputs (use a divisor or -1 for per-channel)")

    def describe(self) -> str:
        group = "per-channel" if self.group_size == -1 else f"g{self.group_size}"
        return f"int{self.bits} {group} {'symmetric' if self.symmetric else 'asymmetric'}"


#: The module attribute that holds a quantized matrix's :class:`QuantState` (set by the layerwise engine; not saved by ``state_dict``).
STATE_ATTR = "llmsparse_quant"


def state_of(module: torch.nn.Module) -> QuantState | None:
    """The :class:`QuantState` of a quantized matrix module, or None."""
    return getattr(module, STATE_ATTR, None)


@dataclass
class QuantState:
    """One quantized matrix: ``scale`` float32 ``[rows, groups]`` (values of the storage dtype) and integer ``zero_point`` ``[rows, groups]``."""

    grid: Grid
    scale: torch.Tensor
    zero_point: torch.Tensor

    def codes(self, weight: torch.Tensor) -> torch.Tensor:
        """The int8 codes of the stored ``weight``: its values on this grid rounded to its dtype (checked)."""
        q = quantize_codes(weight.to(self.scale.dtype), self.scale, self.zero_point, self.grid)
        if not torch.equal(dequantize(q, self.scale, self.zero_point, self.grid).to(weight.dtype), weight):
            raise SettingsError("the weight is not on its recorded quantization grid (was it changed after quantization?)")
        return q.to(torch.int8)


def fit(x: torch.Tensor, grid: Grid, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, zero_point)`` per row for the columns ``x`` ``[rows, g]`` of one group; scale rounded to ``dtype``."""
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    low = x.min(1).values.clamp(max=0)
    high = x.max(1).values.clamp(min=0)
    levels = (1 << grid.bits) - 1
    if grid.symmetric:
        scale = torch.maximum(-low, high) / (levels / 2)
    else:
        scale = (high - low) / levels
    scale = torch.where(scale > 0, scale, torch.ones_like(scale)).to(dtype).to(x.dtype)
    scale = torch.where(scale > 0, scale, torch.full_like(scale, torch.finfo(dtype).tiny))  # underflow of tiny scales in the storage dtype
    if grid.symmetric:
        zero = torch.zeros_like(scale)
    else:
        zero = (torch.round(-low / scale) + grid.qmin).clamp(grid.qmin, grid.qmax)
    return scale, zero


def _expand(t: torch.Tensor, columns: int) -> torch.Tensor:
    return t.repeat_interleave(columns // t.shape[1], dim=1)


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Integer codes (float tensor) of ``w`` ``[rows, cols]`` with per-group ``scale``/``zero`` ``[rows, groups]``."""
    s, z = _expand(scale, w.shape[1]), _expand(zero.to(scale.dtype), w.shape[1])
    return torch.clamp(torch.round(w / s) + z, grid.qmin, grid.qmax)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, grid: Grid) -> torch.Tensor:
    """``(q - zp)·scale`` in the scale's dtype (exact: small integers times a scale of the storage dtype)."""
    return (q.to(scale.dtype) - _expand(zero.to(scale.dtype), q.shape[1])) * _expand(scale, q.shape[1])


def rtn(weight: torch.Tensor, grid: Grid, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, QuantState]:
    """Round to nearest: every group fitted on ``weight`` and rounded; returns ``(dequantized float32, state)``."""
    grid.check("weight", weight.shape[1])
    W = weight.to(torch.promote_types(weight.dtype, torch.float32))
    g = grid.width(W.shape[1])
    params = [fit(W[:, c : c + g], grid, dtype) for c in range(0, W.shape[1], g)]
    scale = torch.stack([p[0] for p in params], 1)
    zero = torch.stack([p[1] for p in params], 1)
    return dequantize(quantize_codes(W, scale, zero, grid), scale, zero, grid), QuantState(grid, scale, zero)


class ColumnQuantizer:
    """Quantizes one column at a time for a column loop (GPTQ, joint SparseGPT), refitting each group where it starts."""

    def __init__(self, grid: Grid, rows: int, columns: int, device, dtype: torch.dtype = torch.float32, compute: torch.dtype = torch.float32):
        grid.check("weight", columns)
        self.grid, self.g, self.dtype = grid, grid.width(columns), dtype
        groups = columns // self.g
        self.scale = torch.ones(rows, groups, device=device, dtype=compute)
        self.zero = torch.zeros(rows, groups, device=device, dtype=compute)

    def column(self, W: torch.Tensor, c: int, pruned: torch.Tensor | None = None) -> torch.Tensor:
        """The quantized column ``c`` of the working copy ``W`` (refit on ``W[:, c:c+g]`` at a group start, ``pruned`` entries as 0)."""
        k = c // self.g
        if c % self.g == 0:
            group = W[:, c : c + self.g]
            if pruned is not None:
                group = group.masked_fill(pruned, 0)
            self.scale[:, k], self.zero[:, k] = fit(group, self.grid, self.dtype)
        s, z = self.scale[:, k], self.zero[:, k]
        q = torch.clamp(torch.round(W[:, c] / s) + z, self.grid.qmin, self.grid.qmax)
        return (q - z) * s

    def state(self) -> QuantState:
        return QuantState(self.grid, self.scale.cpu(), self.zero.cpu())


#: Columns per sub-block in the column loops (GPTQ, SparseGPT): rank-1 updates stay inside one, a matrix product carries its errors on.
SUB = 16


def sub_block(columns: int, blocksize: int, group: int, m: int = 1) -> int:
    """Sub-block width: ``SUB`` rounded to a multiple of ``m``; the whole block when quantization groups would start inside a sub-block."""
    sub = max(m, SUB // m * m)
    return blocksize if group < columns and group % sub else sub


def gptq(
    weight: torch.Tensor, U: torch.Tensor, grid: Grid, keep: torch.Tensor | None = None, blocksize: int = 128, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, QuantState]:
    """GPTQ of ``weight`` ``[out, in]`` given ``U``, the upper Cholesky factor of the damped ``H^-1``.

    Per column ``err = (w - Q(w)) / U_ii``, ``W[:, i:] -= err ⊗ U[i, i:]`` inside a block and the
    lazy ``W[:, end:] -= Err @ U[block, end:]`` after it; with ``keep`` both updates are masked, so
    entries outside it stay exactly zero. Computes in float64 for a float64 ``weight``, else float32.
    Returns ``(dequantized weight, state)``; ``dtype`` is the storage dtype the scales are rounded to.
    The loop runs on the transposed working copy (contiguous columns) with the in-block updates
    split into sub-blocks (:func:`sub_block`), as SparseGPT's: the same updates in another order.
    """
    WT = weight.detach().t().contiguous().to(torch.promote_types(weight.dtype, torch.float32))
    U = U.to(WT.dtype)
    MT = None if keep is None else keep.t().to(WT.dtype)
    if MT is not None:
        WT.mul_(MT)
    columns, rows = WT.shape
    quantizer = ColumnQuantizer(grid, rows, columns, WT.device, dtype, WT.dtype)
    sub = sub_block(columns, blocksize, group=quantizer.g)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        W1, U1 = WT[i1:i2], U[i1:i2, i1:i2]
        Q1, Err1 = torch.empty_like(W1), torch.empty_like(W1)
        for s in range(0, i2 - i1, sub):
            e = min(s + sub, i2 - i1)
            for i in range(s, e):
                Q1[i] = quantizer.column(WT.t(), i1 + i)
                err = torch.sub(W1[i], Q1[i], out=Err1[i]).div_(U1[i, i])
                update = torch.outer(U1[i, i:e], err)
                W1[i:e].sub_(update.mul_(MT[i1 + i : i1 + e]) if MT is not None else update)
            if e < i2 - i1:
                carried = U1[s:e, e:].t() @ Err1[s:e]
                W1[e:].sub_(carried.mul_(MT[i1 + e : i2]) if MT is not None else carried)
        W1.copy_(Q1)
        lazy = U[i1:i2, i2:].t() @ Err1
        WT[i2:].sub_(lazy.mul_(MT[i2:]) if MT is not None else lazy)
    return WT.t().contiguous(), quantizer.state()
