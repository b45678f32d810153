"""``prune()``: one-shot, layer-by-layer pruning of an in-memory causal LM (the API the CLI wraps)."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence

import torch
from torch import nn

from . import budgets, engine, masks
from .calibration import calibration_batch
from .methods import get_method
from .models import ModelError, find_layers, get_weight, matrix_modules, parse_dtype
from .report import MatrixReport, PruneReport


def select_targets(
    model: nn.Module, targets: Sequence[str] | None = None, ignore: Sequence[str] | None = None
) -> dict[int, dict[str, nn.Module]]:
    """Matrices to prune per decoder layer: all Linear/Conv1D inside the blocks, filtered by name regexes.

    ``targets`` keeps names matching any regex (``re.search``), ``ignore`` drops names matching any.
    Embeddings and ``lm_head`` sit outside the decoder blocks and are never selected.
    """
    layout = find_layers(model)
    chosen: dict[int, dict[str, nn.Module]] = {}
    for i, layer in enumerate(layout.layers):
        for name, module in matrix_modules(layer, layout.layer_name(i)).items():
            if targets and not any(re.search(p, name) for p in targets):
                continue
            if ignore and any(re.search(p, name) for p in ignore):
                continue
            chosen.setdefault(i, {})[name] = module
    if not chosen:
        raise ModelError(f"no matrices selected for pruning (targets={list(targets or [])}, ignore={list(ignore or [])})")
    return chosen


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a torch device; ``None`` means cuda when available, else cpu."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def prune(
    model: nn.Module,
    tokenizer=None,
    method: str = "wanda",
    sparsity: float | None = None,
    pattern: str | None = None,
    calib: str | torch.Tensor | None = None,
    nsamples: int = 128,
    seqlen: int = 2048,
    seed: int = 0,
    targets: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
    true_sequential: bool = False,
    method_options: dict | None = None,
    device: str | torch.device | None = None,
    compute_dtype: str | torch.dtype | None = None,
    text_field: str = "text",
    layer_budget: str | Sequence[float] = "uniform",
    owl_m: float = budgets.OWLConfig.m,
    owl_lambda: float = budgets.OWLConfig.lam,
) -> PruneReport:
    """Prune ``model`` in place and return a :class:`PruneReport`.

    ``method`` is a registered name (``magnitude``, ``wanda``, ``sparsegpt``); ``pattern`` is
    ``unstructured`` or ``N:M`` (N zeros in every M weights, which fixes the sparsity to N/M).
    Calibrated methods need ``calib``: a file path, a Hub name (``c4``, ``wikitext2``, ``ptb``),
    ``'self'`` (text the model generates) or a ready ``[nsamples, seqlen]`` id tensor. Defaults
    (128 x 2048 tokens, seed 0) follow the papers. Every input is checked before any weight changes.

    ``compute_dtype`` sets the dtype of the calibration forward passes (default: the model's,
    float32 for float16 models on CPU); statistics and pruning math are always float32 and the
    model keeps its own dtype.

    ``layer_budget`` spreads the sparsity over decoder layers: ``uniform``, ``owl`` (outlier-weighted,
    with ``owl_m`` and ``owl_lambda``; needs calibration data even for magnitude) or one sparsity per layer.
    """
    pruner = get_method(method, **(method_options or {}))
    if any(p.device.type == "meta" for p in model.parameters()):
        raise ModelError(
            "the model has offloaded (meta) parameters from an accelerate device_map; load it on CPU instead "
            "and pass device='cuda': llmsparse moves one decoder layer at a time to the GPU"
        )
    sparsity, pat = masks.resolve_target(sparsity, pattern)
    pruner.check(pat)
    layout = find_layers(model)
    budgets.check_budget(layer_budget, pat, len(layout.layers))
    owl = budgets.OWLConfig(owl_m, owl_lambda)
    chosen = select_targets(model, targets, ignore)
    for matrices in chosen.values():
        for name, module in matrices.items():
            masks.check_width(name, get_weight(module).shape[1], pat)
    device = resolve_device(device)
    dtype = parse_dtype(compute_dtype) or engine.compute_dtype(next(layout.layers[0].parameters()).dtype, device)

    started = time.perf_counter()
    ids = None
    calibration = None
    if pruner.needs_calibration or layer_budget == "owl":
        needs = f"method {method!r}" if pruner.needs_calibration else "the OWL layer budget"
        ids, calibration = calibration_batch(model, tokenizer, calib, nsamples, seqlen, seed, text_field, needs)
    calibrated = time.perf_counter()

    was_training = model.training
    model.eval()
    try:
        sparsities, budget_info = budgets.layer_sparsities(layer_budget, sparsity, layout, chosen, ids, device, dtype, owl)
        results = engine.prune_layers(layout, pruner, chosen, sparsities, pat, ids, device, true_sequential, dtype)
    finally:
        model.train(was_training)
    finished = time.perf_counter()

    modules = {name: module for matrices in chosen.values() for name, module in matrices.items()}
    rows = []
    for r in results:
        weight = get_weight(modules[r.name])
        rows.append(
            MatrixReport(r.name, r.layer, list(weight.shape), r.sparsity, int((weight == 0).sum()), r.result.error, r.result.notes)
        )
    return PruneReport(
        method=method,
        options=pruner.options() | ({"true_sequential": True} if true_sequential else {}),
        pattern=str(pat),
        sparsity=sparsity,
        matrices=rows,
        calibration=calibration,
        layer_budget=budget_info,
        seconds={"calibration_data": calibrated - started, "prune": finished - calibrated, "total": finished - started},
    )
