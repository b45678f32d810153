"""The contract of a checkpoint format, its registry, and the bit packing the compact layouts share.

A format is one :class:`Format` subclass, decorated with :func:`register`: how one pruned matrix
is written (:meth:`~Format.compress`, the tensors stored under ``<module>.``) and read back
(:meth:`~Format.decompress`), how the sparse runtime computes from those tensors without
decompressing them (:meth:`~Format.layout`, optional), what it refuses before any work (:meth:`~Format.check`), the block
it adds to ``config.json`` (:meth:`~Format.config_block`, which also tells a reader which format a
checkpoint holds) and the sentence the model card says about it (``note``). ``--format NAME``,
``save_pruned(format=NAME)``, ``llmsparse methods`` and :func:`llmsparse.load_model` find it by
name; a format family such as N:M also answers to names it parses (:meth:`~Format.parse`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..core.masks import Pattern
from ..errors import unknown_name
from ..registry import Registry


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Bool ``[rows, cols]`` -> uint8 ``[rows, ceil(cols/8)]``, little-endian bit order within each byte."""
    return torch.from_numpy(np.packbits(mask.numpy(), axis=-1, bitorder="little"))


def unpack_bits(packed: torch.Tensor, cols: int) -> torch.Tensor:
    return torch.from_numpy(np.unpackbits(packed.numpy(), axis=-1, count=cols, bitorder="little").astype(bool))


def tensor_bytes(parts: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in parts.values())


@dataclass
class SparseLayout:
    """One stored matrix ``[rows, cols]`` as the sparse runtime's kernels read it: a bit mask and the kept values.

    Row ``r`` keeps the columns whose bits are set in ``bitmask[r]`` (little-endian, as
    :func:`pack_bits` writes them); their values are ``values[start : start + popcount]`` in column
    order, where ``start`` is ``row_offsets[r]``, or ``r * values.numel() // rows`` when
    ``row_offsets`` is None (every row keeps the same count, as in N:M). The tensors are the
    stored ones (views, no copies), so the kernels read exactly the bytes the checkpoint holds.
    """

    rows: int
    cols: int
    values: torch.Tensor  # 1-D
    bitmask: torch.Tensor  # uint8 [rows, ceil(cols/8)]
    row_offsets: torch.Tensor | None = None  # int64 [rows]

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the values."""
        return self.values.dtype


@dataclass
class QuantLayout:
    """One quantized matrix ``[rows, cols]`` as the runtime's kernels read it: integer codes, group scales, and a mask when sparse.

    ``codes`` uint8, the stored int32 words viewed as bytes: ``bits``-bit codes in offset binary
    (``q + 2^(bits-1)``, low nibble first), as :func:`~llmsparse.formats.packquant.pack_int32` packs
    them. Sparse (``bitmask`` set): one stream of the kept weights' codes in row-major order, row
    ``r``'s starting at code ``row_offsets[r]``. Dense (``bitmask`` None): row ``r``'s codes start at
    byte ``r * codes.numel() // rows``. Value ``(q - zero_point)·scale`` with ``scale`` (float dtype)
    and ``zero_point`` (int8, None when symmetric) ``[rows, groups]``, a group being ``cols // groups``
    consecutive columns. Views of the stored tensors, no copies.
    """

    rows: int
    cols: int
    bits: int
    codes: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor | None = None
    bitmask: torch.Tensor | None = None
    row_offsets: torch.Tensor | None = None

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the dequantized values take (the scales')."""
        return self.scale.dtype


@dataclass
class NoOptions:
    """The format has no options."""


class Format:
    """One way of storing the pruned matrices of a checkpoint. Subclasses set ``name`` and ``note``."""

    name: ClassVar[str]
    Config: ClassVar[type] = NoOptions
    compact: ClassVar[bool] = True  # False: matrices stay ordinary ``.weight`` tensors
    quantized: ClassVar[bool] = False  # True: stores integer codes, so only a run with --quantize can write it
    stock: ClassVar[bool] = False  # True: a layout stock tools read (stock shard names, the format's own quantization_config)
    parts: ClassVar[tuple[str, ...]] = ()  # the tensor names a compact format stores under ``<module>.``
    extra_parts: ClassVar[tuple[str, ...]] = ()  # names a matrix may store instead (quantized codes): read back, not run sparse
    note: ClassVar[str]  # what the model card says about the stored weights

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.Config()

    @property
    def label(self) -> str:
        """The name this instance answers to (``2:4`` for the N:M family)."""
        return self.name

    @classmethod
    def parse(cls, text: str) -> Format | None:
        """An instance for a name outside the registry's keys (a family's members), else None."""
        return None

    @classmethod
    def from_config(cls, block: dict) -> Format | None:
        """The instance that wrote ``config_block`` ``block`` (from a saved ``config.json``), else None."""
        return None

    def check(self, pattern: Pattern) -> None:
        """Refuse, before any pruning, a run whose matrices this format cannot store."""

    def check_module(self, name: str, module: nn.Module) -> None:
        """Refuse a matrix module this format cannot store (e.g. a transposed ``Conv1D``)."""

    def prepare(self, model: nn.Module, names: list[str]) -> None:
        """Read what the format needs from the in-memory model before its matrices ``names`` are written (e.g. quantization grids)."""

    def quantization_config(self) -> dict[str, Any]:
        """A stock format's ``quantization_config`` for ``config.json``."""
        raise NotImplementedError

    def compress(self, weight: torch.Tensor, name: str) -> dict[str, torch.Tensor]:
        """The tensors stored under ``<name>.`` for the ``[rows, cols]`` stored weight."""
        raise NotImplementedError

    def decompress(self, parts: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        """The stored weight rebuilt from :meth:`compress`'s tensors, checking that they agree."""
        raise NotImplementedError

    def required(self, present: set[str]) -> tuple[str, ...]:
        """The parts a matrix that stores ``present`` must have (a quantized matrix stores codes instead of values)."""
        return self.parts

    def layout(self, parts: dict[str, torch.Tensor], name: str) -> SparseLayout | QuantLayout | None:
        """:meth:`compress`'s tensors as a :class:`SparseLayout` (checked as :meth:`decompress` checks them), or None:
        this format has no sparse runtime, and its matrices are loaded dense."""
        return None

    @property
    def runs_sparse(self) -> bool:
        """True when the format implements :meth:`layout`, so its matrices can stay compressed at run time."""
        return type(self).layout is not Format.layout

    def config_block(self) -> dict[str, Any]:
        """Format-specific entries of the ``sparsity_config`` written into ``config.json``."""
        return {}


#: Checkpoint formats by name.
FORMATS: Registry[Format] = Registry("format")
register = FORMATS.register


def get_format(text: str) -> Format:
    """The format called ``text`` (``dense``, ``bitmask``, an N:M pattern such as ``2:4``, or any registered name)."""
    if text in FORMATS:
        return FORMATS.create(text)
    for cls in FORMATS.values():
        found = cls.parse(text)
        if found is not None:
            return found
    raise unknown_name("format", text, [*FORMATS, "N:M such as 2:4"])
