"""Which column loops run on the fused Triton kernels, and the entry points the methods call.

:func:`column_loop` (SparseGPT, plain or joint prune+quantize) and :func:`gptq` (GPTQ with an
optional kept-weights mask) return ``None`` when the kernel does not apply, and the caller runs its
own torch loop. The kernel applies to float32 tensors on CUDA when ``triton`` is installed, and to
CPU tensors too when ``LLMSPARSE_TRITON=1`` (with ``TRITON_INTERPRET=1``: how the tests run it
here); ``LLMSPARSE_TRITON=0`` turns it off everywhere. It needs N:M with a power-of-two M, blocks
of at most 256 columns, and quantization groups that divide the block (``group_size`` 32, 64, 128
with the default block of 128; per-channel or 256-wide groups fall back to the torch loop).

This module imports no Triton: :mod:`.sparsegpt_triton` is imported on first use only.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable

import torch

from ..core.masks import Pattern
from ..core.quantgrid import ColumnQuantizer, Grid, QuantState
from ..errors import KernelBuildError, LlmsparseError, NonFiniteError

#: ``1``: use the kernels on CPU tensors too (needs ``TRITON_INTERPRET=1``); ``0``: never use them.
FORCE = "LLMSPARSE_TRITON"
MAX_BLOCK = 256


def kernel_enabled(W: torch.Tensor) -> bool:
    """True when ``W``'s column loop should run on the Triton kernel (on CUDA or forced, and triton installed)."""
    flag = os.environ.get(FORCE)
    if flag == "0" or not (W.is_cuda or flag == "1"):
        return False
    return importlib.util.find_spec("triton") is not None


def supported(blocksize: int, pattern: Pattern, group: int | None = None) -> bool:
    """Whether the kernel handles this block size, pattern and quantization group width (None: no quantization)."""
    if not 0 < blocksize <= MAX_BLOCK:
        return False
    if pattern.structured and (pattern.m & (pattern.m - 1) or blocksize % pattern.m):
        return False
    if group is not None and (blocksize % group or (pattern.structured and group % pattern.m)):
        return False
    return True


def _finite(inputs: torch.Tensor, W: torch.Tensor, what: str) -> torch.Tensor:
    """One host sync per matrix (never per column): refuse non-finite inputs or results.

    ``inputs`` is the device flag ``isfinite(W).all() & isfinite(U).all()`` taken before the loop:
    a NaN weight can leave the loop as a row of zeros (its scores compare false), so the output
    alone would not show it.
    """
    if not bool(inputs & torch.isfinite(W).all()):
        raise NonFiniteError(f"{what}: non-finite weights or inverse-Hessian factor in the column loop (are the weights and calibration statistics finite?)")
    return W


def _finite_flag(W: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(W).all() & torch.isfinite(U).all()


def _kernel(run: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Run the kernel; a failure of Triton itself (no compiler, an unsupported GPU) becomes one line with the way around it.

    Out-of-memory and llmsparse's own errors pass through unchanged (the engine names the layer).
    """
    try:
        return run()
    except (torch.OutOfMemoryError, LlmsparseError):
        raise
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise KernelBuildError(f"the Triton column-loop kernel failed ({type(error).__name__}: {first}); set {FORCE}=0 to run the torch loop instead") from error


def column_loop(
    W: torch.Tensor,
    U: torch.Tensor,
    sparsity: float,
    pattern: Pattern,
    blocksize: int,
    quantizer: ColumnQuantizer | None = None,
    name: str = "",
) -> torch.Tensor | None:
    """SparseGPT's column loop on the float32 working copy ``W`` (dead inputs zeroed) on the kernel, or None.

    Unstructured masks come from the reference's order (one mask per block on the weights at the
    block's start); N:M from the updated weights at every M-th column; with a ``quantizer`` the
    joint mode (groups fitted on the weights expected to be kept).
    """
    if W.dtype != torch.float32 or not kernel_enabled(W) or not supported(blocksize, pattern, quantizer.g if quantizer is not None else None):
        return None
    from . import sparsegpt_triton

    flag = _finite_flag(W, U)
    out = _kernel(lambda: sparsegpt_triton.columns(W, U.float(), blocksize, sparsity, pattern, quantizer))
    return _finite(flag, out, name or "SparseGPT")


def column_loop_shared(
    weights: list[torch.Tensor], U: torch.Tensor, sparsity: float, pattern: Pattern, blocksize: int, name: str = ""
) -> list[torch.Tensor] | None:
    """SparseGPT without quantization on matrices that read one input (q/k/v, gate/up), stacked: one launch per block for all.

    ``weights``: float32 working copies (dead inputs zeroed) sharing ``U``. Rows never interact in
    the loop, and the unstructured threshold stays per matrix, so each result is the one
    :func:`column_loop` gives it alone; the lazy updates become one larger GEMM per block. None
    where the kernel does not apply.
    """
    if not weights or not kernel_enabled(weights[0]) or not supported(blocksize, pattern) or any(w.dtype != torch.float32 for w in weights):
        return None
    from . import sparsegpt_triton

    W = torch.cat(weights)
    flag = _finite_flag(W, U)
    splits = [w.shape[0] for w in weights]
    out = _finite(flag, _kernel(lambda: sparsegpt_triton.columns(W, U.float(), blocksize, sparsity, pattern, splits=splits)), name or "SparseGPT")
    return list(out.split(splits))


def gptq(
    weight: torch.Tensor, U: torch.Tensor, grid: Grid, keep: torch.Tensor | None = None, blocksize: int = 128, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, QuantState] | None:
    """:func:`llmsparse.core.quantgrid.gptq` on the kernel (same arguments and result), or None where it does not apply.

    The kernel applies every column's update to the rest of its block at once (the GPTQ paper's
    order), where the torch loop splits the block into sub-blocks: the same updates, other rounding.
    """
    if weight.dtype == torch.float64 or not kernel_enabled(weight) or not supported(blocksize, Pattern(), grid.width(weight.shape[1])):
        return None
    W = weight.detach().float().clone()
    from . import sparsegpt_triton

    quantizer = ColumnQuantizer(grid, W.shape[0], W.shape[1], W.device, dtype)
    if keep is not None:
        W.mul_(keep)
    flag = _finite_flag(W, U)
    out = _kernel(lambda: sparsegpt_triton.columns(W, U.float(), blocksize, quantizer=quantizer, keep=keep))
    return _finite(flag, out, "GPTQ"), quantizer.state()
