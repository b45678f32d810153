"""Quantized matrices in the runtime: integer codes and group scales, sparse or dense, computed from without a dense float matrix.

A :class:`~llmsparse.formats.base.QuantLayout` (a ``--quantize int4|int8 --format bitmask``
checkpoint's codes + mask + scales, or a ``pack-quantized`` one's dense codes + scales) is read by
the C++ kernels in ``csrc/quant_linear.cpp``: up to ``DECODE_TOKENS`` tokens dequantize in
registers (``y = Σ_g scale_g Σ_{c∈g} (q_c - zp_g) x_c``, fp32 accumulation); longer inputs
dequantize a block of rows at a time into a buffer that stays in cache, in the scales' dtype, and
run the dense GEMM there. :func:`dense` is the whole matrix (``SparseLinear.weight``, autograd,
other devices), made with the kernel or, without a compiler, with torch ops.
"""

from __future__ import annotations

import torch

from ..formats.base import QuantLayout, unpack_bits
from ..formats.packquant import unpack_int32
from . import sparse_kernel as kernel

_NONE = torch.empty(0, dtype=torch.int64)
_NO_ZERO = torch.empty(0, dtype=torch.int8)


def _args(layout: QuantLayout) -> tuple:
    mask = layout.bitmask if layout.bitmask is not None else torch.empty(0, dtype=torch.uint8)
    offsets = layout.row_offsets if layout.row_offsets is not None else _NONE
    zero = layout.zero_point if layout.zero_point is not None else _NO_ZERO
    return layout.codes, layout.bits, mask, offsets, layout.scale, zero


def matmul(layout: QuantLayout, x: torch.Tensor, bias: torch.Tensor | None, decode: bool, block: int) -> torch.Tensor:
    """``x Wᵀ + b`` on CPU with the C++ kernels: in registers when ``decode``, else ``block`` rows at a time dequantized + GEMM."""
    ext, isa = kernel.load(), kernel.ISAS.index(kernel.cpu_isa())
    codes, bits, mask, offsets, scale, zero = _args(layout)
    if decode:
        return ext.qrows_matmul(x, codes, bits, mask, offsets, layout.cols, scale, zero, bias, isa)
    return ext.qblocked_matmul(x, codes, bits, mask, offsets, layout.cols, scale, zero, bias, block, isa)


def dense(layout: QuantLayout, out: torch.Tensor | None = None) -> torch.Tensor:
    """The dense ``[rows, cols]`` matrix, ``(q - zp)·scale`` rounded to the scales' dtype (into ``out``'s storage if given)."""
    flat = out if out is not None else torch.empty(layout.rows * layout.cols, dtype=layout.dtype, device=layout.scale.device)
    result = flat.view(layout.rows, layout.cols)
    if layout.scale.device.type == "cpu" and kernel.available():
        codes, bits, mask, offsets, scale, zero = _args(layout)
        kernel.load().qdecompress(codes, bits, mask, offsets, scale, zero, result, kernel.ISAS.index(kernel.cpu_isa()))
        return result
    result.copy_(torch_dense(layout))
    return result


def torch_dense(layout: QuantLayout) -> torch.Tensor:
    """:func:`dense` with torch ops only (any device, no compiler; the reference the kernels are tested against)."""
    rows, cols, bits = layout.rows, layout.cols, layout.bits
    words = layout.codes.view(torch.int32)
    group = torch.arange(cols, device=words.device) // (cols // layout.scale.shape[1])
    scale = layout.scale.float()[:, group]
    zero = layout.zero_point.float()[:, group] if layout.zero_point is not None else torch.zeros_like(scale)
    if layout.bitmask is None:
        q = unpack_int32(words.view(rows, -1).cpu(), bits, cols).to(words.device).float()
        return ((q - zero) * scale).to(layout.dtype)
    keep = unpack_bits(layout.bitmask.cpu(), cols).to(words.device)
    q = torch.zeros(rows, cols, device=words.device)
    q[keep] = unpack_int32(words.view(1, -1).cpu(), bits, int(keep.sum()))[0].to(words.device).float()
    return torch.where(keep, (q - zero) * scale, torch.zeros_like(q)).to(layout.dtype)
