"""``bitmask`` (compressed-tensors ``sparse-bitmask``): any sparsity, the non-zero values plus a packed mask.

Under ``<module>.``: ``shape`` int64 ``[2]``; ``compressed`` the non-zero values in row-major order
(1-D, the weight's dtype); ``bitmask`` uint8 ``[rows, ceil(cols/8)]``, 1 = non-zero, bits packed
little-endian (``numpy.packbits(mask, axis=-1, bitorder="little")``); ``row_offsets`` int64
``[rows]``, the index in ``compressed`` of each row's first value.
"""

from __future__ import annotations

import torch

from ..errors import CheckpointError
from .base import Format, pack_bits, register, unpack_bits

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


def decompress(parts: dict[str, torch.Tensor], name: str = "") -> torch.Tensor:
    """Rebuild the dense weight from a values + bit mask layout (bitmask or N:M), checking that the parts agree."""
    missing = {"shape", "compressed", "bitmask"} - set(parts)
    if missing:
        raise CheckpointError(f"{name}: compressed weight lacks {', '.join(sorted(missing))}")
    shape = [int(v) for v in parts["shape"].flatten().tolist()]
    values, packed = parts["compressed"], parts["bitmask"]
    if len(shape) != 2 or packed.dtype != torch.uint8 or list(packed.shape) != [shape[0], (shape[1] + 7) // 8]:
        raise CheckpointError(f"{name}: bitmask {list(packed.shape)} does not fit shape {shape}")
    mask = unpack_bits(packed, shape[1])
    if mask.sum().item() != values.numel():
        raise CheckpointError(f"{name}: bitmask marks {mask.sum().item()} values but {values.numel()} are stored")
    if "row_offsets" in parts:
        counts = mask.sum(1)
        if not torch.equal(parts["row_offsets"].to(torch.int64), counts.cumsum(0) - counts):
            raise CheckpointError(f"{name}: row_offsets disagree with the bitmask")
    weight = torch.zeros(shape, dtype=values.dtype)
    weight[mask] = values.flatten()
    return weight


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

    def config_block(self):
        return {"format": CT_FORMAT, "sparsity_structure": "unstructured"}
