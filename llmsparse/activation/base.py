"""The interface every activation sparsifier implements, the calibration data it receives, and their registry.

A method is a module of pure functions plus an :class:`ActivationMethod` subclass with a ``name``
and a ``Config`` dataclass, decorated with :func:`register`; the API, the CLI (``--<name>-<option>``
flags), recipes and ``llmsparse methods`` find it by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import SparsityError
from ..registry import Registry
from .hooks import Site
from .sites import Block


@dataclass
class Captured:
    """Dense activations of one block on the calibration tokens (float32, ``[tokens, channels]``).

    Roles that read the same tensor (q/k/v, gate/up) share one tensor object in ``inputs``.
    """

    inputs: dict[str, torch.Tensor]
    act: torch.Tensor | None = None  # MLP activation output act(gate(x)), when the method asks for it
    up_abs_mean: torch.Tensor | None = None  # E|up(x)| per intermediate channel, likewise


class ActivationMethod:
    """An activation sparsifier: ``prepare`` digests calibration data once, ``sites`` builds the sparsifiers.

    ``sites`` gets one sparsity per role (the same for all under uniform allocation; TEAL's greedy
    search varies them), so it must be cheap: sorting happens in ``prepare``.
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    needs_act: ClassVar[bool] = False  # capture the MLP activation output and E|up(x)|
    allocations: ClassVar[tuple[str, ...]] = ("uniform", "greedy")
    paper_definition: ClassVar[str] = "parameter-weighted fraction of block-Linear inputs zeroed (target)"

    def __init__(self, config=None):
        self.config = config if config is not None else self.Config()

    def needs_calibration(self, allocation: str) -> bool:
        return True

    def check(self, block: Block) -> None:
        """Raise when this method cannot apply to ``block``."""

    def roles(self, block: Block) -> list[str]:
        """Roles that get their own sparsity (and a share of the block's parameter weight)."""
        return list(block.linears)

    def prepare(self, block: Block, captured: Captured | None):
        raise NotImplementedError

    def sites(self, block: Block, prepared, sparsities: dict[str, float]) -> dict[str, Site]:
        raise NotImplementedError

    def paper_sparsity(self, blocks: list[Block], layers: list[dict[str, float]], target: float) -> float:
        """The sparsity figure the method's paper reports, from the calibrated targets."""
        return weighted_sparsity(blocks, layers)


def weighted_sparsity(blocks: list[Block], layers: list[dict[str, float]]) -> float:
    """Parameter-weighted mean of per-role sparsities over every block Linear (roles without one count as 0)."""
    total = sum(size for b in blocks for size in b.sizes.values())
    return sum(layer.get(role, 0.0) * size for b, layer in zip(blocks, layers) for role, size in b.sizes.items()) / total


def sorted_abs(x: torch.Tensor) -> torch.Tensor:
    """``|x|`` flattened and sorted ascending (the exact empirical distribution)."""
    return x.detach().abs().flatten().float().sort().values


def check_sparsity(sparsity: float) -> None:
    """Refuse an activation sparsity outside [0, 1)."""
    if not 0.0 <= sparsity < 1.0:
        raise SparsityError(f"activation sparsity must be in [0, 1), got {sparsity}")


def quantile_threshold(sorted_values: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The threshold ``t`` such that a fraction ``sparsity`` of the values is ``<= t`` (0-d float32).

    Exact: the k-th smallest value with ``k = round(sparsity * n)``; 0 at sparsity 0, which keeps
    every nonzero entry (dropping exact zeros changes no result).
    """
    check_sparsity(sparsity)
    k = int(round(sparsity * sorted_values.numel()))
    if k == 0:
        return torch.zeros((), dtype=torch.float32)
    return sorted_values[k - 1].float().cpu().clone()


#: Activation sparsity methods by name.
ACTIVATION_METHODS: Registry[ActivationMethod] = Registry("activation sparsity method")
register = ACTIVATION_METHODS.register


def get_activation_method(name: str, **options) -> ActivationMethod:
    """An activation sparsifier by name, configured with ``options``."""
    return ACTIVATION_METHODS.create(name, **options)
