"""The layer-sequential engine shared by every calibration-driven pruner.

1. Run the model up to its first decoder layer and keep that layer's input for every
   calibration sequence; record the positional and keyword arguments *each* layer receives
   (attention masks and rotary embeddings differ between sliding and global layers in Gemma).
2. For each layer in turn, on the compute device: hooks feed the inputs of its matrices to the
   method's statistics (stopping the forward once every hooked matrix has seen its input), the
   method prunes each matrix, and the pruned layer is re-run so its outputs feed the next layer.

Only one decoder layer is on the compute device at a time; the activations stay on CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import CalibrationError
from .layout import DecoderLayout, get_weight
from .masks import Pattern
from .methods import Method, PruneResult


class _Stop(Exception):
    """Raised from a hook to end a forward pass early."""


@dataclass
class MatrixResult:
    name: str
    layer: int
    sparsity: float  # the target this matrix was pruned to
    result: PruneResult


@dataclass
class LayerCall:
    args: tuple
    kwargs: dict


def compute_dtype(storage: torch.dtype, device: torch.device) -> torch.dtype:
    """float16 matmuls are very slow on CPU: compute in float32 there; otherwise in the storage dtype."""
    return torch.float32 if device.type == "cpu" and storage == torch.float16 else storage


def _to(obj, device: torch.device, dtype: torch.dtype):
    """Move tensors in nested args to ``device``, casting floating tensors to ``dtype``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, dtype) if obj.is_floating_point() else obj.to(device)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(o, device, dtype) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device, dtype) for k, v in obj.items()}
    return obj


def _split_hidden(args: tuple, kwargs: dict) -> tuple[torch.Tensor, tuple, dict]:
    if args:
        return args[0], args[1:], kwargs
    kwargs = dict(kwargs)
    return kwargs.pop("hidden_states"), (), kwargs


@contextmanager
def _on_device(modules: list[nn.Module], device: torch.device, dtype: torch.dtype | None = None):
    """Temporarily move the *direct* parameters and buffers of ``modules``, casting floats to ``dtype``.

    Yields ``{id(parameter): original tensor}`` so callers can update the original (master) weights.
    """
    saved = {}
    for module in modules:
        for store in (module._parameters, module._buffers):
            for tensor in store.values():
                if tensor is None:
                    continue
                cast = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
                data = tensor.data
                moved = data.to(device, cast)
                if moved is not data:
                    saved[id(tensor)] = (tensor, data)
                    tensor.data = moved
    try:
        yield {key: data for key, (_, data) in saved.items()}
    finally:
        for tensor, original in saved.values():
            tensor.data = original


def _outside_layers(layout: DecoderLayout) -> list[nn.Module]:
    inside = {id(m) for m in layout.layers.modules()}
    return [m for m in layout.base.modules() if id(m) not in inside]


@torch.no_grad()
def capture_inputs(layout: DecoderLayout, input_ids: torch.Tensor, device: torch.device, dtype: torch.dtype):
    """Inputs of the first layer per sequence (on CPU) and every layer's call arguments (on ``device``)."""
    first = layout.layers[0]
    hidden: list[torch.Tensor] = []
    calls: list[LayerCall] = []

    def catch_first(module, args, kwargs):
        h, rest, kw = _split_hidden(args, kwargs)
        hidden.append(h.to("cpu", dtype))
        if not calls:
            calls.append(LayerCall(_to(rest, device, dtype), _to(kw, device, dtype)))
        raise _Stop

    with _on_device(_outside_layers(layout), device):
        handle = first.register_forward_pre_hook(catch_first, with_kwargs=True)
        try:
            for ids in tqdm(input_ids, desc="calibration inputs", leave=False):
                try:
                    layout.base(input_ids=ids.unsqueeze(0).to(device), use_cache=False)
                except _Stop:
                    pass
        finally:
            handle.remove()
        calls.extend(_record_later_calls(layout, input_ids[0], device, dtype, hidden[0], calls[0]))
    return hidden, calls


def _record_later_calls(layout, ids, device, dtype, hidden0, call0) -> list[LayerCall]:
    """Arguments of layers 1..L-1, recorded by one forward where each layer is replaced by a pass-through."""
    layers = layout.layers
    with _on_device(list(layers[0].modules()), device, dtype):
        returns_tuple = isinstance(layers[0](hidden0.to(device), *call0.args, **call0.kwargs), tuple)
    calls: list[LayerCall] = []

    def stub_for(index):
        def stub(*args, **kwargs):
            h, rest, kw = _split_hidden(args, kwargs)
            if index > 0:
                calls.append(LayerCall(_to(rest, device, dtype), _to(kw, device, dtype)))
            if index == len(layers) - 1:
                raise _Stop
            return (h,) if returns_tuple else h

        return stub

    originals = [layer.__dict__.get("forward") for layer in layers]
    try:
        for i, layer in enumerate(layers):
            layer.forward = stub_for(i)
        try:
            layout.base(input_ids=ids.unsqueeze(0).to(device), use_cache=False)
        except _Stop:
            pass
    finally:
        for layer, original in zip(layers, originals):
            if original is None:
                del layer.forward
            else:
                layer.forward = original
    if len(calls) != len(layers) - 1:
        raise CalibrationError(f"expected calls to {len(layers) - 1} later layers, saw {len(calls)}")
    return calls


