"""Pruning one decoder layer at a time: statistics, the method's mask and update, then the passes after it.

For every layer the engine (:mod:`llmsparse.core.engine`) provides the calibration inputs; here each
group of matrices gets its statistics (one :class:`~llmsparse.core.stats.Bundle` per shared input: the
method's own plus those of the passes), the method prunes each matrix, and every pass after the
method (weight reconstruction on the fixed mask, then quantization) refines the result
without changing which weights are zero. A pass that targets the dense model's outputs makes the
engine run a dense stream alongside, and its statistics pair each pruned-stream input with the
dense one, taken from a dense copy of the layer so that ``true_sequential`` groups see dense inputs too.
"""

from __future__ import annotations

import copy
from dataclasses import asdict

import torch
from torch import nn

from ..core.cpu import compute_dtype
from ..core.engine import Resident, collect_stats, input_groups, master_weight, matrix_inputs, walk_layers
from ..core.layout import DecoderLayout, get_weight
from ..core.masks import Pattern
from ..core.quantgrid import STATE_ATTR
from ..core.stats import Bundle
from ..methods import Method
from .passes import Pass
from .realised import check_realised
from .report import MatrixReport


def _prune_matrix(method: Method, passes: list[Pass], name, layer, module, masters: dict, stats, sparsity, pattern, device) -> dict:
    """Prune the master (stored) weight of ``module``, run the passes, and refresh its compute copy for the re-run.

    Returns the matrix's :class:`~llmsparse.pruning.report.MatrixReport` as a dict (a streamed run keeps it
    in its resume state; the weight itself is not kept).
    """
    master = master_weight(module, masters)
    dense = master.to(device, torch.float32)
    bundle = stats if isinstance(stats, Bundle) else None
    zeros_before = int((dense == 0).sum())
    result = method.prune(dense, bundle.method if bundle else stats, sparsity, pattern, name=name)
    for p, p_stats in zip(passes, bundle.passes if bundle else [None] * len(passes)):
        result = p.apply(name, dense, result, p_stats, pattern)
    module.__dict__.pop(STATE_ATTR, None)  # a matrix pruned again is no longer on its old grid
    if result.quant is not None:
        setattr(module, STATE_ATTR, result.quant)  # the grid parameters, for exports that store codes
    master.copy_(result.weight)  # rounds to the storage dtype: the re-run sees exactly the saved weights
    get_weight(module).copy_(master)
    zeros = check_realised(name, zeros_before, master, sparsity, pattern, result.quant is not None, method.name)  # issue 31: never a silent miss
    report = MatrixReport(name, layer, list(master.shape), sparsity, zeros, result.error, result.notes)
    return asdict(report)


def _dense_inputs(layer: nn.Module, prefix: str, matrices: dict[str, nn.Module], dense: list, call, device):
    """Sequence index -> each matrix's input on the dense stream, from a dense copy of ``layer``."""
    twin = copy.deepcopy(layer)
    twins = {name: twin.get_submodule(name[len(prefix) + 1 :]) for name in matrices}
    back = {id(m): name for name, m in twins.items()}

    def inputs(j: int) -> dict[str, torch.Tensor]:
        found = matrix_inputs(twin, twins, dense[j], call, device)
        return {back[id(twins[name])]: x for name, x in found.items()}

    return inputs


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
    passes: list[Pass] | None = None,
    store: Resident | None = None,
) -> list[MatrixReport]:
    """Prune ``targets`` (layer index -> {name: matrix}) layer by layer; ``sparsities[i]`` is layer i's target.

    Calibration forwards run in ``dtype`` (default: :func:`compute_dtype`); statistics and the
    pruning math are float32, and the stored weights keep their own dtype. ``passes`` run after the
    method on every matrix, in order. ``store`` holds the layers (:func:`~llmsparse.core.engine.walk_layers`);
    the same code prunes an in-memory model and a streamed checkpoint.
    """
    device = torch.device(device)
    passes = list(passes or [])
    dtype = dtype or compute_dtype(next(layout.layers[0].parameters()).dtype, device)

    def new_stats(columns, dev):
        own = method.new_stats(columns, dev)
        return Bundle(own, [p.new_stats(columns, dev, own) for p in passes])

    def visit(i, layer, hidden, call, masters, dense=None) -> list[dict]:
        matrices = targets.get(i, {})
        if hidden is None:  # nothing to calibrate: each matrix from its weights alone
            return [_prune_matrix(method, passes, n, i, m, masters, None, sparsities[i], pattern, device) for n, m in matrices.items()]
        if not matrices:
            return []
        rows = []
        inputs = _dense_inputs(layer, layout.layer_name(i), matrices, dense, call, device) if dense is not None else None
        groups = input_groups(layer, matrices, hidden[0], call, device) if true_sequential else [list(matrices)]
        for group in groups:
            subset = {n: matrices[n] for n in group}
            stats = collect_stats(layer, subset, hidden, call, device, new_stats, inputs)
            for name, module in subset.items():
                rows.append(_prune_matrix(method, passes, name, i, module, masters, stats[name], sparsities[i], pattern, device))
            del stats  # free this group's statistics (Hessians can be large) before the next group's
        return rows

    calibrated = method.needs_calibration or any(p.needs_calibration for p in passes)
    per_layer = walk_layers(
        layout, input_ids if calibrated else None, device, dtype, visit, f"{method.name} layers",
        dense_stream=any(p.needs_dense for p in passes), store=store, key="prune", changes=True,
    )
    return [MatrixReport(**row) for rows in per_layer for row in rows]
