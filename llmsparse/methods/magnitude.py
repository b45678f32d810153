"""Magnitude pruning: drop the weights with the smallest ``|W|``. Needs no calibration data."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core import masks
from ..core.masks import Pattern
from ..settings import Settings, setting
from .base import Method, PruneResult, register


def magnitude_mask(weight: torch.Tensor, sparsity: float, pattern: Pattern, per_row: bool = False) -> torch.Tensor:
    """Mask of the lowest ``|W|``: one threshold per matrix (Wanda repo's baseline) or per row; N:M per group."""
    return masks.select(weight.abs(), sparsity, pattern, per_row=per_row)


@dataclass
class MagnitudeConfig(Settings):
    scope: str = setting(
        "matrix", "'matrix': one threshold over the whole matrix (the Wanda paper's baseline); 'row': per output row", choices=("matrix", "row")
    )


@register
class Magnitude(Method):
    name = "magnitude"
    Config = MagnitudeConfig
    needs_calibration = False

    def prune(self, weight, stats, sparsity, pattern, name=""):
        mask = magnitude_mask(weight, sparsity, pattern, per_row=self.config.scope == "row")
        return PruneResult(weight.masked_fill(mask, 0))

    def scores(self, weight, stats):
        return weight.abs()
