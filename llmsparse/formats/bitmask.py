"""``bitmask`` (compressed-tensors ``sparse-bitmask``): any sparsity, the non-zero values plus a packed mask.

Under ``<module>.``: ``shape`` int64 ``[2]``; ``compressed`` the non-zero values in row-major order
(1-D, the weight's dtype); ``bitmask`` uint8 ``[rows, ceil(cols/8)]``, 1 = non-zero, bits packed
little-endian (``numpy.packbits(mask, axis=-1, bitorder="little")``); ``row_offsets`` int64
``[rows]``, the index in ``compressed`` of each row's first value.
"""

from __future__ import annotations

import torch

from ..errors import CheckpointError
from .base import Format, SparseLayout, pack_bits, register, unpack_bits

CT_FORMAT = "sparse-bitmask"


def bitmask_compress(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    mask = weight != 0
    counts = mask.sum(1)
    return {
        "shape": torch.tensor(list(weight.shape)),
        "compressed": weight[mask],
        "bitmask": pack_bits(mask),
        "row_offsets": counts.cumsum(0) - counts,
    }


def row_counts(packed: torch.Tensor) -> torch.Tensor:
    """Set bits per row of a packed uint8 mask (int64 ``[rows]``)."""
    counts = torch.zeros(packed.shape[0], dtype=torch.int64)
    for bit in range(8):
        counts += ((packed >> bit) & 1).sum(1)
    return counts


def checked(parts: dict[str, torch.Tensor], name: str = "") -> tuple[list[int], torch.Tensor]:
    """``(shape, kept values per row)`` of a values + bit mask layout (bitmask or N:M), after checking that the parts agree."""
    missing = {"shape", "compressed", "bitmask"} - set(parts)
    if missing:
        raise CheckpointError(f"{name}: compressed weight lacks {', '.join(sorted(missing))}")
    shape = [int(v) for v in parts["shape"].flatten().tolist()]
    values, packed = parts["compressed"], parts["bitmask"]
    if len(shape) != 2 or packed.dtype != torch.uint8 or list(packed.shape) != [shape[0], (shape[1] + 7) // 8]:
        raise CheckpointError(f"{name}: bitmask {list(packed.shape)} does not fit shape {shape}")
    if shape[1] % 8 and packed.numel() and bool((packed[:, -1] >> (shape[1] % 8)).any()):
        raise CheckpointError(f"{name}: bitmask marks columns past the matrix's {shape[1]}")
    counts = row_counts(packed)
    if counts.sum().item() != values.numel():
        raise CheckpointError(f"{name}: bitmask marks {counts.sum().item()} values but {values.numel()} are stored")
    if "row_offsets" in parts and not torch.equal(parts["row_offsets"].to(torch.int64), counts.cumsum(0) - counts):
        raise CheckpointError(f"{name}: row_offsets disagree with the bitmask")
    return shape, counts


def decompress(parts: dict[str, torch.Tensor], name: str = "") -> torch.Tensor:
    """Rebuild the dense weight from a values + bit mask layout (bitmask or N:M), checking that the parts agree."""
    shape, _ = checked(parts, name)
    values = parts["compressed"]
    weight = torch.zeros(shape, dtype=values.dtype)
    weight[unpack_bits(parts["bitmask"], shape[1])] = values.flatten()
    return weight


def sparse_layout(parts: dict[str, torch.Tensor], name: str = "", uniform: bool = False) -> SparseLayout:
    """The runtime layout of a values + bit mask matrix; ``uniform``: every row keeps the same count (N:M), no offsets needed."""
    shape, counts = checked(parts, name)
    offsets = None
    if uniform:
        if counts.numel() and not bool((counts == counts[0]).all()):
            raise CheckpointError(f"{name}: rows keep different numbers of values, which an N:M layout cannot")
    else:
        stored = parts.get("row_offsets")
        offsets = stored.to(torch.int64).contiguous() if stored is not None else counts.cumsum(0) - counts
    return SparseLayout(shape[0], shape[1], parts["compressed"].reshape(-1), parts["bitmask"].contiguous(), offsets)


@register
class Bitmask(Format):
    name = "bitmask"
    parts = ("shape", "compressed", "bitmask", "row_offsets")
    note = "compact `sparse-bitmask` layout (values, packed bit mask, row offsets); load with `llmsparse.load_model`"

    @classmethod
    def from_config(cls, block):
        return cls() if block.get("format") == CT_FORMAT else None

    def compress(self, weight, name):
        return bitmask_compress(weight)

    def decompress(self, parts, name):
        return decompress(parts, name)

    def layout(self, parts, name):
        return sparse_layout(parts, name)

    def config_block(self):
        return {"format": CT_FORMAT, "sparsity_structure": "unstructured"}
