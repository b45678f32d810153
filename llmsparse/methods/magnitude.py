"""Magnitude pruning: drop the weights with the smallest ``|W|``. Needs no calibration data."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..core import masks
from ..core.masks import Pattern
from ..errors import check_choice
from .base import Method, PruneResult, register


def magnitude_mask(weight: torch.Tensor, sparsity: float, pattern: Pattern, per_row: bool = False) -> torch.Tensor:
    """Mask of the lowest ``|W|``: one threshold per matrix (Wanda repo's baseline) or per row; N:M per group."""
    return masks.select(weight.abs(), sparsity, pattern, per_row=per_row)


@dataclass
class MagnitudeConfig:
    scope: str = field(
        default="matrix",
        metadata={"help": "'matrix': one threshold over the whole matrix (the Wanda paper's baseline); 'row': per output row"},
    )

    def __post_init__(self):
        check_choice("magnitude scope", self.scope, ("matrix", "row"))


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
