"""TEAL (Liu et al. 2024): magnitude thresholds on the inputs of every block Linear.

Thresholds are exact quantiles of ``|x|`` per projection (the reference's signed-histogram
shortcut assumes symmetry). TEAL's greedy block-wise allocation is in
:mod:`llmsparse.activation.greedy`, shared with the other methods that support it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...settings import Settings
from ..base import ActivationMethod, Captured, quantile_threshold, register, sorted_abs
from ..hooks import Site
from ..sites import Block


@dataclass
class TEALConfig(Settings):
    """TEAL has no options beyond sparsity and allocation."""


@register
class TEAL(ActivationMethod):
    name = "teal"
    Config = TEALConfig
    paper_definition = "model-wide: parameter-weighted over the block Linears (TEAL)"

    def prepare(self, block: Block, captured: Captured) -> dict:
        by_tensor: dict[int, object] = {}
        for x in captured.inputs.values():
            if id(x) not in by_tensor:
                by_tensor[id(x)] = sorted_abs(x)
        return {role: by_tensor[id(x)] for role, x in captured.inputs.items()}

    def sites(self, block: Block, prepared: dict, sparsities: dict[str, float]) -> dict[str, Site]:
        return {block.names[role]: Site(role, s, threshold=quantile_threshold(prepared[role], s)) for role, s in sparsities.items()}
