"""Writing and reading compact sparse checkpoints with a registered format (:mod:`llmsparse.formats.base`).

:func:`compress_checkpoint` rewrites a saved model's shards, replacing each pruned ``<module>.weight``
by the format's tensors. The shards are renamed ``llmsparse*.safetensors`` (a name no stock loader
looks for) and ``config.json`` records ``quantization_config = {"quant_method": "llmsparse",
"weights": <file>, "sparsity_config": {"format": ..., "sparsity_structure": ..., "targets": [...],
"global_sparsity": ..., ...}}``, plus a ``transformers_weights`` entry that makes plain
``transformers`` stop with a message naming llmsparse instead of loading random weights (with
llmsparse imported, its quantizer points transformers at the real file). Checkpoints written
before that (``model*.safetensors`` with ``quant_method: compressed-tensors`` and the same
``sparsity_config``) are still read. A *stock* format (``pack-quantized``) keeps the stock shard names
and writes its own ``quantization_config`` instead, for tools without llmsparse. :func:`read_state` yields the dense tensors back, one matrix
at a time. Every module of this package is imported here, so a new format is one new file.
"""


from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from .base import FORMATS, Format, tensor_bytes

INDEX = "model.safetensors.index.json"
#: quantization_config["quant_method"] of compact checkpoints (transformers runs llmsparse's quantizer for it).
QUANT_METHOD = "llmsparse"
#: File stem of a compact checkpoint's weights: llmsparse.safetensors, or llmsparse-0000k-of-0000n.safetensors + llmsparse.safetensors.index.json.
STEM = "llmsparse"
LEGACY_QUANT_METHOD = "compressed-tensors"
#: config.json's transformers_weights in a compact checkpoint: not a safetensors name, so transformers
#: refuses it and prints it (llmsparse's quantizer replaces it by the weights file before loading).
GUARD = (
    "this is a compact sparse checkpoint that only llmsparse reads (weights in llmsparse*.safetensors): "
    "pip install llmsparse, then import llmsparse before from_pretrained, or use llmsparse.load_model(path)"
)


def weights_file(directory: Path) -> str | None:
    """The name of the weights index or single weights file in ``directory`` (stock ``model*`` names, or a compact checkpoint's ``llmsparse*``)."""
    for stem in ("model", STEM):
        for name in (f"{stem}.safetensors.index.json", f"{stem}.safetensors"):
            if (directory / name).is_file():
                return name
    return None


def shard_files(directory: Path) -> list[Path]:
    """The safetensors shards of a saved model (empty when it has none)."""
    name = weights_file(directory)
    if name is None:
        return []
    if name.endswith(".index.json"):
        try:
            files = json.loads((directory / name).read_text(encoding="utf-8"))["weight_map"].values()
            return [directory / f for f in sorted(set(files))]
        except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:  # not JSON, no weight_map, not a mapping
            raise CheckpointError(f"weights index {str(directory / name)!r} is not a valid index (JSON with a weight_map of tensor -> file): {type(err).__name__}: {err}") from err
    return [directory / name]


def compress_checkpoint(directory: Path, fmt: Format, targets: Iterable[str]) -> dict:
    """Rewrite the safetensors of a saved model in place, storing ``targets`` (``<module>.weight`` keys) as ``fmt``.

    Works one shard at a time; each shard is written under its ``llmsparse`` name and the stock one
    removed. Returns the ``sparsity_config`` written into ``config.json``, with the bytes of the
    targeted matrices before (dense) and after.
    """
    targets = set(targets)
    before = after = zeros = numel = 0
    index_path = directory / INDEX
    index = json.loads(index_path.read_text()) if index_path.is_file() else None
    renamed, written = {}, {}
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
            written[key] = [f"{module}.{part}" for part in parts]
        del tensors
        renamed[shard.name] = shard.name if fmt.stock else STEM + shard.name.removeprefix("model")
        save_file(out, directory / renamed[shard.name], metadata={"format": "pt"})
        if not fmt.stock:
            shard.unlink()
    stem = "model" if fmt.stock else STEM
    weights = f"{stem}.safetensors"
    if index is not None:
        index["weight_map"] = {stored: renamed[file] for key, file in index["weight_map"].items() for stored in written.get(key, [key])}
        weights = f"{stem}.safetensors.index.json"
        (directory / weights).write_text(json.dumps(index, indent=2) + "\n")
        if not fmt.stock:
            index_path.unlink()
    config = {
        **fmt.config_block(),
        "global_sparsity": zeros / numel if numel else 0.0,
        "targets": sorted(t.removesuffix(".weight") for t in targets),
        "ignore": [],
        "bytes_dense": before,
        "bytes_compressed": after,
    }
    config_path = directory / "config.json"
    data = json.loads(config_path.read_text())
    if fmt.stock:  # stock tools read it: their own block, no sparsity_config (the sparsity is in llmsparse.json)
        data["quantization_config"] = fmt.quantization_config()
    else:
        data["quantization_config"] = {"quant_method": QUANT_METHOD, "weights": weights, "sparsity_config": config}
        data["transformers_weights"] = GUARD
    config_path.write_text(json.dumps(data, indent=2) + "\n")
    return config


def sparsity_config(quant: dict | None, where: str = "") -> dict | None:
    """The ``sparsity_config`` of a compact checkpoint's ``quantization_config`` (None for an ordinary checkpoint)."""
    if not isinstance(quant, dict) or quant.get("quant_method") not in (QUANT_METHOD, LEGACY_QUANT_METHOD) or not quant.get("sparsity_config"):
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
        raise CheckpointError(f"{directory}: no safetensors weights ({STEM}.safetensors, model.safetensors or an index)")
    compressed = {f"{t}.weight" for t in block.get("targets", [])}
    for shard in shards:
        try:
            with safe_open(shard, "pt") as f:
                keys = list(f.keys())
                grouped: dict[str, list[str]] = {}
                for key in keys:
                    module, _, part = key.rpartition(".")
                    if f"{module}.weight" in compressed and (part in fmt.parts or part in fmt.extra_parts):
                        grouped.setdefault(module, []).append(part)
                    else:
                        yield key, f.get_tensor(key)
                for module, parts in grouped.items():
                    yield f"{module}.weight", fmt.decompress({p: f.get_tensor(f"{module}.{p}") for p in parts}, module)
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{shard}: corrupt or truncated safetensors file ({err})") from err
