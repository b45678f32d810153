"""``prune()``: one-shot, layer-by-layer pruning of an in-memory causal LM (the API the CLI wraps).

Its settings are :class:`PruneSettings`, which also give the ``prune`` recipe keys and CLI flags.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
from torch import nn

from . import budgets, engine, layerwise, masks
from .calibration import calib_setting, calibration_batch, nsamples_setting, seed_setting, seqlen_setting, text_field_setting
from .checks import check_weights, guard_statistics
from .errors import ModelError
from .layout import find_layers, get_weight, resolve_device, select_targets
from .methods import METHODS, Method, get_method
from .models import parse_dtype
from .reconstruct import DEFAULT_ITERS, SOLVERS, TARGETS, Reconstruction
from .report import MatrixReport, PruneReport
from .settings import Settings, api, device_setting, regex, setting


@dataclass
class PruneSettings(Settings):
    """The arguments of :func:`prune`; the recipe keys of ``prune`` recipes and ``llmsparse prune``'s flags."""

    method: str = setting("wanda", "pruning method", choices=METHODS)
    sparsity: float | None = setting(None, "fraction of weights set to zero, in [0, 1) (implied by an N:M pattern)")
    pattern: str | None = setting(None, "'unstructured' (default) or N:M, e.g. 2:4 = 2 zeros in every 4 consecutive inputs")
    calib: str | os.PathLike | torch.Tensor | None = calib_setting()
    nsamples: int = nsamples_setting(128)
    seqlen: int = seqlen_setting(2048)
    seed: int = seed_setting()
    targets: str | list[str] | None = setting(None, "prune only matrices whose name matches one of these regexes", nargs="+", metavar="REGEX", check=regex)
    ignore: str | list[str] | None = setting(None, "skip matrices whose name matches one of these regexes", nargs="+", metavar="REGEX", check=regex)
    true_sequential: bool = setting(False, "re-collect inputs after each group of matrices inside a layer ([q,k,v] -> o -> [gate,up] -> down)")
    method_options: dict | None = setting({}, "options of the method (command line: --<method>-<option>)", cli=False)
    device: str | torch.device | None = device_setting()
    compute_dtype: str | torch.dtype | None = setting(
        "auto",
        "dtype of the calibration forward passes: auto (the model's where the device runs it natively, else float32: "
        "bf16 needs AVX-512 BF16/AMX or a bf16 GPU), float32, bfloat16 or float16; statistics and pruning math are float32 either way",
        recipe=False,
    )
    text_field: str = text_field_setting()
    layer_budget: str | list[float] = setting("uniform", "how sparsity is spread over decoder layers: uniform, owl (outlier-weighted), or (Python) one sparsity per layer", choices=budgets.BUDGETS)
    owl_m: float = setting(budgets.OWLConfig.m, f"OWL: {budgets.OWLConfig.help('m')}")
    owl_lambda: float = setting(budgets.OWLConfig.lam, f"OWL: {budgets.OWLConfig.help('lam')}")
    reconstruct: str = setting(
        "none",
        "after the mask, re-solve the kept weights of every matrix by least squares: none, admm (Boza 2024) or pcg (conjugate gradients)",
        choices=("none", *SOLVERS),
    )
    reconstruct_target: str = setting(
        "pruned",
        "reconstruct toward the dense layer's outputs on the pruned model's inputs (pruned) or on the dense model's inputs "
        "(dense: also corrects error carried from earlier layers; keeps a second activation stream)",
        choices=TARGETS,
    )
    reconstruct_iters: int | None = setting(None, f"solver iterations (default: {', '.join(f'{k} {v}' for k, v in DEFAULT_ITERS.items())})")
    reconstruct_damp: float = setting(0.01, "ridge toward the dense weights, relative to each input's energy H_jj")

    def __post_init__(self) -> None:
        # a lone regex is one pattern (iterating it would match character by character)
        self.targets = [self.targets] if isinstance(self.targets, str) else self.targets
        self.ignore = [self.ignore] if isinstance(self.ignore, str) else self.ignore
        self.method_options = {} if self.method_options is None else self.method_options
        super().__post_init__()


def check_request(settings: PruneSettings) -> tuple[Method, float, masks.Pattern]:
    """Everything about a prune request that can be checked without the model: ``(method, sparsity, pattern)``.

    The calibration source is checked where it is read (:func:`calibration_needs` says who needs one).
    """
    pruner = get_method(settings.method, **settings.method_options)
    sparsity, pattern = masks.resolve_target(settings.sparsity, settings.pattern)
    pruner.check(pattern)
    budgets.check_budget(settings.layer_budget, pattern)
    return pruner, sparsity, pattern


