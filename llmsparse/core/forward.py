"""Running one decoder layer outside the model: its recorded call arguments, its weights on the compute device, hooks on its matrices.

:func:`capture_inputs` runs the model up to its first decoder layer for every calibration sequence
and records the positional and keyword arguments *each* layer receives (attention masks and rotary
embeddings differ between sliding and global layers in Gemma). :func:`forward_layer` then runs a
layer on its own; :func:`collect_stats`, :func:`matrix_inputs` and :func:`input_groups` run it with
pre-hooks on its matrices and stop the forward as soon as every hooked matrix has seen its input,
so the rest of the layer is not computed. :func:`on_device` moves a layer's weights to the compute
device (and dtype) while it is worked on and keeps the stored (master) tensors for the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import CalibrationError
from .layout import DecoderLayout, get_weight


class _Stop(Exception):
    """Raised from a hook to end a forward pass early."""


@dataclass
class LayerCall:
    args: tuple
    kwargs: dict


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
def on_device(modules: list[nn.Module], device: torch.device, dtype: torch.dtype | None = None):
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


def outside_layers(layout: DecoderLayout) -> list[nn.Module]:
    inside = {id(m) for m in layout.layers.modules()}
    return [m for m in layout.base.modules() if id(m) not in inside]


@torch.no_grad()
def kept(h: torch.Tensor, keep_on: torch.device | None) -> torch.Tensor:
    """An activation moved to where a walk keeps them (None: CPU). CPU copies of GPU activations are pinned,
    so that copying them back to the GPU does not wait for the host."""
    if keep_on is not None and keep_on.type != "cpu":
        return h.to(keep_on)
    return h.to("cpu").pin_memory() if h.is_cuda else h.to("cpu")


def capture_inputs(layout: DecoderLayout, input_ids: torch.Tensor, device: torch.device, dtype: torch.dtype, keep_on: torch.device | None = None):
    """Inputs of the first layer per sequence (kept on ``keep_on``, default CPU) and every layer's call arguments (on ``device``)."""
    first = layout.layers[0]
    hidden: list[torch.Tensor] = []
    calls: list[LayerCall] = []

    def catch_first(module, args, kwargs):
        h, rest, kw = _split_hidden(args, kwargs)
        hidden.append(kept(h.to(dtype=dtype), keep_on))
        if not calls:
            calls.append(LayerCall(_to(rest, device, dtype), _to(kw, device, dtype)))
        raise _Stop

    with on_device(outside_layers(layout), device):
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
    with on_device(list(layers[0].modules()), device, dtype):
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
    out = layer(h.to(device, non_blocking=True), *call.args, **call.kwargs)
    return out[0] if isinstance(out, tuple) else out


def forward_all(layer: nn.Module, hidden: list[torch.Tensor], call: LayerCall, device, batch: int = 1, keep_on: torch.device | None = None) -> list[torch.Tensor]:
    """The layer's output for every sequence of ``hidden``, ``batch`` sequences per forward, kept on ``keep_on``.

    The recorded call arguments were captured for one sequence; masks and rotary tables broadcast over
    the batch. ``batch=1`` is the reference path (each sequence alone: batched GEMMs round differently).
    """
    if batch <= 1:
        return [kept(forward_layer(layer, h, call, device), keep_on) for h in hidden]
    out = []
    for i in range(0, len(hidden), batch):
        out.extend(kept(o, keep_on) for o in forward_layer(layer, torch.cat(hidden[i : i + batch]), call, device).split(1))
    return out


def hooked_forward(layer, matrices: dict[str, nn.Module], hook_for: Callable, h, call, device) -> None:
    """One forward of ``layer`` with ``hook_for(name)`` as each matrix's pre-hook; a hook raises ``_Stop`` to end it early."""
    handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in matrices.items()]
    try:
        forward_layer(layer, h, call, device)
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def matrix_inputs(layer, matrices: dict[str, nn.Module], h: torch.Tensor, call: LayerCall, device) -> dict[str, torch.Tensor]:
    """The input each matrix reads when ``layer`` runs on ``h`` (the forward stops once all have been seen)."""
    inputs: dict[str, torch.Tensor] = {}

    def hook_for(name):
        def hook(module, args):
            inputs[name] = args[0]
            if len(inputs) == len(matrices):
                raise _Stop

        return hook

    hooked_forward(layer, matrices, hook_for, h, call, device)
    return inputs


@torch.no_grad()
def collect_stats(
    layer, matrices: dict[str, nn.Module], hidden, call, device, new_stats: Callable, dense: Callable[[int], dict] | None = None, batch: int = 1
) -> dict:
    """Feed each matrix's input through its stats object for all sequences; shared inputs share stats.

    A forward ends as soon as every matrix in ``matrices`` has seen its input, so the rest of the
    layer is not computed; ``batch`` sequences go through each forward. With ``dense`` (sequence index -> each matrix's input on the dense
    model's stream, see :func:`matrix_inputs`), each update also gets that input: ``update(x, x_dense)``.
    """
    stats: dict[str, object] = {}
    seen: list[tuple[torch.Tensor, object]] = []  # (input tensor, stats) of the current forward
    done: set[str] = set()
    dense_inputs: dict[str, torch.Tensor] = {}

    def hook_for(name):
        def hook(module, inputs):
            x = inputs[0]
            if name not in stats:  # first forward: share stats with a matrix that read this very tensor
                stats[name] = next((s for t, s in seen if t is x), None) or new_stats(x.shape[-1], x.device)
            if not any(s is stats[name] for _, s in seen):
                stats[name].update(x, dense_inputs[name]) if dense is not None else stats[name].update(x)
                seen.append((x, stats[name]))
            done.add(name)
            if len(done) == len(matrices):
                raise _Stop

        return hook

    step = 1 if dense is not None else max(batch, 1)  # the dense stream pairs inputs sequence by sequence
    for j in range(0, len(hidden), step):
        h = hidden[j] if step == 1 else torch.cat(hidden[j : j + step])
        if dense is not None:
            dense_inputs = dense(j)
        seen.clear()
        done.clear()
        hooked_forward(layer, matrices, hook_for, h, call, device)
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
    """The stored ``[out, in]`` weight of ``module`` while :func:`on_device` holds a compute copy."""
    return get_weight(module, masters.get(id(module.weight), module.weight.data))
