"""Compact sparse checkpoints in the legacy compressed-tensors layout, written and read by our own code.

Each compressed matrix ``<module>.weight`` (stored ``[rows, cols]``) is replaced by tensors under
``<module>.``:

* ``bitmask`` format (compressed-tensors ``sparse-bitmask``):
  ``shape`` int64 ``[2]``; ``compressed`` the non-zero values in row-major order (1-D, the weight's
  dtype); ``bitmask`` uint8 ``[rows, ceil(cols/8)]``, 1 = non-zero, bits packed little-endian
  (``numpy.packbits(mask, axis=-1, bitorder="little")``); ``row_offsets`` int64 ``[rows]``, the index
  in ``compressed`` of each row's first value.
* ``N:M`` formats (``2:4`` is compressed-tensors ``sparse-24-bitmask``): ``shape`` int64 ``[2, 1]``;
  ``compressed`` ``[rows, cols*(M-N)/M]``, the M-N kept values of every group of M columns in order;
  ``bitmask`` uint8 ``[rows, ceil(cols/8)]`` marking the kept positions (exactly M-N per group; a group with
  extra zeros keeps some zeros).

``config.json`` gets ``quantization_config = {"quant_method": "compressed-tensors", "sparsity_config":
{"format": ..., "sparsity_structure": ..., "targets": [...], "global_sparsity": ...}}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .masks import Pattern

FORMATS = ("dense", "bitmask", "2:4")  # any other N:M (e.g. 4:8) is accepted as well
CT_FORMAT = {"bitmask": "sparse-bitmask", "2:4": "sparse-24-bitmask"}
NM_FORMAT = "sparse-nm-bitmask"  # llmsparse's name for N:M other than 2:4 (same layout as 2:4)
PARTS = ("shape", "compressed", "bitmask", "row_offsets")
INDEX = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A sparse checkpoint or format request that cannot be honoured (corrupt, truncated, not N:M, ...)."""


def parse_format(text: str) -> tuple[str, Pattern | None]:
    """``'dense'``, ``'bitmask'`` or an N:M string; returns ``(name, pattern or None)``."""
    if text in ("dense", "bitmask"):
        return text, None
    try:
        pattern = Pattern.parse(text)
    except ValueError:
        pattern = None
    if pattern is None or not pattern.structured:
        raise CheckpointError(f"unknown format {text!r}; choose dense, bitmask or an N:M pattern such as 2:4")
    return str(pattern), pattern


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Bool ``[rows, cols]`` -> uint8 ``[rows, ceil(cols/8)]``, little-endian bit order within each byte."""
    return torch.from_numpy(np.packbits(mask.numpy(), axis=-1, bitorder="little"))


def unpack_bits(packed: torch.Tensor, cols: int) -> torch.Tensor:
    return torch.from_numpy(np.unpackbits(packed.numpy(), axis=-1, count=cols, bitorder="little").astype(bool))


def bitmask_compress(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    mask = weight != 0
    counts = mask.sum(1)
    return {
        "shape": torch.tensor(list(weight.shape)),
        "compressed": weight[mask],
        "bitmask": pack_bits(mask),
        "row_offsets": counts.cumsum(0) - counts,
    }


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


def decompress(parts: dict[str, torch.Tensor], name: str = "") -> torch.Tensor:
    """Rebuild the dense weight from either layout, checking that the parts agree."""
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


def compressed_bytes(parts: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in parts.values())


def shard_files(directory: Path) -> list[Path]:
    index = directory / INDEX
    if index.is_file():
        return [directory / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    single = directory / "model.safetensors"
    return [single] if single.is_file() else []


def compress_checkpoint(directory: Path, fmt: str, targets: Iterable[str]) -> dict:
    """Rewrite the safetensors of a saved model in place, compressing ``targets`` (``<module>.weight`` keys).

    Works one shard at a time. Returns the ``sparsity_config`` written into ``config.json``, with the
    bytes of the targeted matrices before (dense) and after.
    """
    name, pattern = parse_format(fmt)
    targets = set(targets)
    before = after = zeros = numel = 0
    index_path = directory / INDEX
    index = json.loads(index_path.read_text()) if index_path.is_file() else None
    for shard in shard_files(directory):
        tensors = load_file(shard)
        out: dict[str, torch.Tensor] = {}
        for key, tensor in tensors.items():
            if key not in targets:
                out[key] = tensor
                continue
            module = key.removesuffix(".weight")
            parts = nm_compress(tensor, pattern, module) if pattern else bitmask_compress(tensor)
            before += tensor.numel() * tensor.element_size()
            after += compressed_bytes(parts)
            zeros += int((tensor == 0).sum())
            numel += tensor.numel()
            for part, value in parts.items():
                out[f"{module}.{part}"] = value.contiguous()
                if index is not None:
                    index["weight_map"][f"{module}.{part}"] = shard.name
            if index is not None:
                del index["weight_map"][key]
        save_file(out, shard, metadata={"format": "pt"})
    if index is not None:
        index_path.write_text(json.dumps(index, indent=2) + "\n")
    config = {
        "format": CT_FORMAT.get(name, NM_FORMAT),
        "sparsity_structure": name if pattern else "unstructured",
        "global_sparsity": zeros / numel if numel else 0.0,
        "targets": sorted(t.removesuffix(".weight") for t in targets),
        "ignore": [],
        "registry_requires_subclass": False,
        "bytes_dense": before,
        "bytes_compressed": after,
    }
    config_path = directory / "config.json"
    data = json.loads(config_path.read_text())
    data["quantization_config"] = {"quant_method": "compressed-tensors", "format": "dense", "sparsity_config": config}
    config_path.write_text(json.dumps(data, indent=2) + "\n")
    return config


def sparsity_config(directory: Path) -> dict | None:
    """The ``sparsity_config`` of a compact checkpoint (None for an ordinary one)."""
    config_path = directory / "config.json"
    if not config_path.is_file():
        return None
    quant = json.loads(config_path.read_text()).get("quantization_config") or {}
    return quant["sparsity_config"] if is_sparse_only(quant, str(directory)) else None


def is_sparse_only(quant: dict, where: str = "") -> bool:
    """True for a compressed-tensors ``quantization_config`` that only describes sparsity (what we read)."""
    if not isinstance(quant, dict) or quant.get("quant_method") != "compressed-tensors" or not quant.get("sparsity_config"):
        return False
    if quant.get("config_groups"):
        raise CheckpointError(f"{where}: quantized compressed-tensors checkpoints are not supported, only sparse ones")
    return True


def read_state(directory: Path) -> Iterable[tuple[str, torch.Tensor]]:
    """``(key, dense tensor)`` for every tensor of a compact checkpoint, decompressing one matrix at a time."""
    shards = shard_files(directory)
    if not shards:
        raise CheckpointError(f"{directory}: no model.safetensors or {INDEX}")
    for shard in shards:
        try:
            with safe_open(shard, "pt") as f:
                keys = list(f.keys())
                prefixes = {k.rsplit(".", 1)[0] for k in keys if k.endswith((".compressed", ".bitmask"))}
                for key in keys:
                    module, _, part = key.rpartition(".")
                    if module in prefixes and part in PARTS:
                        if part == "compressed":
                            parts = {p: f.get_tensor(f"{module}.{p}") for p in PARTS if f"{module}.{p}" in keys}
                            yield f"{module}.weight", decompress(parts, module)
                    else:
                        yield key, f.get_tensor(key)
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{shard}: corrupt or truncated safetensors file ({err})") from err