def calibration_needs(pruner: Method, settings: PruneSettings) -> str | None:
    """Who needs calibration data in this run (for messages), or None when the run needs none."""
    if pruner.needs_calibration:
        return f"method {pruner.name!r}"
    if settings.reconstruct != "none":
        return f"--reconstruct {settings.reconstruct}"
    return "the OWL layer budget" if settings.layer_budget == "owl" else None


def passes(settings: PruneSettings) -> list[Reconstruction]:
    """The passes after the method that ``settings`` ask for."""
    if settings.reconstruct == "none":
        return []
    return [Reconstruction(settings.reconstruct, settings.reconstruct_target, settings.reconstruct_iters, settings.reconstruct_damp)]


@api(PruneSettings)
def prune(model: nn.Module, tokenizer=None, s: PruneSettings = None) -> PruneReport:
    """Prune ``model`` in place and return a :class:`PruneReport`.

    ``method`` is a registered name (``magnitude``, ``wanda``, ``sparsegpt``); ``pattern`` is
    ``unstructured`` or ``N:M`` (N zeros in every M weights, which fixes the sparsity to N/M).
    Calibrated methods need ``calib``: a file path, a Hub name (``c4``, ``wikitext2``, ``ptb``),
    ``'self'`` (text the model generates) or a ready ``[nsamples, seqlen]`` id tensor. Defaults
    (128 x 2048 tokens, seed 0) follow the papers. Every input is checked before any weight changes.

    ``compute_dtype`` sets the dtype of the calibration forward passes (default ``auto``: the model's
    where the device runs it natively, float32 otherwise; see :func:`llmsparse.engine.compute_dtype`);
    statistics and pruning math are always float32 and the model keeps its own dtype.

    ``layer_budget`` spreads the sparsity over decoder layers: ``uniform``, ``owl`` (outlier-weighted,
    with ``owl_m`` and ``owl_lambda``; needs calibration data even for magnitude) or one sparsity per layer.
    """
    pruner, sparsity, pat = check_request(s)
    if any(p.device.type == "meta" for p in model.parameters()):
        raise ModelError(
            "the model has offloaded (meta) parameters from an accelerate device_map; load it on CPU instead "
            "and pass device='cuda': llmsparse moves one decoder layer at a time to the GPU"
        )
    check_weights(model)  # a NaN/inf weight would give wrong masks without a word
    guard_statistics(pruner)  # and so would NaN/inf calibration statistics
    layout = find_layers(model)
    budgets.check_layer_count(s.layer_budget, len(layout.layers))
    chosen = select_targets(model, s.targets, s.ignore)
    for matrices in chosen.values():
        for name, module in matrices.items():
            masks.check_width(name, get_weight(module).shape[1], pat)
    device = resolve_device(s.device)
    dtype = engine.compute_dtype(next(layout.layers[0].parameters()).dtype, device, parse_dtype(s.compute_dtype))

    started = time.perf_counter()
    ids = calibration = None
    needs = calibration_needs(pruner, s)
    if needs:
        ids, calibration = calibration_batch(model, tokenizer, s.calib, s.nsamples, s.seqlen, s.seed, s.text_field, needs)
    calibrated = time.perf_counter()

    was_training = model.training
    model.eval()
    try:
        owl = budgets.OWLConfig(s.owl_m, s.owl_lambda)
        sparsities, budget_info = budgets.layer_sparsities(s.layer_budget, sparsity, layout, chosen, ids, device, dtype, owl)
        results = layerwise.prune_layers(layout, pruner, chosen, sparsities, pat, ids, device, s.true_sequential, dtype, passes(s))
    finally:
        model.train(was_training)
    finished = time.perf_counter()

    modules = {name: module for matrices in chosen.values() for name, module in matrices.items()}
    rows = []
    for r in results:
        weight = get_weight(modules[r.name])
        rows.append(MatrixReport(r.name, r.layer, list(weight.shape), r.sparsity, int((weight == 0).sum()), r.result.error, r.result.notes))
    return PruneReport(
        method=s.method,
        options=pruner.options()
        | ({"true_sequential": True} if s.true_sequential else {})
        | ({k: getattr(s, k) for k in ("reconstruct", "reconstruct_target", "reconstruct_iters", "reconstruct_damp")} if s.reconstruct != "none" else {}),
        pattern=str(pat),
        sparsity=sparsity,
        matrices=rows,
        calibration=calibration,
        layer_budget=budget_info,
        seconds={"calibration_data": calibrated - started, "prune": finished - calibrated, "total": finished - started},
    )
