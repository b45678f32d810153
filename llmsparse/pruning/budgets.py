"""Per-decoder-layer sparsity budgets: ``uniform``, or OWL's outlier-weighted ones (Yin et al. 2023).

OWL gives layers with many outlier weights (Wanda scores above ``m`` times the layer mean) a lower
sparsity: outlier ratios ``D_l`` are rescaled to ``[0, 2*lambda]`` and ``s_l = s + mean(D) - D_l``,
so the budgets average to the target ``s``. The mean is weighted by each layer's pruned parameter
count, which is the paper's plain mean when all layers have the same size and keeps the global
sparsity on target when they do not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.engine import LayerWalk, Run
from ..core.layout import get_weight
from ..core.masks import Pattern, check_sparsity
from ..core.stats import InputNorms
from ..errors import SparsityError, check_choice
from ..methods.wanda import wanda_scores
from ..settings import Settings, at_least, greater_than, setting

BUDGETS = ("uniform", "owl")


@dataclass
class OWLConfig(Settings):
    """OWL's two options (the run settings ``owl_m`` and ``owl_lambda`` take their defaults, help and checks from here)."""

    m: float = setting(5.0, "outlier threshold: scores above m x the layer's mean score count as outliers", check=greater_than(0))
    lam: float = setting(0.08, "budgets spread over [s - 2*lambda, s + 2*lambda] at most", check=at_least(0))

    @classmethod
    def option(cls, name: str) -> Any:
        """A run setting for option ``name``: the same default and check, its help prefixed with "OWL: "."""
        f = cls.__dataclass_fields__[name]
        return setting(f.default, f"OWL: {f.metadata['help']}", check=f.metadata["check"])


def outlier_ratio(scores: Sequence[torch.Tensor], m: float) -> float:
    """Percentage of all entries of ``scores`` (one layer's matrices) above ``m`` times their joint mean."""
    total = sum(s.numel() for s in scores)
    mean = sum(s.double().sum() for s in scores) / total
    return 100.0 * sum((s > m * mean).sum().item() for s in scores) / total


def owl_sparsities(
    ratios: Sequence[float], sparsity: float, lam: float, sizes: Sequence[int] | None = None, layers: Sequence[int] | None = None
) -> list[float]:
    """OWL budgets from per-layer outlier ratios; their size-weighted mean is ``sparsity``. Raises if one leaves [0, 1).

    ``layers`` names the layers in error messages (default: their positions).
    """
    r = torch.tensor(ratios, dtype=torch.float64)
    w = torch.tensor(sizes if sizes is not None else [1] * len(r), dtype=torch.float64)
    spread = r.max() - r.min()
    scaled = (r - r.min()) / spread * 2 * lam if spread > 0 else torch.zeros_like(r)
    budgets = sparsity + (w * scaled).sum() / w.sum() - scaled
    for layer, value in zip(layers if layers is not None else range(len(r)), budgets.tolist()):
        if not 0.0 <= value < 1.0:
            raise SparsityError(
                f"OWL puts layer {layer} at sparsity {value:.4f}, outside [0, 1) "
                f"(target {sparsity:g}, lambda {lam:g}): lower --owl-lambda or the target"
            )
    return budgets.tolist()


@torch.no_grad()
def owl_outlier_ratios(run: Run, targets: dict[int, dict[str, nn.Module]], input_ids: torch.Tensor, m: float) -> dict[int, float]:
    """Outlier ratio of each targeted layer's Wanda scores, with inputs from the dense model."""
    with LayerWalk(run, input_ids, key="owl", desc="OWL outlier ratios") as walk:
        for visit in walk:
            matrices = targets.get(visit.index)
            if matrices:
                stats = visit.stats(matrices, InputNorms)
                visit.result = outlier_ratio([wanda_scores(visit.master(mod).float(), stats[n].norm2) for n, mod in matrices.items()], m)
    return {i: ratio for i, ratio in enumerate(walk.results) if ratio is not None}


def check_budget(budget: str | Sequence[float], pattern: Pattern) -> None:
    """Refuse an unknown budget, a non-uniform one with N:M, or bad explicit values, before any work."""
    if isinstance(budget, str):
        check_choice("layer budget", budget, BUDGETS)
        if budget == "uniform":
            return
    if pattern.structured:
        raise SparsityError(f"layer budgets need unstructured sparsity; pattern {pattern} fixes every layer at {pattern.sparsity:g}")
    if not isinstance(budget, str):
        for value in budget:
            check_sparsity(value)


def check_layer_count(budget: str | Sequence[float], layers: int) -> None:
    """Refuse an explicit budget whose length is not the model's number of decoder layers."""
    if not isinstance(budget, str) and len(budget) != layers:
        raise SparsityError(f"{len(budget)} layer sparsities given for {layers} decoder layers")


def layer_sparsities(
    budget: str | Sequence[float],
    sparsity: float,
    run: Run,
    targets: dict[int, dict[str, nn.Module]],
    input_ids: torch.Tensor | None,
    owl: OWLConfig | None = None,
) -> tuple[list[float], dict | None]:
    """Each decoder layer's target sparsity (``budget`` checked by :func:`check_budget`) and what it came from."""
    if isinstance(budget, str) and budget == "uniform":
        return [sparsity] * len(run.layout.layers), None
    if not isinstance(budget, str):
        return [float(v) for v in budget], {"budget": "explicit", "sparsity": dict(enumerate(map(float, budget)))}
    owl = owl or OWLConfig()
    ratios = owl_outlier_ratios(run, targets, input_ids, owl.m)
    chosen = sorted(ratios)
    sizes = [sum(get_weight(mod).numel() for mod in targets[i].values()) for i in chosen]
    values = owl_sparsities([ratios[i] for i in chosen], sparsity, owl.lam, sizes, layers=chosen)
    per_layer = dict(zip(chosen, values))
    info = {"budget": "owl", "m": owl.m, "lambda": owl.lam, "outlier_ratio": ratios, "sparsity": per_layer}
    return [per_layer.get(i, sparsity) for i in range(len(run.layout.layers))], info
