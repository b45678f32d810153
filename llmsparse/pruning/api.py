"""``prune()``: one-shot, layer-by-layer pruning of an in-memory causal LM (the API the CLI wraps).

Its settings are :class:`PruneSettings`, which also give the ``prune`` recipe keys and CLI flags.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core import cpu, engine, masks
from ..core.checks import check_statistics, check_weights
from ..core.cpu import DTYPES, parse_dtype
from ..core.layout import find_layers, get_weight, resolve_device, select_targets
from ..core.memory import peak_rss
from ..core.quantgrid import BITS, QUANTIZE_METHODS, Grid
from ..core.solvers import DEFAULT_ITERS, SOLVERS
from ..data.calibration import calib_setting, calibration_batch, nsamples_setting, seed_setting, seqlen_setting, text_field_setting
from ..methods import METHODS, Method, get_method
from ..settings import Settings, api, at_least, device_setting, regex, setting
from . import budgets, layerwise, offload
from .passes import TARGETS, Quantization, Reconstruction
from .report import PruneReport


def group_size_check(value: int) -> str | None:
    """-1 (per output channel) or a positive number of inputs."""
    return None if value == -1 or value >= 1 else "must be -1 (per output channel) or at least 1"


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
        "dtype of the calibration forward passes: auto (bfloat16 where the device runs it natively: AVX-512 BF16/AMX or a bf16 GPU; "
        "else float32), float32 (the same result on every machine), bfloat16 or float16; statistics and pruning math are float32 either way",
        choices=("auto", *DTYPES),
        recipe=False,
    )
    text_field: str = text_field_setting()
    layer_budget: str | list[float] = setting("uniform", "how sparsity is spread over decoder layers: uniform, owl (outlier-weighted), or (Python) one sparsity per layer", choices=budgets.BUDGETS)
    owl_m: float = budgets.OWLConfig.option("m")
    owl_lambda: float = budgets.OWLConfig.option("lam")
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
    reconstruct_iters: int | None = setting(
        None, f"solver iterations (default: {', '.join(f'{k} {v}' for k, v in DEFAULT_ITERS.items())})", check=at_least(1)
    )
    reconstruct_damp: float = setting(0.01, "ridge toward the dense weights, relative to each input's energy H_jj", check=at_least(0))
    quantize: str = setting(
        "none",
        "quantize the kept weights after pruning (pruned weights stay exactly zero): none, int4 or int8; "
        "sparsegpt prunes and quantizes in one column loop, other methods get a mask-keeping pass",
        choices=("none", *BITS),
    )
    group_size: int = setting(128, "inputs per quantization scale; -1: one scale per output channel", check=group_size_check)
    symmetric: bool = setting(True, "symmetric grid (zero point 0); --asymmetric fits a zero point per group", off_flag="--asymmetric")
    quantize_method: str = setting(
        "gptq", "gptq (error-compensating, keeps the mask; joint with sparsegpt) or rtn (round to nearest)", choices=QUANTIZE_METHODS
    )
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
    if settings.quantize != "none" and settings.quantize_method == "gptq":
        return f"--quantize {settings.quantize} with GPTQ"
    return "the OWL layer budget" if settings.layer_budget == "owl" else None


def grid(settings: PruneSettings) -> Grid | None:
    """The quantization grid ``settings`` ask for (None: no quantization)."""
    return None if settings.quantize == "none" else Grid.named(settings.quantize, settings.group_size, settings.symmetric)


def joint(pruner: Method, settings: PruneSettings) -> bool:
    """True when the method quantizes inside its own loop (SparseGPT + GPTQ, nothing re-solving the weights after it)."""
    return pruner.joint_quantization and settings.quantize_method == "gptq" and settings.reconstruct == "none"


def passes(settings: PruneSettings, pruner: Method, storage: torch.dtype = torch.float32) -> list:
    """The passes after the method that ``settings`` ask for: reconstruction, then quantization (unless the method does it)."""
    chosen: list = []
    if settings.reconstruct != "none":
        chosen.append(Reconstruction(settings.reconstruct, settings.reconstruct_target, settings.reconstruct_iters, settings.reconstruct_damp))
    if grid(settings) is not None and not joint(pruner, settings):
        chosen.append(Quantization(grid(settings), settings.quantize_method, storage_dtype=storage))
    return chosen


def guard_statistics(method: Method) -> Method:
    """Make ``method.prune`` check each matrix's statistics before pruning it, and return ``method``."""
    prune = method.prune

    def checked(weight: torch.Tensor, stats: Any, sparsity: float, pattern, name: str = ""):
        check_statistics(name, stats)
        return prune(weight, stats, sparsity, pattern, name=name)

    method.prune = checked
    return method


