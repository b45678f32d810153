"""The contract of a structured pruning method, its registry, the parameter budget and the report.

Structured methods act on the whole model (they remove FFN neurons, attention modules or blocks),
not one matrix at a time, so they have their own small contract instead of
:class:`llmsparse.methods.Method`: :meth:`StructuredMethod.budget` turns the target sparsity (the
fraction of decoder-block parameters to remove; embeddings, final norm and LM head excluded) into
counts before any data is read, so an impossible target fails at once, and
:meth:`StructuredMethod.apply` measures the calibration tokens and edits the model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import SparsityError
from ..registry import Registry
from ..settings import Settings
from .anatomy import Block

#: Structured methods by name (``llmsparse prune --method NAME`` dispatches here for these names).
STRUCTURED: Registry[StructuredMethod] = Registry("structured method")


@dataclass
class Shape:
    """The parameter counts the budget is computed from (block 0's; every block has the same shape)."""

    blocks: int
    decoder: int  # all decoder-block parameters
    block: int
    attention: int
    ffn: int
    neuron: int  # parameters of one FFN neuron (its rows in the input projections + its column of the output)
    width: int

    @classmethod
    def of(cls, found: list[Block]) -> Shape:
        b = found[0]
        decoder = sum(x.params() for x in found)
        return cls(len(found), decoder, b.params(), b.attention_params(), b.ffn_params(), b.neuron_params(), b.width)


@dataclass
class Budget:
    """What a method will remove: attention modules, whole blocks, FFN neurons per block."""

    attention: int = 0
    blocks: int = 0
    neurons: int = 0

    def removed(self, shape: Shape) -> int:
        """Parameters removed (exact: every block has the shape of block 0)."""
        return self.attention * shape.attention + self.blocks * shape.block + self.neurons * shape.neuron * (shape.blocks - self.blocks)


@dataclass
class StructuredReport:
    """What a structured run removed, with exact parameter accounting."""

    method: str
    sparsity: float  # the target
    options: dict[str, Any]
    shape: dict[str, int]
    budget: dict[str, int]
    decoder_before: int
    decoder_after: int  # removed attention modules not counted (their zero weights stay on disk)
    total_before: int
    total_after: int
    width_before: int
    width_after: int
    removed_blocks: list[int] = field(default_factory=list)  # indices in the original model
    removed_attention: list[int] = field(default_factory=list)  # indices in the pruned model
    calibration: dict | None = None
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)

    @property
    def achieved(self) -> float:
        """The fraction of decoder-block parameters removed."""
        return 1 - self.decoder_after / self.decoder_before

    def summary(self) -> str:
        lines = [
            f"{self.method}: removed {self.decoder_before - self.decoder_after:,} of {self.decoder_before:,} decoder-block parameters "
            f"({self.achieved:.4%}; target {self.sparsity:.4%}) in {self.seconds:.1f} s",
            f"  FFN width {self.width_before} -> {self.width_after} in every block "
            f"({self.budget['neurons']} neurons x {self.shape['neuron']:,} parameters per block)",
            f"  attention modules removed: {len(self.removed_attention)} {self.removed_attention} "
            f"(x {self.shape['attention']:,} parameters; kept as zeros on disk)",
            f"  blocks removed: {len(self.removed_blocks)} {self.removed_blocks} (x {self.shape['block']:,} parameters)",
            f"  whole model: {self.total_before:,} -> {self.total_after:,} parameters (embeddings and head included)",
        ]
        return "\n".join(lines)


    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "achieved": self.achieved}

    def save_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


class StructuredMethod:
    """Base of structured methods: ``name``, a ``Config`` (a :class:`Settings` dataclass), :meth:`budget`, :meth:`apply`."""

    name: ClassVar[str]
    Config: ClassVar[type[Settings]]
    needs_calibration: ClassVar[bool] = True
    summary: ClassVar[str] = ""

    def __init__(self, config: Settings):
        self.config = config

    def budget(self, shape: Shape, sparsity: float) -> Budget:
        raise NotImplementedError

    def apply(self, model: nn.Module, found: list[Block], ids: torch.Tensor, budget: Budget) -> dict[str, Any]:
        """Edit ``model`` to remove ``budget``; returns what the method measured (for the report's ``details``)."""
        raise NotImplementedError


def check_budget(shape: Shape, sparsity: float, budget: Budget, name: str) -> Budget:
    """Refuse a budget that leaves a block without FFN neurons or removes every block."""
    if budget.neurons >= shape.width:
        raise SparsityError(
            f"{name} at sparsity {sparsity:g} would remove all {shape.width} FFN neurons of every block "
            f"({budget.attention} attention modules removed); use a lower sparsity"
        )
    if budget.blocks >= shape.blocks:
        raise SparsityError(f"{name} at sparsity {sparsity:g} would remove all {shape.blocks} blocks; use a lower sparsity")
    return budget


def neurons_for(shape: Shape, params: float, blocks: int) -> int:
    """FFN neurons to remove in each of ``blocks`` blocks so that they hold ``params`` fewer parameters (nearest count)."""
    return max(0, round(params / (blocks * shape.neuron)))
