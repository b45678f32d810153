"""Wanda (Sun et al. 2023): prune by ``|W_ij| * ||X_j||_2`` within each output row, no weight update.

The paper's variant (``variant=True``) prunes, in every row, the lowest scores whose cumulative
sum stays below ``alpha`` times the row's total, with one ``alpha`` per matrix found by bisection
so that the matrix hits the target sparsity (within ``tolerance``); rows then differ in sparsity.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..core import masks
from ..core.masks import Pattern
from ..core.stats import InputNorms
from ..settings import Settings, in_range, setting
from .base import Method, PruneResult, register

log = logging.getLogger(__name__)


def wanda_scores(weight: torch.Tensor, norm2: torch.Tensor) -> torch.Tensor:
    """``S_ij = |W_ij| * sqrt(norm2_j)`` with ``norm2_j`` the mean per-sequence sum of ``x_j**2``."""
    return weight.abs() * norm2.sqrt().unsqueeze(0)


def wanda_mask(weight: torch.Tensor, norm2: torch.Tensor, sparsity: float, pattern: Pattern) -> torch.Tensor:
    """Per row, prune the lowest scores (or the N lowest of every M columns)."""
    return masks.select(wanda_scores(weight, norm2), sparsity, pattern, per_row=True)


def variant_mask(scores: torch.Tensor, sparsity: float, tolerance: float = 0.001, steps: int = 50) -> tuple[torch.Tensor, float]:
    """Wanda's variant: per row prune the lowest scores whose cumulative sum is ``<= alpha * row sum``.

    ``alpha`` in [0, 1] is bisected until the matrix sparsity is within ``tolerance`` of ``sparsity``
    (or ``steps`` halvings). Returns ``(mask, alpha)``.
    """
    ordered, order = scores.double().sort(dim=1, stable=True)
    cumulative = ordered.cumsum(1)
    total = cumulative[:, -1:]

    def counts(alpha: float) -> torch.Tensor:
        return (cumulative <= alpha * total).sum(1)

    low, high, alpha = 0.0, 1.0, 0.5
    best = (float("inf"), alpha)
    for _ in range(steps):
        reached = counts(alpha).sum().item() / scores.numel()
        best = min(best, (abs(reached - sparsity), alpha))
        if abs(reached - sparsity) <= tolerance:
            break
        low, high = (low, alpha) if reached > sparsity else (alpha, high)
        alpha = (low + high) / 2
    gap, alpha = best
    if gap > tolerance:
        log.warning("wanda variant: closest sparsity reachable is %.4f off the target %g", gap, sparsity)
    ranks = torch.arange(scores.shape[1], device=scores.device).unsqueeze(0)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask.scatter_(1, order, ranks < counts(alpha).unsqueeze(1))
    return mask, alpha


@dataclass
class WandaConfig(Settings):
    variant: bool = setting(False, "the paper's variant: per-row cumulative-score threshold with one alpha per matrix (unstructured only)")
    tolerance: float = setting(0.001, "variant: allowed gap between matrix and target sparsity", check=in_range(0, 1, low_open=True, high_open=True))


@register
class Wanda(Method):
    name = "wanda"
    Config = WandaConfig

    def new_stats(self, columns, device):
        return InputNorms(columns, device)

    def check(self, pattern):
        if self.config.variant and pattern.structured:
            raise masks.SparsityError("the Wanda variant is defined for unstructured sparsity only, not N:M")

    def prune(self, weight, stats, sparsity, pattern, name=""):
        if not self.config.variant:
            return PruneResult(weight.masked_fill(wanda_mask(weight, stats.norm2, sparsity, pattern), 0))
        self.check(pattern)
        mask, alpha = variant_mask(self.scores(weight, stats), sparsity, self.config.tolerance)
        return PruneResult(weight.masked_fill(mask, 0), notes={"alpha": round(alpha, 6)})

    def scores(self, weight, stats):
        return wanda_scores(weight, stats.norm2)
