"""FFN-only width pruning: 2SSP's first stage alone, at the whole parameter budget.

Every block loses the same number of FFN neurons, those with the smallest L2 norm over the
calibration tokens of their activation; attention modules and blocks stay. A baseline for 2SSP
(the paper's ablation of its second stage).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...settings import Settings
from ..anatomy import Block
from ..base import STRUCTURED, Budget, Shape, StructuredMethod, check_budget, neurons_for
from .twossp import width_stage


@STRUCTURED.register
class WidthOnly(StructuredMethod):
    name = "width"
    summary = "FFN neurons only, by activation norm (2SSP's first stage at the whole budget)"

    @dataclass
    class Config(Settings):
        pass

    def budget(self, shape: Shape, sparsity: float) -> Budget:
        return check_budget(shape, sparsity, Budget(neurons=neurons_for(shape, sparsity * shape.decoder, shape.blocks)), self.name)

    def apply(self, model: nn.Module, found: list[Block], ids: torch.Tensor, budget: Budget) -> dict[str, Any]:
        return width_stage(model, found, ids, budget.neurons)
