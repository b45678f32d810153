"""Models dispatched by accelerate (``device_map=...`` with CPU or disk offload): the engine's layer store for them.

accelerate keeps an offloaded module's parameters on the meta device and gives it an
``AlignDevicesHook(offload=True)`` whose ``weights_map`` holds the real tensors (a disk index
into the checkpoint shards or ``.dat`` files in ``offload_folder``, or a CPU dict). The hook
loads them for each forward and drops them after, so edits to a loaded tensor are lost. While
a pass visits a layer, :class:`Offloaded` loads the weights of its offloaded modules once,
turns their hooks' offloading off (and points them at the compute device), and on the way
out writes every tensor of a changed layer back with accelerate's own ``offload_weight``
(a new ``.dat`` file in the offload folder, the index entry repointed; never the source shards)
or into the CPU dict, then restores the hooks and the meta parameters.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ..core import engine
from ..core.checks import nonfinite
from ..core.forward import outside_layers
from ..core.layout import find_layers
from ..errors import ModelError, NonFiniteError


def _align_hook(module: nn.Module):
    """The module's ``AlignDevicesHook`` (also inside a ``SequentialHook``), or None."""
    from accelerate.hooks import AlignDevicesHook, SequentialHook

    hook = getattr(module, "_hf_hook", None)
    hooks = hook.hooks if isinstance(hook, SequentialHook) else [hook]
    return next((h for h in hooks if isinstance(h, AlignDevicesHook)), None)


def _write_back(weights_map, name: str, tensor: torch.Tensor) -> None:
    """Store ``tensor`` as the offloaded value of ``name`` where the hook's ``weights_map`` keeps it."""
    from accelerate.utils import OffloadedWeightsLoader, PrefixedDataset, offload_weight

    key, store = name, weights_map
    if isinstance(store, PrefixedDataset):
        key, store = store.prefix + name, store.dataset
    if isinstance(store, OffloadedWeightsLoader):
        if key in store.state_dict:
            store.state_dict[key] = tensor.detach().clone()
        elif store.save_folder is None:
            raise ModelError(f"{key} is offloaded to disk without an offload_folder to write its pruned values to: load with offload_folder=DIR")
        else:
            offload_weight(tensor.detach(), key, store.save_folder, index=store.index)
    else:
        store[key] = tensor.detach().clone()


def dispatched(model: nn.Module) -> bool:
    """True when some module of ``model`` is offloaded by an accelerate hook."""
    return any((h := _align_hook(m)) is not None and h.offload for m in model.modules())


class Offloaded(engine.Resident):
    """The layer store of an accelerate-dispatched model: offloaded weights onloaded per visit, written back when changed."""

    def __init__(self, model: nn.Module, device: torch.device):
        if any(p.device.type == "meta" for m in model.modules() if not ((h := _align_hook(m)) and h.offload) for p in m._parameters.values() if p is not None):
            raise ModelError("the model has meta parameters that no accelerate offload hook holds: load its weights first")
        self.layout = find_layers(model)
        self.device = device

    @contextmanager
    def _onloaded(self, modules: list[nn.Module], changed: bool):
        from accelerate.utils import named_module_tensors, set_module_tensor_to_device

        held = []
        try:
            for m in modules:
                hook = _align_hook(m)
                if hook is None:
                    continue
                names = []
                if hook.offload:
                    names = [n for n, _ in named_module_tensors(m, include_buffers=hook.offload_buffers, recurse=hook.place_submodules, remove_non_persistent=True)]
                    for n in names:
                        value = hook.weights_map[n]
                        bad = nonfinite(value)
                        if bad:
                            raise NonFiniteError(f"weight {n} of {type(m).__name__} has {bad}; llmsparse needs finite weights")
                        set_module_tensor_to_device(m, n, "cpu", value=value)
                held.append((m, hook, names, hook.offload, hook.execution_device))
                hook.offload, hook.execution_device = False, self.device
            yield
            if changed:
                for m, hook, names, *_ in held:
                    for n in names:
                        _write_back(hook.weights_map, n, m.get_parameter(n) if n in dict(m.named_parameters()) else m.get_buffer(n))
        finally:
            for m, hook, names, offload, execution in held:
                for n in names:
                    set_module_tensor_to_device(m, n, "meta")
                hook.offload, hook.execution_device = offload, execution

    def outside(self):
        return self._onloaded(outside_layers(self.layout), changed=False)

    def layer(self, index: int, changed: bool):
        return self._onloaded(list(self.layout.layers[index].modules()), changed)
