"""``bitmask`` (compressed-tensors ``sparse-bitmask``): any sparsity, the non-zero values plus a packed mask.

Under ``<module>.``: ``shape`` int64 ``[2]``; ``compressed`` the non-zero values in row-major order
(1-D, the weight's dtype); ``bitmask`` uint8 ``[rows, ceil(cols/8)]``, 1 = non-zero, bits packed
little-endian (``numpy.packbits(mask, axis=-1, bitorder="little")``); ``row_offsets`` int64
``[rows]``, the index in ``compressed`` of each row's first value. A quantized matrix (``--quantize``)
stores, instead of ``compressed``, ``codes`` (the kept weights' integer codes in row-major order,
packed into int32 as pack-quantized packs them), ``quant_bits`` ``[1]``, ``scale`` ``[rows, groups]``
(the weight's dtype) and, for an asymmetric grid, ``zero_point`` int8 ``[rows, groups]``.
"""

from __future__ import annotations

import torch

from ..core.quantgrid import QuantState, state_of
from ..errors import CheckpointError
from .base import Format, QuantLayout, SparseLayout, pack_bits, register, unpack_bits
from .packquant import pack_int32, unpack_int32

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


def quantized_compress(weight: torch.Tensor, state: QuantState) -> dict[str, torch.Tensor]:
    """A quantized matrix: the bit mask plus its kept weights' integer codes (packed as in pack-quantized) and the group scales."""
    parts = bitmask_compress(weight)
    del parts["compressed"]
    kept = state.codes(weight)[weight != 0]
    parts["codes"] = pack_int32(kept.unsqueeze(0), state.grid.bits)
    parts["quant_bits"] = torch.tensor([state.grid.bits])
    parts["scale"] = state.scale.to(weight.dtype)
    if not state.grid.symmetric:
        parts["zero_point"] = state.zero_point.to(torch.int8)
    return parts


QUANT_PARTS = ("shape", "bitmask", "codes", "quant_bits", "scale")


def quant_checked(parts: dict[str, torch.Tensor], name: str = "") -> tuple[list[int], int, torch.Tensor]:
    """``(shape, bits, kept per row)`` of a quantized bitmask matrix, after checking that its parts agree."""
    missing = set(QUANT_PARTS) - set(parts)
    if missing:
        raise CheckpointError(f"{name}: quantized weight lacks {', '.join(sorted(missing))}")
    shape = [int(v) for v in parts["shape"].flatten().tolist()]
    scale, bits = parts["scale"], int(parts["quant_bits"].flatten()[0])
    if len(shape) != 2 or bits not in (4, 8) or scale.dim() != 2 or scale.shape[0] != shape[0] or scale.shape[1] < 1 or shape[1] % scale.shape[1]:
        raise CheckpointError(f"{name}: quantization scales {list(scale.shape)} do not fit shape {shape} at {bits} bits")
    packed = parts["bitmask"]
    if packed.dtype != torch.uint8 or list(packed.shape) != [shape[0], (shape[1] + 7) // 8]:
        raise CheckpointError(f"{name}: bitmask {list(packed.shape)} does not fit shape {shape}")
    counts = row_counts(packed)
    kept = int(counts.sum())
    if parts["codes"].numel() != -(-kept * bits // 32):
        raise CheckpointError(f"{name}: {parts['codes'].numel()} code words for {kept} kept weights at {bits} bits")
    zero = parts.get("zero_point")
    if zero is not None and (zero.dtype != torch.int8 or zero.shape != scale.shape):
        raise CheckpointError(f"{name}: zero_point {list(zero.shape)} does not fit scales {list(scale.shape)}")
    return shape, bits, counts


def quant_layout(parts: dict[str, torch.Tensor], name: str = "") -> QuantLayout:
    """The runtime layout of a quantized bitmask matrix: its codes, mask and scales as stored (never dequantized)."""
    (rows, cols), bits, counts = quant_checked(parts, name)
    codes = parts["codes"].contiguous().view(torch.uint8).reshape(-1)
    zero = parts.get("zero_point")
    return QuantLayout(rows, cols, bits, codes, parts["scale"].contiguous(), zero.contiguous() if zero is not None else None,
                       parts["bitmask"].contiguous(), counts.cumsum(0) - counts)


def with_values(parts: dict[str, torch.Tensor], name: str = "") -> dict[str, torch.Tensor]:
    """``parts`` with ``compressed`` (the kept values, the scale's dtype) rebuilt from quantized codes when it holds codes.

    Value ``(q - zp)·scale`` of its row and group, computed exactly as in memory, so the reload is bit-exact.
    """
    if "codes" not in parts:
        return parts
    (rows, cols), bits, _ = quant_checked(parts, name)
    scale = parts["scale"]
    where = unpack_bits(parts["bitmask"], cols).nonzero()
    codes = unpack_int32(parts["codes"].reshape(1, -1), bits, len(where))[0].float()
    group = where[:, 1] // (cols // scale.shape[1])
    zero = parts["zero_point"][where[:, 0], group].float() if "zero_point" in parts else 0.0
    values = ((codes - zero) * scale[where[:, 0], group].float()).to(scale.dtype)
    return {k: v for k, v in parts.items() if k not in ("codes", "quant_bits", "scale", "zero_point")} | {"compressed": values}


@register
class Bitmask(Format):
    name = "bitmask"
    parts = ("shape", "compressed", "bitmask", "row_offsets")
    extra_parts = ("codes", "quant_bits", "scale", "zero_point")
    note = "compact `sparse-bitmask` layout (values, or integer codes and group scales when quantized, packed bit mask, row offsets); load with `llmsparse.load_model`"

    def __init__(self, config=None):
        super().__init__(config)
        self.states: dict[str, QuantState] = {}

    @classmethod
    def from_config(cls, block):
        if block.get("format") != CT_FORMAT:
            return None
        return cls()

    def required(self, present):
        return QUANT_PARTS if "codes" in present else self.parts

    def config_block(self):
        block = {"format": CT_FORMAT, "sparsity_structure": "unstructured"}
        grids = {s.grid for s in self.states.values()}
        if grids:
            block["quantized"] = [{"bits": g.bits, "group_size": g.group_size, "symmetric": g.symmetric} for g in grids]
        return block

    def prepare(self, model, names):
        chosen = set(names)
        self.states = {n: s for n, m in model.named_modules() if n in chosen and (s := state_of(m)) is not None}

    def compress(self, weight, name):
        state = self.states.get(name)
        return bitmask_compress(weight) if state is None else quantized_compress(weight, state)

    def decompress(self, parts, name):
        return decompress(with_values(parts, name), name)

    def layout(self, parts, name):
        return quant_layout(parts, name) if "codes" in parts else sparse_layout(parts, name)
