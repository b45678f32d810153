"""Compact sparse checkpoints: each format is one registered class (:mod:`.base`); this module writes and reads checkpoints with them.

:func:`compress_checkpoint` rewrites a saved model's shards, replacing each pruned ``<module>.weight``
by the format's tensors, and records the format in ``config.json`` as
``quantization_config = {"quant_method": "compressed-tensors", "format": "dense", "sparsity_config":
{"format": ..., "sparsity_structure": ..., "targets": [...], "global_sparsity": ..., ...}}``
(the legacy compressed-tensors layout). :func:`read_state` yields the dense tensors back, one
matrix at a time, with the format named there. Every module of this package is imported here, so
a new format is one new file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from ..registry import import_submodules
from .base import FORMATS, Format, get_format, register, tensor_bytes

import_submodules(__name__, __path__)

INDEX = "model.safetensors.index.json"

__all__ = ["FORMATS", "INDEX", "Format", "compress_checkpoint", "get_format", "read_state", "register", "shard_files", "sparsity_config"]


def shard_files(directory: Path) -> list[Path]:
    index = directory / INDEX
    if index.is_file():
        return [directory / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    single = directory / "model.safetensors"
    return [single] if single.is_file() else []


def compress_checkpoint(directory: Path, fmt: Format, targets: Iterable[str]) -> dict:
    """Rewrite the safetensors of a saved model in place, storing ``targets`` (``<module>.weight`` keys) as ``fmt``.

    Works one shard at a time. Returns the ``sparsity_config`` written into ``config.json``, with the
    bytes of the targeted matrices before (dense) and after.
    """
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
            parts = fmt.compress(tensor, module)
            before += tensor.numel() * tensor.element_size()
            after += tensor_bytes(parts)
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
        **fmt.config_block(),
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


def sparsity_config(quant: dict | None, where: str = "") -> dict | None:
    """The ``sparsity_config`` of a compact checkpoint's ``quantization_config`` (None for an ordinary checkpoint)."""
    if not isinstance(quant, dict) or quant.get("quant_method") != "compressed-tensors" or not quant.get("sparsity_config"):
        return None
    if quant.get("config_groups"):
        raise CheckpointError(f"{where}: quantized compressed-tensors checkpoints are not supported, only sparse ones")
    return quant["sparsity_config"]


def checkpoint_format(block: dict, where: str = "") -> Format:
    """The registered format that wrote the ``sparsity_config`` ``block``."""
    for cls in FORMATS.values():
        found = cls.from_config(block)
        if found is not None:
            return found
    raise CheckpointError(f"{where}: unknown sparse checkpoint format {block.get('format')!r}")


def read_state(directory: Path, block: dict) -> Iterable[tuple[str, torch.Tensor]]:
    """``(key, dense tensor)`` for every tensor of a compact checkpoint (``block``: its ``sparsity_config``), one matrix at a time."""
    fmt = checkpoint_format(block, str(directory))
    shards = shard_files(directory)
    if not shards:
        raise CheckpointError(f"{directory}: no model.safetensors or {INDEX}")
    compressed = {f"{t}.weight" for t in block.get("targets", [])}
    for shard in shards:
        try:
            with safe_open(shard, "pt") as f:
                keys = list(f.keys())
                grouped: dict[str, list[str]] = {}
                for key in keys:
                    module, _, part = key.rpartition(".")
                    if f"{module}.weight" in compressed and part in fmt.parts:
                        grouped.setdefault(module, []).append(part)
                    else:
                        yield key, f.get_tensor(key)
                for module, parts in grouped.items():
                    yield f"{module}.weight", fmt.decompress({p: f.get_tensor(f"{module}.{p}") for p in parts}, module)
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{shard}: corrupt or truncated safetensors file ({err})") from err
