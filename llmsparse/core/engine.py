"""The layer-sequential engine shared by every calibration-driven pass (pruning, OWL budgets, activation calibration).

A pass walks the decoder one layer at a time: the calibration sequences' hidden states enter
layer 0 (captured by :func:`~llmsparse.core.forward.capture_inputs`), the pass works on the layer
while it sits on the compute device, and the (possibly changed) layer is re-run so that its outputs
feed the next layer. The walk is one loop in the caller::

    with LayerWalk(run, input_ids, key="prune", desc="wanda layers", changes=True) as walk:
        for visit in walk:
            visit.result = work_on(visit)      # visit.stats(...), visit.master(module), ...
    results = walk.results

:class:`Run` holds a run's fixed facts (layout, device, dtype of the forwards, layer store);
:class:`LayerVisit` is what the loop body sees of one layer. Optionally a second, dense stream of
hidden states runs alongside (the dense model's inputs of every layer, before the pass changes it).
Only one decoder layer is on the compute device at a time; the activations stay on CPU.
The :class:`Resident` store keeps layers in memory; streamed checkpoints and accelerate offload
provide their own stores (they load each layer when visited and save it when changed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from . import forward
from .layout import DecoderLayout


class Resident:
    """Where the decoder layers live between visits: here, in memory all along (the default store).

    A store holds what a pass needs and keeps what it finished. :meth:`outside` holds the modules
    around the layers (embeddings, final norm) while the first layer's inputs are captured;
    :meth:`layer` holds layer ``i`` while it is visited (``changed``: the visit edits it, so a store
    that does not keep it must save it); :meth:`resume` and :meth:`done` let a store persist a pass's
    progress. :class:`llmsparse.checkpoint.stream.Streamed` reads each layer from the checkpoint and writes it out;
    :class:`llmsparse.pruning.offload.Offloaded` onloads an accelerate-offloaded layer and writes it back.
    """

    def begin(self, input_ids: torch.Tensor | None) -> None:
        """The run's calibration ids are known (a resumable store checks them against the interrupted run's)."""

    def outside(self):
        return nullcontext()

    def layer(self, index: int, changed: bool):
        return nullcontext()

    def resume(self, key: str) -> tuple[int, tuple[list, list | None] | None, list]:
        """``(first layer to visit, its saved (hidden, dense) inputs or None, visit results of the layers before)``."""
        return 0, None, []

    def done(self, key: str, index: int, hidden: list | None, dense: list | None, result) -> None:
        """Layer ``index`` of pass ``key`` is finished: ``hidden``/``dense`` are the next layer's inputs."""


@dataclass
class Run:
    """The fixed facts of one run over a model's decoder: where layers are computed, in which dtype, and who holds them."""

    layout: DecoderLayout
    device: torch.device
    dtype: torch.dtype  # dtype of the calibration forwards (statistics and pruning math are float32 regardless)
    store: Resident = field(default_factory=Resident)
    activations: torch.device | None = None  # where hidden states wait between layers (None: CPU, pinned when the device is a GPU)
    batch: int = 1  # calibration sequences per forward (1: each alone, the reference path)