def forward_layer(layer: nn.Module, h: torch.Tensor, call: LayerCall, device: torch.device) -> torch.Tensor:
    """One decoder layer's output hidden states for input ``h`` with its recorded call arguments."""
    out = layer(h.to(device), *call.args, **call.kwargs)
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def collect_stats(layer, matrices: dict[str, nn.Module], hidden, call, device, new_stats: Callable) -> dict:
    """Feed each matrix's input through its stats object for all sequences; shared inputs share stats.

    A forward ends as soon as every matrix in ``matrices`` has seen its input, so the rest of the
    layer is not computed.
    """
    stats: dict[str, object] = {}
    seen: list[tuple[torch.Tensor, object]] = []  # (input tensor, stats) of the current forward
    done: set[str] = set()

    def hook_for(name):
        def hook(module, inputs):
            x = inputs[0]
            if name not in stats:  # first forward: share stats with a matrix that read this very tensor
                stats[name] = next((s for t, s in seen if t is x), None) or new_stats(x.shape[-1], x.device)
            if not any(s is stats[name] for _, s in seen):
                stats[name].update(x)
                seen.append((x, stats[name]))
            done.add(name)
            if len(done) == len(matrices):
                raise _Stop

        return hook

    handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in matrices.items()]
    try:
        for h in hidden:
            seen.clear()
            done.clear()
            try:
                forward_layer(layer, h, call, device)
            except _Stop:
                pass
    finally:
        for handle in handles:
            handle.remove()
    missing = sorted(set(matrices) - set(stats))
    if missing:
        raise CalibrationError(f"no calibration input reached {', '.join(missing)}")
    return stats


@torch.no_grad()
def input_groups(layer, matrices: dict[str, nn.Module], h, call, device) -> list[list[str]]:
    """Matrices grouped by the tensor they read, in execution order ([q,k,v], [o], [gate,up], [down])."""
    order: list[tuple[torch.Tensor, list[str]]] = []

    def hook_for(name):
        def hook(module, inputs):
            group = next((g for t, g in order if t is inputs[0]), None)
            if group is None:
                order.append((inputs[0], [name]))
            elif name not in group:
                group.append(name)

        return hook

    handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in matrices.items()]
    try:
        forward_layer(layer, h, call, device)
    finally:
        for handle in handles:
            handle.remove()
    return [g for _, g in order]


def master_weight(module: nn.Module, masters: dict) -> torch.Tensor:
    """The stored ``[out, in]`` weight of ``module`` while :func:`_on_device` holds a compute copy."""
    return get_weight(module, masters.get(id(module.weight), module.weight.data))


def _prune_matrix(method: Method, name: str, module, masters: dict, stats, sparsity, pattern, device) -> PruneResult:
    """Prune the master (stored) weight of ``module`` and refresh its compute copy for the re-run."""
    master = master_weight(module, masters)
    result = method.prune(master.to(device, torch.float32), stats, sparsity, pattern, name=name)
    master.copy_(result.weight)  # rounds to the storage dtype: the re-run sees exactly the saved weights
    get_weight(module).copy_(master)
    return result


@torch.no_grad()
def walk_layers(layout: DecoderLayout, input_ids: torch.Tensor, device: torch.device, dtype: torch.dtype, visit: Callable, desc: str) -> None:
    """Run the calibration sequences through the decoder one layer at a time, calling ``visit`` on each.

    ``visit(i, layer, hidden, call, masters)`` runs while layer ``i`` sits on ``device`` (``masters``
    maps its parameters to their stored tensors); then the (possibly changed) layer's outputs
    become the next layer's inputs.
    """
    layers = layout.layers
    hidden, calls = capture_inputs(layout, input_ids, device, dtype)
    for i in tqdm(range(len(layers)), desc=desc):
        with _on_device(list(layers[i].modules()), device, dtype) as masters:
            visit(i, layers[i], hidden, calls[i], masters)
            if i + 1 < len(layers):
                hidden = [forward_layer(layers[i], h, calls[i], device).to("cpu") for h in hidden]


@torch.no_grad()
def prune_layers(
    layout: DecoderLayout,
    method: Method,
    targets: dict[int, dict[str, nn.Module]],
    sparsities: list[float],
    pattern: Pattern,
    input_ids: torch.Tensor | None,
    device: torch.device | str = "cpu",
    true_sequential: bool = False,
    dtype: torch.dtype | None = None,
) -> list[MatrixResult]:
    """Prune ``targets`` (layer index -> {name: matrix}) layer by layer; ``sparsities[i]`` is layer i's target.

    Calibration forwards run in ``dtype`` (default: :func:`compute_dtype`); statistics and the
    pruning math are float32, and the stored weights keep their own dtype.
    """
    device = torch.device(device)
    layers = layout.layers
    dtype = dtype or compute_dtype(next(layers[0].parameters()).dtype, device)
    results: list[MatrixResult] = []

    if not method.needs_calibration:
        for i in tqdm(range(len(layers)), desc=f"{method.name} layers"):
            for name, module in targets.get(i, {}).items():
                with _on_device([module], device) as masters:
                    result = _prune_matrix(method, name, module, masters, None, sparsities[i], pattern, device)
                results.append(MatrixResult(name, i, sparsities[i], result))
        return results

    def visit(i, layer, hidden, call, masters):
        matrices = targets.get(i, {})
        if not matrices:
            return
        groups = input_groups(layer, matrices, hidden[0], call, device) if true_sequential else [list(matrices)]
        for group in groups:
            subset = {n: matrices[n] for n in group}
            stats = collect_stats(layer, subset, hidden, call, device, method.new_stats)
            for name, module in subset.items():
                result = _prune_matrix(method, name, module, masters, stats[name], sparsities[i], pattern, device)
                results.append(MatrixResult(name, i, sparsities[i], result))
            del stats  # free this group's statistics (Hessians can be large) before the next group's

    walk_layers(layout, input_ids, device, dtype, visit, f"{method.name} layers")
    return results
