"""Building sparse-runtime models: from a compact checkpoint without ever making the dense matrices, or from a dense model.

A compact checkpoint loads through transformers with llmsparse's quantizer (:mod:`.quantizer`,
:func:`.hf.load_compact`): the model skeleton is built on the meta device, :func:`add_shells` makes
every stored matrix a :class:`SparseLinear` whose buffers have the checkpoint's shapes (read from
the safetensors headers), and transformers fills them tensor by tensor. Peak memory is therefore
the compact model, not the dense one. A dense checkpoint is loaded as usual and
:func:`convert_dense` compresses each decoder matrix that is sparse enough.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from .. import formats
from ..core.layout import get_weight, target_weights
from ..core.memory import FileMappings
from ..errors import CheckpointError, ModelError
from .linear import SparseLinear

log = logging.getLogger(__name__)

#: How a model's pruned matrices run: ``dense`` as ordinary Linear layers; ``sparse`` compressed in
#: memory (an error when nothing is sparse enough); ``auto`` sparse where worthwhile, else dense.
RUNTIMES = ("dense", "sparse", "auto")
#: A dense matrix is compressed when at least this share of it is zero. Below it the bit mask and the
#: per-column decoding cost about what skipping the zeros saves (bench/runtime_gemma.py, docs/RUNTIME.md).
MIN_SPARSITY = 0.3
#: safetensors dtype names of the tensors a compact checkpoint stores.
SAFETENSORS_DTYPES = {
    "F32": torch.float32,
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "I64": torch.int64,
    "I32": torch.int32,
    "U8": torch.uint8,
}


def sparse_layers(model: nn.Module) -> dict[str, SparseLinear]:
    """The model's compressed Linear layers by qualified name (empty for a dense model)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, SparseLinear)}


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def convert_dense(model: nn.Module, where: str, required: bool) -> dict[str, SparseLinear]:
    """Compress, as ``bitmask``, every decoder matrix of ``model`` with at least :data:`MIN_SPARSITY` zeros; says which.

    ``required``: no such matrix is an error (``runtime='sparse'``) rather than a note (``'auto'``).
    """
    fmt = formats.get_format("bitmask")
    converted: dict[str, SparseLinear] = {}
    dense: dict[str, float] = {}
    with torch.no_grad():
        for name, module in target_weights(model).items():
            weight = get_weight(module)
            sparsity = float((weight == 0).sum()) / weight.numel()
            if sparsity < MIN_SPARSITY or weight.device.type == "meta":
                dense[name] = sparsity
                continue
            converted[name] = SparseLinear.from_module(module, fmt, name)
            _replace(model, name, converted[name])
    if not converted:
        sparsest = max(dense.values(), default=0.0)
        message = (
            f"{where}: no decoder matrix is sparse enough for the sparse runtime (the sparsest has {sparsest:.1%} zeros, "
            f"it needs {MIN_SPARSITY:.0%})"
        )
        if required:
            raise ModelError(f"{message}; load it with runtime='dense' (--runtime dense), or 'auto' to load such models densely")
        log.info("%s; loaded dense", message)
    else:
        log.info("sparse runtime: %s", summary(model))
        if dense:
            log.info("left dense (under %.0f%% zeros): %s", 100 * MIN_SPARSITY, ", ".join(f"{n} ({s:.1%})" for n, s in dense.items()))
    return converted


def summary(model: nn.Module) -> str:
    """One line: how many matrices are compressed, in which formats, their bytes against the dense ones, and the kernel path."""
    from .sparse_kernel import available, cpu_isa

    layers = sparse_layers(model)
    stored = sum(m.nbytes for m in layers.values())
    dense = sum(m.in_features * m.out_features * m.layout().dtype.itemsize for m in layers.values())
    kinds = sorted({m.format.label for m in layers.values()})
    path = f"{cpu_isa()} kernels" if available() else "torch ops (no C++ kernel)"
    return (
        f"{len(layers)} matrices compressed ({', '.join(kinds)}), {stored / 2**20:.1f} MiB instead of {dense / 2**20:.1f} MiB dense; {path}"
    )