def placement(device: torch.device, model: nn.Module, tokens: int, dtype: torch.dtype, streams: int = 1) -> dict:
    """``Run`` fields for a GPU: activations stay on it when they fit, and forwards take 8 sequences at a time.

    On a GPU the walk is otherwise bound by host copies and kernel launches of one-sequence forwards.
    The activations fit when a layer's inputs and outputs (``streams`` hidden-state streams of
    ``tokens`` x the model's hidden size in ``dtype``) take at most half the free memory; else they wait in
    pinned host memory. On a CPU nothing changes (batch 1 on CPU memory: results identical to earlier runs).
    """
    if device.type != "cuda":
        return {}
    need = 2 * streams * tokens * model.get_input_embeddings().embedding_dim * dtype.itemsize
    free, _ = torch.cuda.mem_get_info(device)
    return {"activations": device if need <= free // 2 else torch.device("cpu"), "batch": 8}


@dataclass
class LayerVisit:
    """Layer ``index`` while a :class:`LayerWalk` holds it on the compute device.

    ``hidden`` are its inputs (one ``[1, seq, hidden]`` tensor per calibration sequence; None when the
    walk has no calibration data), ``call`` its recorded call arguments, ``dense`` the dense stream's
    inputs when the walk runs one. The loop body sets :attr:`result` (kept per layer, and by a
    resumable store across runs).
    """

    run: Run
    index: int
    layer: nn.Module
    hidden: list[torch.Tensor] | None
    call: forward.LayerCall | None
    masters: dict
    dense: list[torch.Tensor] | None = None
    result: Any = None

    def master(self, module: nn.Module) -> torch.Tensor:
        """The stored ``[out, in]`` weight of a matrix of this layer (its compute copy is on the device)."""
        return forward.master_weight(module, self.masters)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """The layer's output for input ``h``."""
        return forward.forward_layer(self.layer, h, self.call, self.run.device)

    def forward_all(self, hidden: list[torch.Tensor]) -> list[torch.Tensor]:
        """The layer's outputs for every sequence of ``hidden``, kept where the run keeps activations."""
        return forward.forward_all(self.layer, hidden, self.call, self.run.device, self.run.batch, self.run.activations)

    def stats(self, matrices: dict[str, nn.Module], new_stats: Callable, dense: Callable[[int], dict] | None = None) -> dict:
        """Each matrix's statistics over every calibration sequence (matrices reading one tensor share them)."""
        return forward.collect_stats(self.layer, matrices, self.hidden, self.call, self.run.device, new_stats, dense, self.run.batch)

    def groups(self, matrices: dict[str, nn.Module]) -> list[list[str]]:
        """``matrices`` grouped by the tensor they read, in execution order ([q,k,v], [o], [gate,up], [down])."""
        return forward.input_groups(self.layer, matrices, self.hidden[0], self.call, self.run.device)


class LayerWalk:
    """One pass of the calibration sequences through the decoder, a layer at a time (see the module docstring).

    ``input_ids`` None: nothing runs through the layers and each visit has ``hidden=None`` (passes
    that work from the weights alone). ``key`` names the pass for a resumable store; ``changes``
    says the loop body edits the layers (a store that does not keep them must save them);
    ``dense_stream`` runs the dense model's hidden states alongside (twice the activation memory).
    Use it as a context manager so a layer's weights go back to their store even when the body raises.
    """

    def __init__(self, run: Run, input_ids: torch.Tensor | None, key: str, desc: str, changes: bool = False, dense_stream: bool = False):
        self.run, self.input_ids, self.key, self.desc = run, input_ids, key, desc
        self.changes, self.dense_stream = changes, dense_stream
        self.results: list = []
        self._held = ExitStack()

    def __enter__(self) -> LayerWalk:
        return self

    def __exit__(self, *exc) -> None:
        self._held.__exit__(*exc)  # the layer being visited goes back to its store, told of the exception (a store then saves nothing)

    def _inputs(self, start: int, saved) -> tuple[list | None, list | None, list | None]:
        """``(hidden, calls, dense)`` for layer ``start``: captured from the model, or the resumed run's saved ones."""
        if self.input_ids is None:
            return None, None, None
        run = self.run
        with run.store.outside(), run.store.layer(0, changed=False):
            hidden, calls = forward.capture_inputs(run.layout, self.input_ids, run.device, run.dtype, run.activations)
        dense = list(hidden) if self.dense_stream else None
        if saved is not None:
            hidden, dense = saved
        return hidden, calls, dense

    def __iter__(self) -> Iterator[LayerVisit]:
        run, layers = self.run, self.run.layout.layers
        start, saved, self.results = run.store.resume(self.key)
        if start == len(layers):
            return
        hidden, calls, dense = self._inputs(start, saved)
        for i in tqdm(range(start, len(layers)), desc=self.desc, initial=start, total=len(layers)):
            last = i + 1 == len(layers)
            with ExitStack() as held:
                self._held = held
                held.enter_context(run.store.layer(i, changed=self.changes))
                masters = held.enter_context(forward.on_device(list(layers[i].modules()), run.device, run.dtype))
                visit = LayerVisit(run, i, layers[i], hidden, None if calls is None else calls[i], masters, dense)
                dense_next = None if dense is None or last else visit.forward_all(dense)
                yield visit
                if hidden is not None and not last:
                    hidden = visit.forward_all(hidden)
                dense = dense_next
            self.results.append(visit.result)
            run.store.done(self.key, i, hidden, dense, visit.result)
