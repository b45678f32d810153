"""``sparsify_activations()``: calibrate an activation sparsifier on a model, layer by layer, and attach it.

Calibration statistics come from the *dense* model (as in the TEAL reference): the engine walks
the decoder one block at a time; for each block the method digests that block's dense inputs
(``prepare``), TEAL's greedy search (optional) picks per-projection sparsities by the block's
output error, and the resulting sites are attached to the model at the end. The settings are
:class:`SparsifySettings`, which also give the ``sparsify`` recipe keys and CLI flags.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..core import cpu, engine
from ..core.checks import check_inputs, check_weights
from ..core.forward import forward_layer
from ..core.layout import find_layers, resolve_device
from ..data.calibration import calib_setting, calibration_batch, nsamples_setting, seed_setting, seqlen_setting, text_field_setting
from ..errors import SettingsError, SparsityError
from ..settings import Settings, api, at_least, device_setting, in_range, setting
from .base import ACTIVATION_METHODS, ActivationMethod, Captured, check_sparsity, get_activation_method
from .greedy import GREEDY_ERRORS, block_error, greedy_allocation
from .hooks import PREFILL, Site, attach, detach, patched
from .report import ActivationReport
from .sites import Block, find_blocks

ALLOCATIONS = ("uniform", "greedy")


@dataclass
class SparsifySettings(Settings):
    """The arguments of :func:`sparsify_activations`; the keys of ``sparsify`` recipes and ``llmsparse sparsify``'s flags."""

    method: str = setting("teal", "activation sparsity method", choices=ACTIVATION_METHODS)
    sparsity: float | None = setting(None, "fraction of activations zeroed, in [0, 1) (required)")
    calib: str | os.PathLike | torch.Tensor | None = calib_setting()
    nsamples: int = nsamples_setting(16)
    seqlen: int = seqlen_setting(512)
    seed: int = seed_setting()
    allocation: str | list[dict] = setting(
        "uniform",
        "uniform: every projection at the target; greedy: TEAL's block-wise search (teal, wina); (Python) one {role: sparsity} dict per layer",
    )
    prefill: str = setting("all", "which prompt tokens are sparsified: all, none, or last-half; decoding always is", choices=PREFILL, flag="--sparsify-prefill")
    method_options: dict | None = setting({}, "options of the method (command line: --<method>-<option>)", cli=False)
    device: str | torch.device | None = device_setting()
    text_field: str = text_field_setting()
    greedy_step: float = setting(0.05, "greedy: sparsity step of a q-sized projection", check=in_range(0, 1, low_open=True))
    greedy_samples: int = setting(4, "greedy: calibration sequences used to measure block error", check=at_least(1))
    greedy_error: str = setting(
        "relative",
        "greedy: block-output error to minimise: relative (each token's squared error over its squared norm), "
        "mse (plain squared error), or reference (the TEAL reference's: channel L2 norms over the last quarter of positions)",
        choices=GREEDY_ERRORS,
    )

    def __post_init__(self) -> None:
        self.method_options = {} if self.method_options is None else self.method_options
        super().__post_init__()
        if self.sparsity is None:
            raise SettingsError("give the activation sparsity with --sparsity or in the recipe (sparsity= in Python)")


