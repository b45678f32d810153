"""``sparsify_activations()``: calibrate an activation sparsifier on a model, layer by layer, and attach it.

Calibration statistics come from the *dense* model (as in the TEAL reference): the engine walks
the decoder one block at a time; for each block the method digests that block's dense inputs
(``prepare``), TEAL's greedy search (optional) picks per-projection sparsities by the block's
output error, and the resulting sites are attached to the model at the end.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import engine
from ..calibration import calibration_batch
from ..evaluation.ppl import EvaluationError, eval_text
from ..masks import SparsityError
from ..models import find_layers
from ..pruning import resolve_device
from .base import ActivationMethod, Captured, check_sparsity
from .report import ActivationReport, common_sparsity, skipped_fractions
from .runtime import PREFILL, Site, attach, counting, detach, patched, settings_of, sites_of
from .sites import Block, find_blocks
from .teal import block_error, check_greedy_error, greedy_allocation

ALLOCATIONS = ("uniform", "greedy")


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
            engine._forward(layer, h, call, device)
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


def _greedy(model, layer, block, method, prepared, hidden, call, device, target, step, samples, kind, path) -> dict[str, float]:
    """TEAL's greedy search for one block: the error is :func:`block_error` of the block output against dense."""
    subset = hidden[:samples]
    dense = [engine._forward(layer, h, call, device) for h in subset]
    weights = {role: w for role, w in block.weights().items() if role in method.roles(block)}

    def error(sparsities: dict[str, float]) -> float:
        with patched(model, method.sites(block, prepared, sparsities)):
            return sum(block_error(engine._forward(layer, h, call, device), d, kind) for h, d in zip(subset, dense))

    return greedy_allocation(weights, target, error, step, path=path)


def check_request(
    method: str, sparsity: float, allocation: str | Sequence[dict], prefill: str, method_options: dict | None = None, greedy_error: str = "relative"
) -> ActivationMethod:
    """The configured method, after checking everything that does not need the model."""
    from . import get_activation_method

    check_sparsity(sparsity)
    check_greedy_error(greedy_error)
    act_method = get_activation_method(method, **(method_options or {}))
    if not isinstance(allocation, str):
        if "greedy" not in act_method.allocations:
            raise ValueError(f"{act_method.name} supports allocation {', '.join(act_method.allocations)} only, not per-projection sparsities")
        for i, layer in enumerate(allocation):
            bad = {role: s for role, s in dict(layer).items() if not 0.0 <= float(s) < 1.0}
            if bad:
                raise SparsityError(f"allocation for layer {i}: sparsities must be in [0, 1), got {bad}")
    elif allocation not in ALLOCATIONS:
        raise ValueError(f"allocation must be one of {', '.join(ALLOCATIONS)} or one dict of role sparsities per layer, got {allocation!r}")
    elif allocation not in act_method.allocations:
        raise ValueError(f"{act_method.name} supports allocation {', '.join(act_method.allocations)} only, not {allocation!r}")
    if prefill not in PREFILL:
        raise ValueError(f"prefill must be one of {', '.join(PREFILL)}, got {prefill!r}")
    return act_method


