"""WINA (2025): weight-informed activation sparsity, score ``|x_i| * ||W[:, i]||_2``.

Each projection scores its input with its *own* column norms, so q/k/v (and gate/up) get separate
masks; the reference applies the norm only on k_proj and gate_proj inputs. ``topk`` keeps the
``D - round(s * D)`` best entries of every token (the paper's mode, no calibration needed with
uniform allocation); ``threshold`` calibrates a score threshold per projection instead. A
bitsandbytes Linear's norms are those of the weight it computes with (dequantized).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...core.bnb import float_weight
from ...core.masks import pruned_count
from ...settings import Settings, setting
from ..base import ActivationMethod, Captured, check_sparsity, quantile_threshold, register
from ..hooks import Site
from ..sites import Block

MODES = ("topk", "threshold")


def column_norms(weight: torch.Tensor) -> torch.Tensor:
    """``||W[:, i]||_2`` for every input channel ``i`` of an ``[out, in]`` weight (float32, CPU)."""
    return weight.detach().float().norm(dim=0).cpu()


def kept_per_token(channels: int, sparsity: float) -> int:
    """Entries kept per token in top-k mode."""
    return channels - pruned_count(channels, sparsity)


@dataclass
class WINAConfig(Settings):
    mode: str = setting("topk", "topk (per token, the paper's) or threshold (calibrated per projection)", choices=MODES)


@register
class WINA(ActivationMethod):
    name = "wina"
    Config = WINAConfig
    paper_definition = "fraction of each projection's input channels dropped per token (parameter-weighted)"

    def needs_calibration(self, allocation: str) -> bool:
        return self.config.mode == "threshold" or allocation == "greedy"

    def prepare(self, block: Block, captured: Captured | None) -> dict:
        norms = {role: column_norms(float_weight(m)) for role, m in block.linears.items()}
        scores = {}
        if self.config.mode == "threshold":
            for role, x in captured.inputs.items():
                scores[role] = (x.abs() * norms[role].to(x.device)).flatten().sort().values
        return {"norms": norms, "scores": scores}

    def sites(self, block: Block, prepared: dict, sparsities: dict[str, float]) -> dict[str, Site]:
        out = {}
        for role, s in sparsities.items():
            norm = prepared["norms"][role]
            if self.config.mode == "topk":
                check_sparsity(s)
                out[block.names[role]] = Site(role, s, scale=norm, k=kept_per_token(norm.numel(), s))
            else:
                out[block.names[role]] = Site(role, s, scale=norm, threshold=quantile_threshold(prepared["scores"][role], s))
        return out
