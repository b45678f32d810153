"""After each matrix is pruned: its realised sparsity must meet its target, or the run stops.

A method that silently prunes nothing (an option such as a negative block size or a NaN exponent
that makes every score NaN) or everything (statistics of an all-zero input) would otherwise give a
model saved with exit 0 whose report merely shows the wrong number. The counts the masks make are
exact (:mod:`llmsparse.core.masks`), so the only legitimate differences from ``floor(numel * target)``
pruned weights are:

* rounding: masks chosen per row (``floor(cols * target)`` each: less than one weight short per row)
  or per block of columns (SparseGPT: less than one short per block, at most one block per column),
  so up to ``rows + cols`` weights fewer;
* ties: weights already zero before pruning may stay zero beyond the target, so up to that many more
  (plus the same rounding allowance);
* quantization: a kept weight may round to zero on the grid, so a quantized matrix is checked only
  for too few zeros.

A pruned weight that is not finite (a method's update blown up by an option such as ``rho0=inf``) is an
error too: it would meet the count and poison every later layer.
"""

from __future__ import annotations

import torch

from ..core.checks import nonfinite
from ..core.masks import Pattern, pruned_count
from ..errors import NonFiniteError, SparsityError


def check_realised(name: str, zeros_before: int, weight: torch.Tensor, target: float, pattern: Pattern, quantized: bool, method: str = "") -> int:
    """The exact zeros of the pruned ``weight`` of matrix ``name``; :class:`SparsityError` when they miss ``target``.

    ``zeros_before``: exact zeros of the weight before pruning (ties); ``quantized``: the weight was put on a
    quantization grid (more zeros are fine). N:M patterns prune exactly ``numel * N / M``.
    """
    by = f" by {method}" if method else ""
    bad = nonfinite(weight)
    if bad:
        raise NonFiniteError(f"{name}: pruned{by} to weights with {bad}; a method option out of range?")
    rows, cols = weight.shape[0], weight.shape[-1]
    numel = weight.numel()
    zeros = int((weight == 0).sum())
    expected = pruned_count(numel, pattern.sparsity if pattern.structured else target)
    slack = rows + cols
    low, high = expected - slack, expected + zeros_before + slack
    if low <= zeros and (quantized or zeros <= high):
        return zeros
    raise SparsityError(
        f"{name}: pruned{by} to sparsity {zeros / numel:.4f} for a target of {target:.4f} ({zeros} of {numel} weights zero, "
        f"{zeros_before} before; expected {expected}); a method option out of range, or degenerate calibration inputs?"
    )