def sparsify_activations(
    model: nn.Module,
    tokenizer=None,
    method: str = "teal",
    sparsity: float = 0.5,
    calib: str | torch.Tensor | None = None,
    nsamples: int = 16,
    seqlen: int = 512,
    seed: int = 0,
    allocation: str | Sequence[dict[str, float]] = "uniform",
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
    (its steps land in ``report.greedy_paths``; :func:`llmsparse.activation.teal.replay` turns them
    into the allocation for any lower target), minimising ``greedy_error`` (see
    :func:`llmsparse.activation.teal.block_error`). ``allocation`` may also be one ``{role: sparsity}``
    dict per layer. Everything is checked before any calibration work.
    """
    start = time.perf_counter()
    act_method = check_request(method, sparsity, allocation, prefill, method_options, greedy_error)
    blocks = find_blocks(model)
    for block in blocks:
        act_method.check(block)
    explicit = None if isinstance(allocation, str) else [dict(layer) for layer in allocation]
    if explicit is not None:
        if len(explicit) != len(blocks):
            raise ValueError(f"allocation has {len(explicit)} layers, the model has {len(blocks)}")
        for block, layer in zip(blocks, explicit):
            unknown = set(layer) - set(act_method.roles(block))
            if unknown:
                raise ValueError(f"allocation for layer {block.index} names {', '.join(sorted(unknown))}; {act_method.name} sparsifies {', '.join(act_method.roles(block))}")
        allocation = "explicit"
    device = resolve_device(device)
    detach(model)  # calibrate the dense model

    layers: list[dict[str, float]] = []
    paths: list[list[tuple[str, float]]] = []
    sites: dict[str, Site] = {}
    calibration = None

    def build(block, prepared, layer, hidden, call):
        if allocation == "greedy":
            paths.append([])
            chosen = _greedy(model, layer, block, act_method, prepared, hidden, call, device, sparsity, greedy_step, greedy_samples, greedy_error, paths[-1])
        elif explicit is not None:
            chosen = {role: float(explicit[block.index].get(role, 0.0)) for role in act_method.roles(block)}
        else:
            chosen = {role: sparsity for role in act_method.roles(block)}
        layers.append(chosen)
        sites.update(act_method.sites(block, prepared, chosen))

    if act_method.needs_calibration(allocation):
        what = f"{act_method.name} with {allocation} allocation"
        ids, calibration = calibration_batch(model, tokenizer, calib, nsamples, seqlen, seed, text_field, what)
        layout = find_layers(model)
        dtype = engine.compute_dtype(next(layout.layers[0].parameters()).dtype, device)

        def visit(i, layer, hidden, call, masters):
            block = blocks[i]
            captured = capture(layer, block, hidden, call, device, act_method.needs_act)
            build(block, act_method.prepare(block, captured), layer, hidden, call)

        engine.walk_layers(layout, ids, device, dtype, visit, f"{act_method.name} calibration")
    else:
        for block in tqdm(blocks, desc=f"{act_method.name} sites", leave=False):
            build(block, act_method.prepare(block, None), None, None, None)

    settings = {
        "method": act_method.name,
        "sparsity": sparsity,
        "allocation": allocation,
        "prefill": prefill,
        "options": dict(method_options or {}),
    }
    attach(model, sites, settings)
    return ActivationReport(
        method=act_method.name,
        sparsity=sparsity,
        allocation=allocation,
        prefill=prefill,
        options=dict(method_options or {}),
        calibration=calibration,
        layers=layers,
        paper_sparsity=act_method.paper_sparsity(blocks, layers, sparsity),
        paper_definition=act_method.paper_definition,
        greedy_paths=paths or None,
        greedy_error=greedy_error if allocation == "greedy" else None,
        elapsed_s=time.perf_counter() - start,
    )


@torch.no_grad()
def measure_activation_sparsity(model: nn.Module, tokenizer, source: str, seqlen: int = 1024, windows: int = 4) -> dict:
    """The common figure on evaluation text: parameter-weighted fraction of block-Linear weights skipped per token.

    Runs ``windows`` windows of ``seqlen`` tokens from ``source`` through the model as it is
    configured (including its prefill convention) and counts the zeroed entries at every site.
    """
    if settings_of(model) is None:
        raise ValueError("the model has no activation sparsity attached (run sparsify_activations or load a sparsified model)")
    ids = tokenizer(eval_text(source), return_tensors="pt").input_ids[0]
    count = min(windows, ids.numel() // seqlen)
    if count < 1:
        raise EvaluationError(f"{source} has {ids.numel()} tokens, fewer than one window of {seqlen}")
    device = next(model.parameters()).device
    names = {name: site.role for name, site in sites_of(model).items()}
    with counting(model) as counts:
        for w in tqdm(range(count), desc="measuring activation sparsity", leave=False):
            model(ids[w * seqlen : (w + 1) * seqlen].unsqueeze(0).to(device), use_cache=False)
    blocks = find_blocks(model)
    per_block, by_role = [], {}
    for block in blocks:
        members = {block.names.get(r) or block.act_name: r for r in [*block.linears, "act"]}
        zeros = {names[n]: counts[n][0] / counts[n][1] for n in members if n in counts and counts[n][1]}
        per_block.append(skipped_fractions(block, zeros))
        for role, frac in zeros.items():
            by_role.setdefault(role, []).append(frac)
    return {
        "overall": common_sparsity(blocks, per_block),
        "by_role": {role: sum(v) / len(v) for role, v in by_role.items()},
        "source": str(source),
        "seqlen": seqlen,
        "windows": count,
        "tokens": count * seqlen,
    }
