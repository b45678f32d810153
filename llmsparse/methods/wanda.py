"""Wanda (Sun et al. 2023): prune by ``|W_ij| * ||X_j||_2`` within each output row, no weight update."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import masks
from ..masks import Pattern
from ..stats import InputNorms
from . import register
from .base import Method, PruneResult


def wanda_scores(weight: torch.Tensor, norm2: torch.Tensor) -> torch.Tensor:
    """``S_ij = |W_ij| * sqrt(norm2_j)`` with ``norm2_j`` the mean per-sequence sum of ``x_j**2``."""
    return weight.abs() * norm2.sqrt().unsqueeze(0)


def wanda_mask(weight: torch.Tensor, norm2: torch.Tensor, sparsity: float, pattern: Pattern) -> torch.Tensor:
    """Per row, prune the lowest scores (or the N lowest of every M columns)."""
    return masks.select(wanda_scores(weight, norm2), sparsity, pattern, per_row=True)


@dataclass
class WandaConfig:
    """Wanda has no options in its default form (comparison group: each output row)."""


@register
class Wanda(Method):
    name = "wanda"
    Config = WandaConfig

    def new_stats(self, columns, device):
        return InputNorms(columns, device)

    def prune(self, weight, stats, sparsity, pattern):
        mask = wanda_mask(weight, stats.norm2, sparsity, pattern)
        return PruneResult(weight.masked_fill(mask, 0))
