"""Pruning one decoder layer at a time: statistics, the method's mask and update, then the passes after it.

The engine (:class:`~llmsparse.core.engine.LayerWalk`) hands over each layer with its calibration
inputs; here each group of matrices gets its statistics (one :class:`~llmsparse.core.stats.Bundle`
per shared input: the method's own plus those of the passes), the method prunes each matrix, and
every pass after the method (weight reconstruction on the fixed mask, then quantization) refines the
result without changing which weights are zero. A pass that targets the dense model's outputs makes
the walk run a dense stream alongside, and its statistics pair each pruned-stream input with the
dense one, taken from a dense copy of the layer so that ``true_sequential`` groups see dense inputs too.
A run's fixed facts travel in one :class:`PruneContext`.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..core.engine import LayerVisit, LayerWalk, Run
from ..core.forward import matrix_inputs
from ..core.layout import get_weight
from ..core.masks import Pattern
from ..core.quantgrid import STATE_ATTR
from ..core.stats import Bundle
from ..gpu.oom import layer_oom
from ..methods import Method
from .passes import Pass
from .realised import check_realised
from .report import MatrixReport


@dataclass
class PruneContext:
    """What stays fixed while a model is pruned: the engine's :class:`Run`, the method, its targets and the passes after it.

    ``targets`` maps a layer index to its matrices by name; ``sparsities[i]`` is layer i's target.
    """

    run: Run
    method: Method
    targets: dict[int, dict[str, nn.Module]]
    sparsities: list[float]
    pattern: Pattern
    passes: list[Pass] = field(default_factory=list)
    true_sequential: bool = False

    @property
    def calibrated(self) -> bool:
        """True when the method or a pass needs calibration inputs."""
        return self.method.needs_calibration or any(p.needs_calibration for p in self.passes)

    def new_stats(self, columns: int, device) -> Bundle:
        """The statistics of one input: the method's own plus each pass's (a pass may share the method's)."""
        own = self.method.new_stats(columns, device)
        return Bundle(own, [p.new_stats(columns, device, own) for p in self.passes])


def prune_matrix(ctx: PruneContext, visit: LayerVisit, name: str, module: nn.Module, stats) -> dict:
    """Prune the master (stored) weight of ``module``, run the passes, and refresh its compute copy for the re-run.

    Returns the matrix's :class:`~llmsparse.pruning.report.MatrixReport` as a dict (a streamed run keeps it
    in its resume state; the weight itself is not kept).
    """
    sparsity = ctx.sparsities[visit.index]
    master = visit.master(module)
    dense = master.to(ctx.run.device, torch.float32)
    bundle = stats if isinstance(stats, Bundle) else None
    zeros_before = int((dense == 0).sum())
    result = ctx.method.prune(dense, bundle.method if bundle else stats, sparsity, ctx.pattern, name=name)
    for p, p_stats in zip(ctx.passes, bundle.passes if bundle else [None] * len(ctx.passes)):
        result = p.apply(name, dense, result, p_stats, ctx.pattern)
    module.__dict__.pop(STATE_ATTR, None)  # a matrix pruned again is no longer on its old grid
    if result.quant is not None:
        setattr(module, STATE_ATTR, result.quant)  # the grid parameters, for exports that store codes
    master.copy_(result.weight)  # rounds to the storage dtype: the re-run sees exactly the saved weights
    get_weight(module).copy_(master)
    zeros = check_realised(name, zeros_before, master, sparsity, ctx.pattern, result.quant is not None, ctx.method.name)  # never a silent miss
    report = MatrixReport(name, visit.index, list(master.shape), sparsity, zeros, result.error, result.notes)
    return asdict(report)


def _dense_inputs(ctx: PruneContext, visit: LayerVisit, matrices: dict[str, nn.Module]):
    """Sequence index -> each matrix's input on the dense stream, from a dense copy of the visited layer."""
    twin = copy.deepcopy(visit.layer)
    prefix = ctx.run.layout.layer_name(visit.index)
    twins = {name: twin.get_submodule(name[len(prefix) + 1 :]) for name in matrices}
    back = {id(m): name for name, m in twins.items()}

    def inputs(j: int) -> dict[str, torch.Tensor]:
        found = matrix_inputs(twin, twins, visit.dense[j], visit.call, ctx.run.device)
        return {back[id(twins[name])]: x for name, x in found.items()}

    return inputs


def prune_layer(ctx: PruneContext, visit: LayerVisit) -> list[dict]:
    """Prune the targeted matrices of the visited layer, group by group of matrices that share an input."""
    matrices = ctx.targets.get(visit.index, {})
    if visit.hidden is None:  # nothing to calibrate: each matrix from its weights alone
        return [prune_matrix(ctx, visit, name, module, None) for name, module in matrices.items()]
    if not matrices:
        return []
    rows = []
    dense = _dense_inputs(ctx, visit, matrices) if visit.dense is not None else None
    for group in visit.groups(matrices) if ctx.true_sequential else [list(matrices)]:
        subset = {name: matrices[name] for name in group}
        stats = visit.stats(subset, ctx.new_stats, dense)
        rows.extend(prune_matrix(ctx, visit, name, module, stats[name]) for name, module in subset.items())
        del stats  # free this group's statistics (Hessians can be large) before the next group's
    return rows


@torch.no_grad()
def prune_layers(ctx: PruneContext, input_ids: torch.Tensor | None) -> list[MatrixReport]:
    """Prune every targeted matrix, layer by layer; the same code prunes an in-memory model and a streamed checkpoint.

    Calibration forwards run in ``ctx.run.dtype``; statistics and the pruning math are float32, and
    the stored weights keep their own dtype. ``ctx.passes`` run after the method on every matrix, in order.
    """
    dense_stream = any(p.needs_dense for p in ctx.passes)
    ids = input_ids if ctx.calibrated else None
    at = ["the calibration inputs"]
    nsamples, seqlen = ids.shape if ids is not None else (0, 0)
    with layer_oom(lambda: at[0], nsamples, seqlen), LayerWalk(ctx.run, ids, key="prune", desc=f"{ctx.method.name} layers", changes=True, dense_stream=dense_stream) as walk:
        for visit in walk:
            at[0] = f"layer {visit.index}"
            visit.result = prune_layer(ctx, visit)
    return [MatrixReport(**row) for rows in walk.results for row in rows]