def _headers(files: Iterable[str | Path]) -> dict[str, tuple[list[int], torch.dtype]]:
    """Shape and dtype of every tensor in the safetensors ``files``, from their headers (nothing is read)."""
    found = {}
    for file in files:
        try:
            with safe_open(str(file), "pt") as f:
                for key in f.keys():
                    view = f.get_slice(key)
                    found[key] = (list(view.get_shape()), SAFETENSORS_DTYPES.get(view.get_dtype(), torch.float32))
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{file}: corrupt or truncated safetensors file ({err})") from err
    return found


def add_shells(model: nn.Module, block: dict, files: Iterable[str | Path], dtype: torch.dtype | None) -> None:
    """Replace each stored matrix of a (meta-device) model by a :class:`SparseLinear` with empty buffers shaped as in the checkpoint.

    Float parts take ``dtype`` (the model's), so transformers casts the stored values as it casts any weight.
    """
    fmt = formats.checkpoint_format(block)
    if not fmt.runs_sparse:
        raise CheckpointError(
            f"format {fmt.label} has no sparse runtime layout: load this checkpoint with llmsparse.load_model, which decompresses it"
        )
    headers = _headers(files)
    for name in block.get("targets", []):
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"the checkpoint stores {name!r}, which {type(model).__name__} does not have") from None
        present = [p for p in (*fmt.parts, *fmt.extra_parts) if f"{name}.{p}" in headers]
        missing = [p for p in fmt.required(set(present)) if p not in present]
        if missing:
            raise CheckpointError(f"partial checkpoint: {name} lacks {', '.join(missing)}")
        parts = {}
        for part in present:  # a quantized matrix stores codes, scales (and zero points) instead of values
            shape, stored = headers[f"{name}.{part}"]
            kind = dtype if stored.is_floating_point and dtype is not None else stored
            parts[part] = torch.empty(shape, dtype=kind, device="meta")
        input_major = not isinstance(module, nn.Linear)
        rows, cols = module.weight.shape
        out_features, in_features = (cols, rows) if input_major else (rows, cols)
        shell = SparseLinear(in_features, out_features, fmt, parts, module.bias, input_major, name)
        shell._is_hf_initialized = True  # transformers' weight initialisation skips it (its weight is what gets loaded)
        _replace(model, name, shell)


def check_loaded(model: nn.Module, dtype: torch.dtype | None = None) -> None:
    """Check every compressed layer's tensors against its format (:class:`CheckpointError` naming the matrix).

    transformers loads buffers in their stored dtype, so stored values are cast to the model's ``dtype``
    here (:meth:`SparseLinear.cast_values`), as a dense load casts its weights.
    """
    for module in sparse_layers(model).values():
        if dtype is not None:
            module.cast_values(dtype)
        module.layout()
    release_file(model)


def release_file(model: nn.Module) -> None:
    """When only compressed parts still read from the checkpoint's memory map, copy them out so the map can go.

    A load that casts (a float32 checkpoint loaded in bf16) copies every dense tensor, but the
    codes, masks and scales stay zero-copy views of the file, and the mapping keeps every page read
    while casting resident: the 671 MB float32 embedding of Gemma 3 270M, for one. When no dense
    parameter or buffer reads from a file, the parts are copied (the same bytes, now anonymous) and
    the map is released with its last view; when some do (a same-dtype load), nothing is copied, as
    the mapping stays anyway and a copy would hold those bytes twice.
    """
    layers, mapped = sparse_layers(model).values(), FileMappings()
    ours = {id(t) for m in layers for t in m.parts.values()}
    if any(mapped.holds(t) for t in (*model.parameters(), *model.buffers()) if id(t) not in ours):
        return
    for module in layers:
        module.own_parts(mapped)
