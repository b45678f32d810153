"""The contract between a pruning method and the layer-sequential engine.

A method is a small module of pure tensor functions (scores, masks, updates) plus a subclass
of :class:`Method` that adapts them to the engine: which input statistics it needs per matrix
(:meth:`Method.new_stats`) and how one ``[out, in]`` matrix is pruned from them (:meth:`Method.prune`).
Options live in a dataclass (``Method.Config``) whose defaults follow the paper. Decorating the
class with :func:`register` makes it available by name everywhere (API, CLI, recipes, listings).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..core.masks import Pattern
from ..registry import Registry


@dataclass
class PruneResult:
    """One pruned matrix: the new float32 weight (pruned entries exactly zero) and what the method measured."""

    weight: torch.Tensor
    error: float | None = None  # relative reconstruction error ||(W - W')X||^2 / ||WX||^2 on the calibration inputs
    notes: dict[str, Any] = field(default_factory=dict)
    quant: Any = None  # the weight's grid parameters when it was quantized (a llmsparse.core.quantgrid.QuantState)


class Method:
    """Adapter from a method's pure functions to the engine. Subclasses set ``name`` and ``Config``."""

    name: ClassVar[str]
    Config: ClassVar[type]
    needs_calibration: ClassVar[bool] = True
    joint_quantization: ClassVar[bool] = False  # True: quantizes inside its own loop when ``grid`` is set

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.Config()
        self.grid: Any = None  # a llmsparse.core.quantgrid.Grid for joint pruning + quantization (methods with joint_quantization)
        self.storage_dtype = torch.float32  # the dtype the quantization scales are rounded to

    def new_stats(self, columns: int, device: torch.device | str):
        """A fresh accumulator for the inputs of a matrix with ``columns`` inputs (``None``: no data needed)."""
        return None

    def check(self, pattern: Pattern) -> None:
        """Refuse a pattern the method cannot produce, before any weight changes (raise ``SparsityError``)."""

    def prune(self, weight: torch.Tensor, stats: Any, sparsity: float, pattern: Pattern, name: str = "") -> PruneResult:
        """Prune one float32 ``[out, in]`` matrix (called ``name`` in the model) to ``sparsity`` under ``pattern``."""
        raise NotImplementedError

    def scores(self, weight: torch.Tensor, stats: Any) -> torch.Tensor:
        """The method's saliency per weight (lowest pruned first), for mask refinement such as DSnoT."""
        raise NotImplementedError(f"method {self.name!r} has no per-weight saliency score")

    def options(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)


#: Pruning methods by name.
METHODS: Registry[Method] = Registry("method")
register = METHODS.register


def get_method(name: str, **options) -> Method:
    """Instantiate the method ``name`` with config ``options`` (unknown names and options raise ``UnknownNameError``)."""
    return METHODS.create(name, **options)
