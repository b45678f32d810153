"""ShortGPT (Men et al. 2024): remove the whole blocks that change their input least.

Block Influence ``BI_i = 1 - mean cos(x_i, x_{i+1})`` between a block's input and output hidden
states over the calibration tokens (``last_token``: only each sample's last token, as the 2SSP
repository's version); the blocks with the lowest BI go. The block count is the nearest whole
number to the budget (``round(s · P_decoder / P_block)``), so the achieved fraction can differ
from ``s`` by up to half a block; the report prints it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...settings import Settings, setting
from ..anatomy import Block
from ..base import STRUCTURED, Budget, Shape, StructuredMethod, check_budget
from ..signals import block_similarity
from ..surgery import remove_blocks


@STRUCTURED.register
class ShortGPT(StructuredMethod):
    name = "shortgpt"
    summary = "whole blocks with the most similar input and output (Men et al. 2024)"

    @dataclass
    class Config(Settings):
        last_token: bool = setting(False, "compare only each sample's last token (the 2SSP repository's version) instead of every token")

    def budget(self, shape: Shape, sparsity: float) -> Budget:
        return check_budget(shape, sparsity, Budget(blocks=round(sparsity * shape.decoder / shape.block)), self.name)

    def apply(self, model: nn.Module, found: list[Block], ids: torch.Tensor, budget: Budget) -> dict[str, Any]:
        if budget.blocks == 0:
            return {"block_influence": []}
        similarity = block_similarity(model, found, ids, self.config.last_token)
        influence = [1 - s for s in similarity]
        order = sorted(range(len(influence)), key=lambda i: (influence[i], i))
        remove_blocks(model, order[: budget.blocks])
        return {"block_influence": influence}
