"""Fused Triton kernels for the column loops of SparseGPT (unstructured, N:M, joint prune+quantize) and GPTQ.

The CPU loops (:func:`llmsparse.methods.sparsegpt._reference_columns`, ``_columns`` and
:func:`llmsparse.core.quantgrid.gptq`) issue ~6 small torch calls per column; on a GPU that is
~70,000 launches per 7B layer. Here one launch handles a whole block of ``blocksize`` (128)
columns: inside a block the rows of ``W`` are independent (column ``i``'s error only moves the
same row's later columns, through ``U[i, i:]``), so each program owns ``BM`` rows, keeps their
``BM x 128`` slice in registers and walks the 128 columns in order. Per column it reads
``w = W[:, i]``, decides ``q`` (0 where pruned, else ``w`` or its grid value), sets
``err = (w - q) / U_ii`` and applies the rank-1 update ``W[:, i:] -= err ⊗ U[i, i:]`` to the whole
rest of the block, exactly the reference SparseGPT / llm-compressor order (no sub-blocks). What
needs all rows stays outside, in torch: the unstructured mask of a block (one threshold over
``rows x 128`` scores, chosen before the block's loop, as the reference does) and the lazy update
``W[:, end:] -= Err @ U[block, end:]`` (one GEMM per block). Nothing here synchronises with the
host inside the loop; the only sync is one finiteness check per matrix.

N:M masks are chosen in the kernel at every M-th column from the scores ``w^2 / U_jj^2`` of the
already updated weights, ``N`` lowest of each ``M`` (ties: the first columns; ``torch.topk`` leaves
exact ties unspecified). Quantization (grid of :mod:`llmsparse.core.quantgrid`) refits a group's
per-row scale and zero point where the group starts (groups must lie inside a block), with the
weights expected to be pruned counted as 0, and rounds half to even like ``torch.round``. All
divisions are IEEE round-to-nearest (``div_rn``) and multiply-adds are not fused, so scores,
errors and updates round as torch's do.

Imported only on the CUDA path (or with ``TRITON_INTERPRET=1`` for the CPU tests), never by
``import llmsparse``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..core import masks
from ..core.masks import Pattern
from ..core.quantgrid import ColumnQuantizer

#: Rows per program on a GPU: 16 x 128 float32 working values per tile (plus the output and error tiles).
GPU_ROWS = 16
_SCALE_DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


@triton.jit
def _round_half_even(x):
    """``torch.round`` (half to even) for the small magnitudes of quantization codes."""
    f = tl.floor(x)
    diff = x - f
    odd = (f - 2.0 * tl.floor(f * 0.5)) != 0.0
    return tl.where((diff > 0.5) | ((diff == 0.5) & odd), f + 1.0, f)


@triton.jit
def _to_storage(x, SCALE_DTYPE: tl.constexpr):
    """``x.to(dtype).float()`` for the storage dtype of the scales: bfloat16 by round-to-nearest-even on the bits."""
    if SCALE_DTYPE == 1:
        b = x.to(tl.uint32, bitcast=True)
        x = ((b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)
    elif SCALE_DTYPE == 2:
        x = x.to(tl.float16).to(tl.float32)
    return x


@triton.jit
def _lowest_n_of_m(w, d2, BM: tl.constexpr, BLOCK: tl.constexpr, N: tl.constexpr, M: tl.constexpr):
    """True for the ``N`` lowest scores ``w^2 / d^2`` of every ``M`` consecutive columns (ties: the first)."""
    s = tl.reshape(tl.math.div_rn(w * w, d2[None, :]), (BM, BLOCK // M, M))
    mine = tl.reshape(s, (BM, BLOCK // M, M, 1))
    other = tl.reshape(s, (BM, BLOCK // M, 1, M))
    j = tl.arange(0, M)
    earlier = tl.reshape(j, (1, 1, 1, M)) < tl.reshape(j, (1, 1, M, 1))
    rank = tl.sum(((other < mine) | ((other == mine) & earlier)).to(tl.int32), axis=3)
    return tl.reshape(rank < N, (BM, BLOCK))


@triton.jit
def _block_kernel(
    W, stride_w, U, stride_u, E, P, S, Z, stride_q, group0, rows, width, tiny,
    BM: tl.constexpr, BLOCK: tl.constexpr, N: tl.constexpr, M: tl.constexpr, KEEP_PRUNED: tl.constexpr,
    QUANT: tl.constexpr, G: tl.constexpr, QMIN: tl.constexpr, QMAX: tl.constexpr, SYMMETRIC: tl.constexpr,
    LEVELS: tl.constexpr, SCALE_DTYPE: tl.constexpr,
):  # fmt: skip
    """One block of columns for ``BM`` rows: ``W`` (block start) gets the block's output, ``E`` its errors.

    ``M == 0``: the pruned mask comes in ``P`` (int8, ``[rows, BLOCK]``); else N:M chosen here.
    ``KEEP_PRUNED`` (GPTQ with a mask): pruned entries are never updated.
    """
    r = tl.program_id(0) * BM + tl.arange(0, BM)
    c = tl.arange(0, BLOCK)
    cin = c < width
    inside = (r < rows)[:, None] & cin[None, :]
    w_tile = tl.load(W + r[:, None] * stride_w + c[None, :], mask=inside, other=0.0)
    d = tl.load(U + c * stride_u + c, mask=cin, other=1.0)
    if M == 0:
        pruned = tl.load(P + r[:, None] * BLOCK + c[None, :], mask=inside, other=0) != 0
    else:
        pruned = tl.zeros((BM, BLOCK), dtype=tl.int1)
    q_tile = tl.zeros((BM, BLOCK), dtype=tl.float32)
    e_tile = tl.zeros((BM, BLOCK), dtype=tl.float32)
    scale = tl.full((BM,), 1.0, dtype=tl.float32)
    zero = tl.zeros((BM,), dtype=tl.float32)
    for i in range(0, width):
        if M > 0:
            if i % M == 0:
                group = (c >= i) & (c < i + M)
                pruned = tl.where(group[None, :], _lowest_n_of_m(w_tile, d * d, BM, BLOCK, N, M), pruned)
        if QUANT:
            if i % G == 0:
                expected = pruned
                if M > 0:
                    expected = _lowest_n_of_m(w_tile, d * d, BM, BLOCK, N, M)
                x = tl.where(((c >= i) & (c < i + G))[None, :] & (expected == 0), w_tile, 0.0)
                low = tl.minimum(tl.min(x, axis=1), 0.0)
                high = tl.maximum(tl.max(x, axis=1), 0.0)
                if SYMMETRIC:
                    scale = tl.math.div_rn(tl.maximum(-low, high), tl.full((BM,), LEVELS / 2, tl.float32))
                else:
                    scale = tl.math.div_rn(high - low, tl.full((BM,), LEVELS, tl.float32))
                scale = _to_storage(tl.where(scale > 0, scale, 1.0), SCALE_DTYPE)
                scale = tl.where(scale > 0, scale, tiny)
                if not SYMMETRIC:
                    zero = tl.minimum(tl.maximum(_round_half_even(tl.math.div_rn(-low, scale)) + QMIN, QMIN), QMAX)
                k = group0 + i // G
                tl.store(S + r * stride_q + k, scale, mask=r < rows)
                tl.store(Z + r * stride_q + k, zero, mask=r < rows)
        here = (c == i)[None, :]
        w = tl.sum(tl.where(here, w_tile, 0.0), axis=1)
        p = tl.max(tl.where(here, pruned, 0).to(tl.int32), axis=1) > 0
        if QUANT:
            code = tl.minimum(tl.maximum(_round_half_even(tl.math.div_rn(w, scale)) + zero, QMIN), QMAX)
            q = tl.where(p, 0.0, (code - zero) * scale)
        else:
            q = tl.where(p, 0.0, w)
        err = tl.math.div_rn(w - q, tl.load(U + i * stride_u + i + tl.zeros((BM,), dtype=tl.int32)))
        u = tl.load(U + i * stride_u + c, mask=cin & (c >= i), other=0.0)
        update = w_tile - err[:, None] * u[None, :]
        if KEEP_PRUNED:
            update = tl.where(pruned, w_tile, update)
        w_tile = update
        q_tile = tl.where(here, q[:, None], q_tile)
        e_tile = tl.where(here, err[:, None], e_tile)
    tl.store(W + r[:, None] * stride_w + c[None, :], q_tile, mask=inside)
    tl.store(E + r[:, None] * BLOCK + c[None, :], e_tile, mask=inside)


def _rows_per_program(W: torch.Tensor) -> int:
    # the interpreter runs programs one after another: one program over all rows is fastest there
    return GPU_ROWS if W.is_cuda else min(256, triton.next_power_of_2(W.shape[0]))


def columns(
    W: torch.Tensor,
    U: torch.Tensor,
    blocksize: int,
    sparsity: float = 0.0,
    pattern: Pattern | None = None,
    quantizer: ColumnQuantizer | None = None,
    keep: torch.Tensor | None = None,
    splits: list[int] | None = None,
) -> torch.Tensor:
    """The column loop on the float32 working copy ``W`` ``[out, in]`` (changed in place if contiguous; returned).

    SparseGPT: ``keep`` None, unstructured masks per block from ``sparsity`` or N:M from ``pattern``,
    optional ``quantizer`` (joint mode). GPTQ: ``keep`` the kept weights (``W`` already zero
    outside it; updates never reach them), ``quantizer`` required, ``sparsity`` 0. ``splits``: the
    row counts of several matrices stacked in ``W`` (they share ``U``); each gets its own unstructured
    threshold per block, so the result is theirs one by one, in one launch per block for all.
    """
    pattern = pattern or Pattern()
    W, U = W.contiguous(), U.contiguous()  # Cholesky factors come column-major; the kernel reads rows
    rows, cols = W.shape
    BLOCK = triton.next_power_of_2(blocksize)
    BM = _rows_per_program(W)
    errors = torch.empty(rows, BLOCK, device=W.device, dtype=torch.float32)
    given = torch.zeros(rows, BLOCK, device=W.device, dtype=torch.int8)
    scale, zero = (quantizer.scale, quantizer.zero) if quantizer is not None else (errors, errors)
    g = quantizer.g if quantizer is not None else blocksize
    grid = quantizer.grid if quantizer is not None else None
    tiny = torch.finfo(quantizer.dtype).tiny if quantizer is not None else 0.0
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        width = i2 - i1
        W1, U1 = W[:, i1:i2], U[i1:i2, i1:i2]
        if keep is not None:
            given[:, :width] = ~keep[:, i1:i2]
        elif not pattern.structured:
            scores = W1.pow(2) / torch.diagonal(U1).pow(2).unsqueeze(0)
            given[:, :width] = torch.cat([masks.lowest_overall(part, sparsity) for part in scores.split(splits or [rows])])
        _block_kernel[(triton.cdiv(rows, BM),)](
            W1, W.stride(0), U1, U.stride(0), errors, given, scale, zero, scale.stride(0), i1 // g, rows, width, tiny,
            BM=BM, BLOCK=BLOCK, N=pattern.n if keep is None else 0, M=pattern.m if keep is None else 0,
            KEEP_PRUNED=keep is not None, QUANT=quantizer is not None, G=g,
            QMIN=grid.qmin if grid else 0, QMAX=grid.qmax if grid else 0, SYMMETRIC=grid.symmetric if grid else True,
            LEVELS=float((1 << grid.bits) - 1) if grid else 1.0,
            SCALE_DTYPE=_SCALE_DTYPES[quantizer.dtype] if quantizer is not None else 0,
            enable_fp_fusion=False,  # w - err*u rounded twice, as the CPU loop does
        )  # fmt: skip
        if i2 < cols:
            lazy = errors[:, :width] @ U[i1:i2, i2:]
            W[:, i2:].sub_(lazy.mul_(keep[:, i2:]) if keep is not None else lazy)
    return W
