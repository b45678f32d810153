"""N:M formats (``2:4`` is compressed-tensors ``sparse-24-bitmask``): the M-N kept values of every group of M.

Under ``<module>.``: ``shape`` int64 ``[2, 1]``; ``compressed`` ``[rows, cols*(M-N)/M]``, the kept
values of every group in order; ``bitmask`` uint8 ``[rows, ceil(cols/8)]`` marking the kept
positions (exactly M-N per group; a group with extra zeros keeps some zeros). Any N:M other than
2:4 is written as llmsparse's ``sparse-nm-bitmask`` (same layout).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.masks import Pattern
from ..errors import CheckpointError, SparsityError
from .base import Format, pack_bits, register
from .bitmask import decompress, sparse_layout

CT_24, CT_NM = "sparse-24-bitmask", "sparse-nm-bitmask"


def nm_compress(weight: torch.Tensor, pattern: Pattern, name: str = "") -> dict[str, torch.Tensor]:
    rows, cols = weight.shape
    if cols % pattern.m:
        raise CheckpointError(f"{name}: {cols} columns do not divide into groups of {pattern.m}")
    keep = pattern.m - pattern.n
    groups = (weight != 0).view(rows, -1, pattern.m)
    if (groups.sum(-1) > keep).any():
        raise CheckpointError(f"{name} is not {pattern} sparse: some group of {pattern.m} has more than {keep} non-zeros")
    # keep every non-zero, then the first zeros of the group, so each group keeps exactly M-N positions
    order = torch.argsort((~groups).to(torch.int8), dim=-1, stable=True)[..., :keep]
    mask = torch.zeros_like(groups).scatter_(-1, order, True).view(rows, cols)
    return {"shape": torch.tensor([rows, cols]).reshape(-1, 1), "compressed": weight[mask].view(rows, -1), "bitmask": pack_bits(mask)}


@dataclass
class NMConfig:
    pattern: str = field(default="2:4", metadata={"help": "N zeros in every M consecutive inputs"})


@register
class NM(Format):
    name = "N:M"
    parts = ("shape", "compressed", "bitmask")
    Config = NMConfig
    note = "compact N:M layout (kept values and a packed position mask); load with `llmsparse.load_model`"

    @property
    def pattern(self) -> Pattern:
        return Pattern.parse(self.config.pattern)

    @property
    def label(self) -> str:
        return str(self.pattern)

    @classmethod
    def parse(cls, text):
        try:
            pattern = Pattern.parse(text)
        except SparsityError:
            return None
        return cls(NMConfig(str(pattern))) if pattern.structured else None

    @classmethod
    def from_config(cls, block):
        if block.get("format") not in (CT_24, CT_NM):
            return None
        return cls(NMConfig(block.get("sparsity_structure") or "2:4"))

    def check(self, pattern):
        if pattern != self.pattern:
            raise CheckpointError(
                f"--format {self.label} stores {self.label} sparse matrices, but this run prunes {pattern}: use --pattern {self.label} or --format bitmask"
            )

    def check_module(self, name, module):
        if not isinstance(module, nn.Linear):
            raise CheckpointError(f"N:M formats store nn.Linear weights; {name} is not one (use format 'bitmask')")

    def compress(self, weight, name):
        return nm_compress(weight, self.pattern, name)

    def decompress(self, parts, name):
        return decompress(parts, name)

    def layout(self, parts, name):
        return sparse_layout(parts, name, uniform=True)

    def config_block(self):
        return {"format": CT_24 if self.label == "2:4" else CT_NM, "sparsity_structure": self.label}