@api(PruneSettings)
def prune(
    model: nn.Module,
    tokenizer=None,
    method: str = "wanda",
    sparsity: float | None = None,
    *,
    pattern: str | None = None,
    calib: str | os.PathLike | torch.Tensor | None = None,
    nsamples: int = 128,
    seqlen: int = 2048,
    seed: int = 0,
    targets: str | list[str] | None = None,
    ignore: str | list[str] | None = None,
    true_sequential: bool = False,
    method_options: dict | None = None,
    device: str | torch.device | None = None,
    compute_dtype: str | torch.dtype | None = "auto",
    text_field: str = "text",
    layer_budget: str | list[float] = "uniform",
    owl_m: float = 5.0,
    owl_lambda: float = 0.08,
    reconstruct: str = "none",
    reconstruct_target: str = "pruned",
    reconstruct_iters: int | None = None,
    reconstruct_damp: float = 0.01,
    quantize: str = "none",
    group_size: int = 128,
    symmetric: bool = True,
    quantize_method: str = "gptq",
) -> PruneReport:
    """Prune ``model`` in place and return a :class:`PruneReport`.

    ``method`` is a registered name (``magnitude``, ``wanda``, ``sparsegpt``); ``pattern`` is
    ``unstructured`` or ``N:M`` (N zeros in every M weights, which fixes the sparsity to N/M).
    Calibrated methods need ``calib``: a file path, a Hub name (``c4``, ``wikitext2``, ``ptb``),
    ``'self'`` (text the model generates) or a ready ``[nsamples, seqlen]`` id tensor. Defaults
    (128 x 2048 tokens, seed 0) follow the papers. Every input is checked before any weight changes.

    ``compute_dtype`` sets the dtype of the calibration forward passes (default ``auto``: bf16
    where the device runs it natively, float32 otherwise; see :func:`llmsparse.core.cpu.compute_dtype`);
    statistics and pruning math are always float32 and the model keeps its own dtype.

    ``layer_budget`` spreads the sparsity over decoder layers: ``uniform``, ``owl`` (outlier-weighted,
    with ``owl_m`` and ``owl_lambda``; needs calibration data even for magnitude) or one sparsity per layer.
    """
    s = PruneSettings.of(locals())
    store = None
    if any(p.device.type == "meta" for p in model.parameters()):  # accelerate offload: each layer onloaded while pruned
        store = offload.Offloaded(model, resolve_device(s.device))
    check_weights(model, find_layers(model).layers_name)  # a NaN/inf weight would give wrong masks without a word (offloaded ones: as they load)
    return run_prune(model, tokenizer, s, store)


def run_prune(model: nn.Module, tokenizer, s: PruneSettings, store: engine.Resident | None = None) -> PruneReport:
    """The work of :func:`prune` on ``model`` whose layers ``store`` holds (default: all in memory; a streamed
    checkpoint's skeleton with :class:`llmsparse.checkpoint.stream.Streamed`). Weights are checked by the caller."""
    pruner, sparsity, pat = check_request(s)
    guard_statistics(pruner)  # NaN/inf calibration statistics would give wrong masks without a word
    layout = find_layers(model)
    budgets.check_layer_count(s.layer_budget, len(layout.layers))
    chosen = select_targets(model, s.targets, s.ignore)
    quant = grid(s)
    for matrices in chosen.values():
        for name, module in matrices.items():
            masks.check_width(name, get_weight(module).shape[1], pat)
            if quant is not None:
                quant.check(name, get_weight(module).shape[1])
    storage = next((get_weight(m).dtype for ms in chosen.values() for m in ms.values()), torch.float32)
    if quant is not None and joint(pruner, s):
        pruner.grid, pruner.storage_dtype = quant, storage
    device = resolve_device(s.device)
    dtype = cpu.compute_dtype(next(layout.layers[0].parameters()).dtype, device, parse_dtype(s.compute_dtype))

    started = time.perf_counter()
    ids = calibration = None
    needs = calibration_needs(pruner, s)
    if needs:
        ids, calibration = calibration_batch(model, tokenizer, s.calib, s.nsamples, s.seqlen, s.seed, s.text_field, needs)
    chosen_passes = passes(s, pruner, storage)
    streams = 2 if any(p.needs_dense for p in chosen_passes) else 1
    where = engine.placement(device, model, 0 if ids is None else ids.numel(), dtype, streams)
    run = engine.Run(layout, device, dtype, store or engine.Resident(), **where)
    run.store.begin(ids)
    calibrated = time.perf_counter()

    was_training = model.training
    model.eval()
    try:
        owl = budgets.OWLConfig(s.owl_m, s.owl_lambda)
        sparsities, budget_info = budgets.layer_sparsities(s.layer_budget, sparsity, run, chosen, ids, owl)
        ctx = layerwise.PruneContext(run, pruner, chosen, sparsities, pat, chosen_passes, s.true_sequential)
        rows = layerwise.prune_layers(ctx, ids)
    finally:
        model.train(was_training)
    finished = time.perf_counter()
    return PruneReport(
        method=s.method,
        options=pruner.options()
        | ({"true_sequential": True} if s.true_sequential else {})
        | ({k: getattr(s, k) for k in ("reconstruct", "reconstruct_target", "reconstruct_iters", "reconstruct_damp")} if s.reconstruct != "none" else {})
        | ({k: getattr(s, k) for k in ("quantize", "group_size", "symmetric", "quantize_method")} | {"joint": joint(pruner, s)} if quant else {}),
        pattern=str(pat),
        sparsity=sparsity,
        matrices=rows,
        calibration=calibration,
        layer_budget=budget_info,
        seconds={"calibration_data": calibrated - started, "prune": finished - calibrated, "total": finished - started},
        peak_memory=peak_rss(),
        compute_dtype=str(dtype).removeprefix("torch.") if needs else None,
    )