@torch.no_grad()
def capture(layer: nn.Module, block: Block, hidden, call, device, need_act: bool) -> Captured:
    """Dense inputs of every role (float32, tokens x channels) over all calibration sequences."""
    chunks: dict[str, list[torch.Tensor]] = {role: [] for role in block.linears}
    alias: dict[str, str] = {}  # role -> the first role that read the same tensor
    act_chunks: list[torch.Tensor] = []
    up_sum: list[torch.Tensor] = []
    seen: list[tuple[torch.Tensor, str]] = []

    def pre_hook(role):
        def hook(module, inputs):
            x = inputs[0]
            first = next((r for t, r in seen if t is x), None)
            if first is None:
                seen.append((x, role))
                chunks[role].append(x.reshape(-1, x.shape[-1]).float())
            else:
                alias[role] = first

        return hook

    handles = [m.register_forward_pre_hook(pre_hook(role)) for role, m in block.linears.items()]
    if need_act:
        handles.append(block.act.register_forward_hook(lambda m, i, out: act_chunks.append(out.reshape(-1, out.shape[-1]).float())))
        handles.append(
            block.linears["up"].register_forward_hook(lambda m, i, out: up_sum.append(out.reshape(-1, out.shape[-1]).float().abs().sum(0)))
        )
    try:
        for h in hidden:
            seen.clear()
            forward_layer(layer, h, call, device)
    finally:
        for handle in handles:
            handle.remove()
    inputs = {role: torch.cat(parts) for role, parts in chunks.items() if parts}
    for role, first in alias.items():
        inputs[role] = inputs[first]
    captured = Captured(inputs)
    if need_act:
        captured.act = torch.cat(act_chunks)
        captured.up_abs_mean = (torch.stack(up_sum).sum(0) / captured.act.shape[0]).cpu()
    return captured


def _greedy(model, layer, block, method, prepared, hidden, call, device, s: SparsifySettings, path) -> dict[str, float]:
    """TEAL's greedy search for one block: the error is :func:`block_error` of the block output against dense."""
    subset = hidden[: s.greedy_samples]
    dense = [forward_layer(layer, h, call, device) for h in subset]
    weights = {role: w for role, w in block.weights().items() if role in method.roles(block)}

    def error(sparsities: dict[str, float]) -> float:
        with patched(model, method.sites(block, prepared, sparsities)):
            return sum(block_error(forward_layer(layer, h, call, device), d, s.greedy_error) for h, d in zip(subset, dense))

    return greedy_allocation(weights, s.sparsity, error, s.greedy_step, path=path)


def check_request(settings: SparsifySettings) -> ActivationMethod:
    """The configured method, after checking everything that does not need the model."""
    check_sparsity(settings.sparsity)
    act_method = get_activation_method(settings.method, **settings.method_options)
    allocation = settings.allocation
    if not isinstance(allocation, str):
        if "greedy" not in act_method.allocations:
            raise SettingsError(f"{act_method.name} supports allocation {', '.join(act_method.allocations)} only, not per-projection sparsities")
        for i, layer in enumerate(allocation):
            bad = {role: s for role, s in dict(layer).items() if not 0.0 <= float(s) < 1.0}
            if bad:
                raise SparsityError(f"allocation for layer {i}: sparsities must be in [0, 1), got {bad}")
    elif allocation not in ALLOCATIONS:
        raise SettingsError(f"allocation must be one of {', '.join(ALLOCATIONS)} or one dict of role sparsities per layer, got {allocation!r}")
    elif allocation not in act_method.allocations:
        raise SettingsError(f"{act_method.name} supports allocation {', '.join(act_method.allocations)} only, not {allocation!r}")
    return act_method


