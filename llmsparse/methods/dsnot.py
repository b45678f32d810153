"""DSnoT (Zhang et al. 2023): training-free refinement of another method's mask by pruned/kept swaps.

Per output row, the pruned weights' expected contribution ``e_i = sum over pruned j of W_ij mu_j``
is the row's expected reconstruction error. Each cycle regrows the pruned weight that cuts
``|e_i|`` most reliably (largest ``D_ij / var_j**pow`` of the sign of ``e_i``, ``D_ij = W_ij mu_j``)
and prunes, in exchange, the kept weight with the lowest Wanda score among those whose ``D`` does
not push ``e_i`` further from zero. A row stops for good once ``|e_i| <= update_threshold`` or a
swap would flip the sign of ``e_i``; so every swap strictly lowers ``|e_i|`` and the sparsity
(and an N:M pattern: both weights of a swap sit in one M-block) never changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..core import masks
from ..core.masks import Pattern
from ..core.stats import InputMoments
from ..errors import UnknownNameError
from ..settings import Settings, at_least, finite, regex, setting
from .base import Method, PruneResult, get_method, register
from .wanda import wanda_scores


@dataclass
class Refinement:
    mask: torch.Tensor  # True = pruned
    swaps: int
    error_before: float  # sum over rows of |e_i| for the initial mask
    error_after: float


def expected_error(weight: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """Per-row ``e_i = sum over pruned j of W_ij mu_j`` (float64)."""
    return (weight.double() * mu.double().unsqueeze(0)).masked_fill(~mask, 0).sum(1)


def dsnot_refine(
    weight: torch.Tensor,
    mask: torch.Tensor,
    mu: torch.Tensor,
    var: torch.Tensor,
    norm2: torch.Tensor,
    pattern: Pattern,
    max_cycles: int = 50,
    threshold: float = 0.1,
    power: float = 1.0,
) -> Refinement:
    """Refine ``mask`` (True = pruned) of ``weight`` ``[out, in]`` by swaps; never changes the pruned count per row."""
    rows_all, cols = weight.shape
    block = pattern.m if pattern.structured else cols
    mask = mask.clone()
    D = weight * mu.unsqueeze(0)
    e = expected_error(weight, mask, mu)
    sign = torch.sign(e)
    towards = D * sign.float().unsqueeze(1)  # > 0: regrowing it moves e_i towards zero; <= 0: pruning it does not move e_i away
    rank = towards / var.clamp_min(torch.finfo(torch.float32).tiny).pow(power).unsqueeze(0)
    inf = torch.tensor(float("inf"), device=weight.device)
    grow_key = torch.where(mask & (towards > 0), rank, -inf)
    prune_key = torch.where(~mask & (towards <= 0), wanda_scores(weight, norm2), inf)
    if pattern.structured:  # a pruned weight can only be regrown if its block has a weight to prune in exchange
        no_partner = prune_key.view(rows_all, -1, block).isinf().all(2, keepdim=True)
        grow_key.view(rows_all, -1, block).masked_fill_(no_partner, -inf)
    offsets = torch.arange(block, device=weight.device)
    before = e.abs().sum().item()
    active = (e.abs() > threshold) & (sign != 0)
    swaps = 0
    for _ in range(max_cycles):
        rows = active.nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        g_val, g = grow_key[rows].max(1)
        span = (g // block * block).unsqueeze(1) + offsets  # the block of each regrown weight
        k_val, k_in = prune_key[rows.unsqueeze(1), span].min(1)
        k = span.gather(1, k_in.unsqueeze(1)).squeeze(1)
        e_new = e[rows] - D[rows, g].double() + D[rows, k].double()
        ok = g_val.isfinite() & k_val.isfinite() & (e_new.sign() == sign[rows])
        active[rows[~ok]] = False
        rows, g, k, span = rows[ok], g[ok], k[ok], span[ok]
        mask[rows, g] = False
        mask[rows, k] = True
        e[rows] = e_new[ok]
        grow_key[rows, g] = -inf
        prune_key[rows, k] = inf
        if pattern.structured:
            exhausted = prune_key[rows.unsqueeze(1), span].isinf().all(1)
            grow_key[rows[exhausted].unsqueeze(1), span[exhausted]] = -inf
        active[rows] = e[rows].abs() > threshold
        swaps += rows.numel()
    return Refinement(mask, swaps, before, e.abs().sum().item())


class DSnoTStats:
    """DSnoT's input moments plus whatever the initial method needs (one object per shared input)."""

    def __init__(self, columns: int, device, initial: Method):
        self.moments = InputMoments(columns, device)
        self.initial = initial.new_stats(columns, device)

    def update(self, x: torch.Tensor) -> None:
        self.moments.update(x)
        if self.initial is not None:
            self.initial.update(x)


@dataclass
class DSnoTConfig(Settings):
    init: str = setting(
        "wanda", "method whose saliency score gives the initial per-row mask (wanda, sparsegpt, magnitude); no weight update", alias="--init"
    )
    max_cycle_time: int = setting(50, "most swap cycles per matrix", check=at_least(0))
    update_threshold: float = setting(0.1, "a row stops swapping once its |expected error| is at most this", check=at_least(0))
    pow_of_var_regrowing: float = setting(1.0, "regrowth ranks D_ij / var_j**pow", check=finite)
    skip: str = setting("", "regex of matrix names that keep the initial mask unrefined (the reference's default is 'mlp': attention only)", check=regex)


@register
class DSnoT(Method):
    name = "dsnot"
    Config = DSnoTConfig

    def __init__(self, config: DSnoTConfig | None = None):
        super().__init__(config)
        if self.config.init == self.name:
            raise UnknownNameError("dsnot init must be another method (wanda, sparsegpt, magnitude), not dsnot")
        try:
            self.initial = get_method(self.config.init)
        except UnknownNameError as err:
            raise UnknownNameError(f"dsnot init: {err}") from None
        if type(self.initial).scores is Method.scores:
            raise UnknownNameError(f"dsnot init: method {self.config.init!r} has no per-weight score to start from")

    def check(self, pattern):
        self.initial.check(pattern)

    def new_stats(self, columns, device):
        return DSnoTStats(columns, device, self.initial)

    def prune(self, weight, stats, sparsity, pattern, name=""):
        mask = masks.select(self.initial.scores(weight, stats.initial), sparsity, pattern, per_row=True)
        if self.config.skip and re.search(self.config.skip, name):
            return PruneResult(weight.masked_fill(mask, 0), notes={"refined": False})
        m = stats.moments
        c = self.config
        refined = dsnot_refine(weight, mask, m.seq_sum, m.var, m.norm2, pattern, c.max_cycle_time, c.update_threshold, c.pow_of_var_regrowing)
        ratio = refined.error_after / refined.error_before if refined.error_before else 1.0
        return PruneResult(weight.masked_fill(refined.mask, 0), notes={"swaps": refined.swaps, "e_ratio": round(ratio, 4)})
