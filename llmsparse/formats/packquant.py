"""``pack-quantized``: compressed-tensors' W4A16/W8A16 layout, which stock ``transformers`` (with compressed-tensors) and vLLM load.

Under ``<module>.``: ``weight_packed`` int32 ``[out, in·bits/32]`` (codes stored offset-binary,
``q + 2^(b-1)``, least-significant bits first: word ``j`` holds elements ``(32/b)·j ..``, element
``k`` of a word in bits ``b·k .. b·k+b-1``); ``weight_scale`` ``[out, groups]`` in the weight's
dtype; ``weight_shape`` int64 ``[2]``. The values are ``q·scale``: exactly the weights llmsparse holds in
memory after ``--quantize``, pruned ones exactly zero. Symmetric grids only: compressed-tensors'
asymmetric layout adds ``weight_zero_point`` packed along dim 0, which transformers 5.24 +
compressed-tensors 0.20 refuse at load (the model expects ``[out, groups]``), so it is not written.

``config.json`` gets compressed-tensors' ``quantization_config`` (``config_groups`` targeting
``Linear``, every Linear that was not quantized in ``ignore``) and no ``sparsity_config`` (recent
vLLM refuses one); the sparsity is recorded in ``llmsparse.json`` and the model card.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.quantgrid import Grid, QuantState, dequantize, state_of
from ..errors import CheckpointError
from .base import Format, QuantLayout, register

CT_FORMAT = "pack-quantized"


def runtime_block(quant: dict | None, files: list) -> dict | None:
    """A ``sparsity_config``-style block (format, targets) for loading a pack-quantized checkpoint into the sparse runtime, else None.

    ``quant`` is the checkpoint's ``quantization_config``; the targets are the modules whose
    ``weight_packed`` the safetensors ``files`` hold (read from their headers).
    """
    if not isinstance(quant, dict) or quant.get("quant_method") != "compressed-tensors" or quant.get("format") != CT_FORMAT:
        return None
    from safetensors import safe_open

    targets = []
    for file in files:
        with safe_open(str(file), "pt") as f:
            targets += [key.rpartition(".")[0] for key in f.keys() if key.endswith(".weight_packed")]
    return {"format": CT_FORMAT, "targets": sorted(targets)}


def pack_int32(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed ``bits``-bit codes ``[rows, cols]`` -> int32 ``[rows, cols·bits/32]`` (offset binary, low bits first)."""
    per = 32 // bits
    rows, cols = codes.shape
    padded = torch.zeros(rows, -(-cols // per) * per, dtype=torch.int64)
    padded[:, :cols] = codes.to(torch.int64) + (1 << (bits - 1))
    shifts = torch.arange(per, dtype=torch.int64) * bits
    words = (padded.view(rows, -1, per) << shifts).sum(-1)
    return torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)


def unpack_int32(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """The inverse of :func:`pack_int32`: int8 codes ``[rows, cols]``."""
    per = 32 // bits
    shifts = torch.arange(per, dtype=torch.int64) * bits
    values = (packed.to(torch.int64).unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return (values.flatten(1)[:, :cols] - (1 << (bits - 1))).to(torch.int8)


@register
class PackQuantized(Format):
    name = CT_FORMAT
    parts = ("weight_packed", "weight_scale", "weight_shape")
    stock = True
    quantized = True
    note = "compressed-tensors `pack-quantized` (integer codes packed in int32, group scales); loads with `transformers` + `compressed-tensors` and vLLM"

    def __init__(self, config=None):
        super().__init__(config)
        self.states: dict[str, QuantState] = {}
        self.unquantized: list[str] = []

    def check_module(self, name: str, module: nn.Module) -> None:
        state = state_of(module)
        if state is None:
            raise CheckpointError(f"--format {CT_FORMAT} stores quantized weights, but {name} is not quantized: prune with --quantize int4|int8")
        if not state.grid.symmetric:
            raise CheckpointError(
                f"--format {CT_FORMAT} is written for symmetric grids only: transformers 5 + compressed-tensors 0.20 refuse packed "
                "zero points at load (size mismatch); quantize with --symmetric or save with --format bitmask"
            )

    def prepare(self, model: nn.Module, names: list[str]) -> None:
        chosen = set(names)
        self.states = {n: state_of(m) for n, m in model.named_modules() if n in chosen}
        self.unquantized = sorted(n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in chosen)
        grids = {s.grid for s in self.states.values()}
        if len(grids) > 1:
            raise CheckpointError(f"--format {CT_FORMAT} needs one quantization grid for all matrices, found {len(grids)}")

    def compress(self, weight, name):
        state = self.states[name]
        return {
            "weight_packed": pack_int32(state.codes(weight), state.grid.bits),
            "weight_scale": state.scale.to(weight.dtype),
            "weight_shape": torch.tensor(list(weight.shape), dtype=torch.int64),
        }

    @classmethod
    def from_config(cls, block):
        return cls() if block.get("format") == CT_FORMAT else None

    def layout(self, parts, name):
        """The dense quantized layout the runtime's kernels read: the packed words as bytes, each row padded to whole words."""
        rows, cols, bits = self._checked(parts, name)
        scale = parts["weight_scale"]
        return QuantLayout(rows, cols, bits, parts["weight_packed"].contiguous().view(torch.uint8).reshape(-1), scale.contiguous())

    def decompress(self, parts, name):
        rows, cols, bits = self._checked(parts, name)
        codes = unpack_int32(parts["weight_packed"], bits, cols)
        scale = parts["weight_scale"]
        grid = Grid(bits, cols // scale.shape[1], True)
        return dequantize(codes, scale.float(), torch.zeros(scale.shape), grid).to(scale.dtype)

    @staticmethod
    def _checked(parts: dict[str, torch.Tensor], name: str) -> tuple[int, int, int]:
        """``(rows, cols, bits)`` of a packed matrix, after checking that its parts agree."""
        missing = {"weight_packed", "weight_scale", "weight_shape"} - set(parts)
        if missing:
            raise CheckpointError(f"{name}: packed weight lacks {', '.join(sorted(missing))}")
        rows, cols = (int(v) for v in parts["weight_shape"].tolist())
        scale, packed = parts["weight_scale"], parts["weight_packed"]
        bits = 4 if packed.dim() == 2 and cols and packed.shape[1] == -(-cols // 8) else 8
        if packed.dtype != torch.int32 or list(packed.shape) != [rows, -(-cols * bits // 32)] or scale.dim() != 2 or scale.shape[0] != rows or cols % scale.shape[1]:
            raise CheckpointError(f"{name}: packed weight {list(packed.shape)} does not fit shape {[rows, cols]}")
        return rows, cols, bits

    def quantization_config(self) -> dict:
        """compressed-tensors' ``quantization_config`` for the matrices :meth:`prepare` saw."""
        grid = next(iter(self.states.values())).grid
        weights = {
            "num_bits": grid.bits,
            "type": "int",
            "symmetric": True,
            "strategy": "channel" if grid.group_size == -1 else "group",
            "group_size": None if grid.group_size == -1 else grid.group_size,
            "dynamic": False,
        }
        return {
            "quant_method": "compressed-tensors",
            "format": CT_FORMAT,
            "quantization_status": "compressed",
            "config_groups": {"group_0": {"targets": ["Linear"], "format": CT_FORMAT, "weights": weights}},
            "ignore": self.unquantized,
        }