@api(SparsifySettings)
def sparsify_activations(
    model: nn.Module,
    tokenizer=None,
    method: str = "teal",
    sparsity: float | None = None,
    *,
    calib: str | os.PathLike | torch.Tensor | None = None,
    nsamples: int = 16,
    seqlen: int = 512,
    seed: int = 0,
    allocation: str | list[dict] = "uniform",
    prefill: str = "all",
    method_options: dict | None = None,
    device: str | torch.device | None = None,
    text_field: str = "text",
    greedy_step: float = 0.05,
    greedy_samples: int = 4,
    greedy_error: str = "relative",
) -> ActivationReport:
    """Calibrate ``method`` (``teal``, ``wina``, ``chess``) for ``sparsity`` and attach it to ``model``.

    The model's weights are not changed: its forward zeroes activations from now on (call
    :func:`llmsparse.activation.detach` to undo). ``calib`` is a file, a Hub dataset, ``'self'``
    or an id tensor, as for pruning; 16 x 512 tokens by default. ``allocation='greedy'`` runs
    TEAL's block-wise search on the first ``greedy_samples`` sequences with steps of ``greedy_step``
    (its steps land in ``report.greedy_paths``; :func:`llmsparse.activation.greedy.replay` turns them
    into the allocation for any lower target), minimising ``greedy_error`` (see
    :func:`llmsparse.activation.greedy.block_error`). ``allocation`` may also be one ``{role: sparsity}``
    dict per layer. Everything is checked before any calibration work.
    """
    s = SparsifySettings.of(locals())
    start = time.perf_counter()
    act_method = check_request(s)
    check_weights(model)  # NaN/inf weights would give NaN thresholds without a word
    blocks = find_blocks(model)
    for block in blocks:
        act_method.check(block)
    allocation = s.allocation
    explicit = None if isinstance(allocation, str) else [dict(layer) for layer in allocation]
    if explicit is not None:
        if len(explicit) != len(blocks):
            raise SettingsError(f"allocation has {len(explicit)} layers, the model has {len(blocks)}")
        for block, layer in zip(blocks, explicit):
            unknown = set(layer) - set(act_method.roles(block))
            if unknown:
                raise SettingsError(
                    f"allocation for layer {block.index} names {', '.join(sorted(unknown))}; {act_method.name} sparsifies {', '.join(act_method.roles(block))}"
                )
        allocation = "explicit"
    device = resolve_device(s.device)
    detach(model)  # calibrate the dense model

    layers: list[dict[str, float]] = []
    paths: list[list[tuple[str, float]]] = []
    sites: dict[str, Site] = {}
    calibration = None

    def build(block, prepared, layer, hidden, call):
        if allocation == "greedy":
            paths.append([])
            chosen = _greedy(model, layer, block, act_method, prepared, hidden, call, device, s, paths[-1])
        elif explicit is not None:
            chosen = {role: float(explicit[block.index].get(role, 0.0)) for role in act_method.roles(block)}
        else:
            chosen = {role: s.sparsity for role in act_method.roles(block)}
        layers.append(chosen)
        sites.update(act_method.sites(block, prepared, chosen))

    if act_method.needs_calibration(allocation):
        what = f"{act_method.name} with {allocation} allocation"
        ids, calibration = calibration_batch(model, tokenizer, s.calib, s.nsamples, s.seqlen, s.seed, s.text_field, what)
        layout = find_layers(model)
        run = engine.Run(layout, device, cpu.compute_dtype(next(layout.layers[0].parameters()).dtype, device))
        with engine.LayerWalk(run, ids, key="sparsify", desc=f"{act_method.name} calibration") as walk:
            for visit in walk:
                block = blocks[visit.index]
                captured = capture(visit.layer, block, visit.hidden, visit.call, device, act_method.needs_act)
                check_inputs(f"layer {visit.index}", {**captured.inputs, "activation": captured.act, "up mean": captured.up_abs_mean})
                build(block, act_method.prepare(block, captured), visit.layer, visit.hidden, visit.call)
    else:
        for block in tqdm(blocks, desc=f"{act_method.name} sites", leave=False):
            build(block, act_method.prepare(block, None), None, None, None)

    options = dict(s.method_options)
    attach(model, sites, {"method": act_method.name, "sparsity": s.sparsity, "allocation": allocation, "prefill": s.prefill, "options": options})
    return ActivationReport(
        method=act_method.name,
        sparsity=s.sparsity,
        allocation=allocation,
        prefill=s.prefill,
        options=options,
        calibration=calibration,
        layers=layers,
        paper_sparsity=act_method.paper_sparsity(blocks, layers, s.sparsity),
        paper_definition=act_method.paper_definition,
        greedy_paths=paths or None,
        greedy_error=s.greedy_error if allocation == "greedy" else None,
        elapsed_s=time.perf_counter() - start,
    )
