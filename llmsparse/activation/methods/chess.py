"""CHESS (2024): channel-wise thresholds on the MLP gate activation, plus q and o input thresholds.

FFN: importance of activation entry ``a_i = act(gate(x))_i`` is ``|a_i| * m_i`` with
``m_i = E|up(x)_i|``; one quantile ``T`` of the importance gives per-channel thresholds
``t_i = T / m_i``. Attention ("CHESS+"): TEAL-style thresholds on the q_proj and o_proj inputs;
k and v stay dense. The down projection then reads zeros wherever ``a_i`` was dropped; it gets a
threshold-0 site so the sparse decode path skips those rows and measurement counts them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import ModelError
from ...settings import Settings
from ..base import ActivationMethod, Captured, quantile_threshold, register, sorted_abs
from ..hooks import Site
from ..sites import Block


def sorted_importance(act: torch.Tensor, up_abs_mean: torch.Tensor) -> torch.Tensor:
    """``|a_i| * m_i`` over all calibration tokens and channels, sorted ascending."""
    return (act.abs().float() * up_abs_mean.to(act.device)).flatten().sort().values


def channel_thresholds(sorted_importance: torch.Tensor, up_abs_mean: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Per-channel thresholds ``T / m_i`` so that a fraction ``sparsity`` of ``|a| * m`` falls at or below ``T``."""
    total = quantile_threshold(sorted_importance, sparsity)
    m = up_abs_mean.float().cpu()
    # A channel whose up output is always 0 contributes nothing: drop it (infinite threshold).
    return torch.where(m > 0, total / m.clamp_min(torch.finfo(torch.float32).tiny), torch.full_like(m, float("inf")))


@dataclass
class CHESSConfig(Settings):
    """CHESS has no options beyond sparsity."""


@register
class CHESS(ActivationMethod):
    name = "chess"
    Config = CHESSConfig
    needs_act = True
    allocations = ("uniform",)
    paper_definition = "quantile level of the sparsified tensors (q input, o input, gate activation)"

    def check(self, block: Block) -> None:
        if not block.gated or "q" not in block.linears:
            raise ModelError(
                f"CHESS needs separate q_proj and a gated MLP (gate_proj, up_proj, act_fn); layer {block.index} has {', '.join(block.linears)}"
            )

    def roles(self, block: Block) -> list[str]:
        return ["q", "o", "act"]

    def prepare(self, block: Block, captured: Captured) -> dict:
        return {
            "q": sorted_abs(captured.inputs["q"]),
            "o": sorted_abs(captured.inputs["o"]),
            "importance": sorted_importance(captured.act, captured.up_abs_mean),
            "m": captured.up_abs_mean,
        }

    def sites(self, block: Block, prepared: dict, sparsities: dict[str, float]) -> dict[str, Site]:
        s = sparsities["act"]
        return {
            block.names["q"]: Site("q", sparsities["q"], threshold=quantile_threshold(prepared["q"], sparsities["q"])),
            block.names["o"]: Site("o", sparsities["o"], threshold=quantile_threshold(prepared["o"], sparsities["o"])),
            block.act_name: Site("act", s, threshold=channel_thresholds(prepared["importance"], prepared["m"], s)),
            block.names["down"]: Site("down", s, threshold=torch.zeros(())),
        }

    def paper_sparsity(self, blocks, layers, target: float) -> float:
        return target
