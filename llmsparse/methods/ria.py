"""RIA (Zhang et al., ICLR 2024): relative importance times activation norm, at Wanda's cost.

``S_ij = (|W_ij| / sum_k |W_kj| + |W_ij| / sum_k |W_ik|) * sqrt(norm2_j) ** a`` (a = 0.5): a weight
matters when it is large relative to the other weights of its input column and of its output row.
The default comparison group is the whole matrix (the paper's); per row is an option; N:M as Wanda.
No weight update (compose with ``--reconstruct`` for one).

Channel reallocation (N:M only, ``reallocate``): input channels are sorted by their summed score
and dealt into the groups of M in zig-zag order, so every group mixes strong and weak channels;
the N:M mask is chosen in that order and mapped back. Weights never move, so the model computes
exactly what pruning the same mask directly would, but the mask is N:M only in the permuted
order: such a model cannot be stored in an N:M format (use ``--format bitmask``). The reference's
optional linear-assignment refinement of the deal is not implemented.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core import masks
from ..core.masks import Pattern
from ..core.stats import InputNorms
from ..errors import SparsityError
from ..settings import Settings, at_least, setting
from .base import Method, PruneResult, register


def ria_scores(weight: torch.Tensor, norm2: torch.Tensor, a: float = 0.5) -> torch.Tensor:
    """``(|W|/column sums + |W|/row sums) * sqrt(norm2) ** a`` for an ``[out, in]`` weight."""
    w = weight.abs()
    tiny = torch.finfo(w.dtype).tiny
    relative = w / w.sum(0, keepdim=True).clamp_min(tiny) + w / w.sum(1, keepdim=True).clamp_min(tiny)
    return relative * norm2.sqrt().pow(a).unsqueeze(0)


def zigzag_permutation(column_scores: torch.Tensor, m: int) -> torch.Tensor:
    """``perm`` such that ``x[:, perm]`` holds, in every group of ``m`` positions, channels dealt in zig-zag
    order of decreasing ``column_scores`` (position ``g*m + slot`` gets the channel ranked ``slot*G ± g``)."""
    channels = column_scores.numel()
    groups = channels // m
    order = torch.argsort(column_scores, descending=True, stable=True)
    perm = torch.empty_like(order)
    for rank, channel in enumerate(order.tolist()):
        slot, pos = divmod(rank, groups)
        group = pos if slot % 2 == 0 else groups - 1 - pos
        perm[group * m + slot] = channel
    return perm


def reallocated_mask(scores: torch.Tensor, pattern: Pattern) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mask, perm)``: the N:M mask chosen on ``scores[:, perm]``, mapped back to the original column order."""
    perm = zigzag_permutation(scores.sum(0), pattern.m)
    mask = torch.empty_like(scores, dtype=torch.bool)
    mask[:, perm] = masks.lowest_n_of_m(scores[:, perm], pattern.n, pattern.m)
    return mask, perm


@dataclass
class RIAConfig(Settings):
    a: float = setting(0.5, "exponent of the activation norm", check=at_least(0))
    scope: str = setting("matrix", "comparison group of unstructured pruning: matrix (the paper's) or row", choices=("matrix", "row"))
    reallocate: bool = setting(False, "N:M: deal input channels into groups in zig-zag order first (the mask is then N:M only in that order)")


@register
class RIA(Method):
    name = "ria"
    Config = RIAConfig

    def new_stats(self, columns, device):
        return InputNorms(columns, device)

    def check(self, pattern):
        if self.config.reallocate and not pattern.structured:
            raise SparsityError("RIA channel reallocation is defined for N:M patterns only")

    def prune(self, weight, stats, sparsity, pattern, name=""):
        scores = self.scores(weight, stats)
        if self.config.reallocate:
            mask, _ = reallocated_mask(scores, pattern)
            return PruneResult(weight.masked_fill(mask, 0), notes={"reallocated": True})
        return PruneResult(weight.masked_fill(masks.select(scores, sparsity, pattern, per_row=self.config.scope == "row"), 0))

    def scores(self, weight, stats):
        return ria_scores(weight, stats.norm2, self.config.a)
