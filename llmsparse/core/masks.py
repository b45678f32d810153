"""Sparsity patterns and the pure mask functions every pruner shares.

A mask is a boolean tensor shaped like the weight, ``True`` where the weight is pruned.
All selections are exact: ties at the threshold are broken by position, so the number of pruned entries is
always the requested count (thresholding with ``<=`` would over-prune on ties).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import SparsityError


@dataclass(frozen=True)
class Pattern:
    """``unstructured``, or N:M: in every group of M consecutive input columns, N weights are zero."""

    n: int = 0
    m: int = 0

    @classmethod
    def parse(cls, text: str | Pattern | None) -> Pattern:
        if isinstance(text, Pattern):
            return text
        if text is None or str(text).strip().lower() in ("", "unstructured", "none"):
            return cls()
        try:
            n, m = (int(part) for part in str(text).split(":"))
        except ValueError:
            raise SparsityError(f"pattern {text!r} is neither 'unstructured' nor N:M such as 2:4") from None
        if not 0 < n < m:
            raise SparsityError(f"pattern {text!r}: N:M needs 0 < N < M (N zeros in every M weights)")
        return cls(n, m)

    @property
    def structured(self) -> bool:
        return self.m > 0

    @property
    def sparsity(self) -> float:
        return self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.structured else "unstructured"


def check_sparsity(sparsity: float) -> float:
    """Return ``sparsity`` as a float if it lies in [0, 1), else raise :class:`SparsityError`."""
    value = float(sparsity)
    if not 0.0 <= value < 1.0:
        raise SparsityError(f"sparsity must be in [0, 1), got {sparsity}")
    return value


def resolve_target(sparsity: float | None, pattern: str | Pattern | None) -> tuple[float, Pattern]:
    """Validate a (sparsity, pattern) pair; an N:M pattern fixes the sparsity to N/M."""
    pat = Pattern.parse(pattern)
    if pat.structured:
        if sparsity is not None and abs(float(sparsity) - pat.sparsity) > 1e-9:
            raise SparsityError(f"pattern {pat} means sparsity {pat.sparsity:g}, but sparsity {sparsity} was asked for")
        return pat.sparsity, pat
    if sparsity is None:
        raise SparsityError("a sparsity is needed for unstructured pruning")
    return check_sparsity(sparsity), pat


def check_width(name: str, columns: int, pattern: Pattern) -> None:
    if pattern.structured and columns % pattern.m:
        raise SparsityError(f"{name}: {columns} input columns are not divisible by M={pattern.m} of pattern {pattern}")


def _lowest_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of exactly the ``k`` lowest entries along the last dimension (ties: the first ones)."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k:
        threshold = torch.kthvalue(scores, k, dim=-1, keepdim=True).values
        mask = scores < threshold
        ties = scores == threshold
        missing = k - mask.sum(-1, keepdim=True)
        if not scores.is_cuda and torch.equal(ties.sum(-1, keepdim=True), missing):  # usual on CPU: take every tie (no int64 cumsum)
            mask |= ties  # (on a GPU the comparison would wait for the device: the cumsum below gives the same mask)
        else:
            mask |= ties & (ties.cumsum(-1) <= missing)
    return mask


def pruned_count(total: int, sparsity: float) -> int:
    """``floor(total * sparsity)``, immune to float error (``640 * 0.7`` is 447.99999999999994 in floats, but 448 weights)."""
    return int(round(total * sparsity, 6))


def lowest_per_row(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune the ``floor(cols * sparsity)`` lowest scores of every row."""
    return _lowest_k(scores, pruned_count(scores.shape[1], sparsity))


def lowest_overall(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune the ``floor(numel * sparsity)`` lowest scores of the whole tensor (one threshold)."""
    return _lowest_k(scores.flatten(), pruned_count(scores.numel(), sparsity)).view_as(scores)


def lowest_n_of_m(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Prune the ``n`` lowest scores in every group of ``m`` consecutive columns of every row."""
    rows, cols = scores.shape
    groups = scores.reshape(rows, cols // m, m)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, torch.topk(groups, n, dim=2, largest=False).indices, True)
    return mask.view(rows, cols)


def select(scores: torch.Tensor, sparsity: float, pattern: Pattern, per_row: bool = True) -> torch.Tensor:
    """The mask for ``scores`` under ``pattern``: N:M groups, else per row or over the whole matrix."""
    if pattern.structured:
        return lowest_n_of_m(scores, pattern.n, pattern.m)
    return lowest_per_row(scores, sparsity) if per_row else lowest_overall(scores, sparsity)
