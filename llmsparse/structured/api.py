"""``prune_structured()``: remove FFN neurons, attention modules or blocks, giving a smaller dense model.

``sparsity`` is the fraction of the decoder blocks' parameters removed (embeddings, final norm and
LM head excluded, as in 2SSP). The run checks the budget before reading any data, measures the
calibration tokens, edits the model in place (:mod:`.surgery`) and returns a
:class:`~llmsparse.structured.base.StructuredReport` whose counts are recomputed from the edited
model and checked against the budget.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
from torch import nn

from ..core.layout import resolve_device
from ..data.calibration import calib_setting, calibration_batch, nsamples_setting, seed_setting, seqlen_setting, text_field_setting
from ..errors import ModelError
from ..settings import Settings, api, at_least, device_setting, in_range, setting
from .anatomy import blocks, width_field
from .base import STRUCTURED, Budget, Shape, StructuredReport
from .surgery import CONFIG_KEY, record


@dataclass
class StructuredSettings(Settings):
    """The arguments of :func:`prune_structured` (and of ``llmsparse prune --method 2ssp|shortgpt|width``)."""

    method: str = setting("2ssp", "structured pruning method", choices=STRUCTURED)
    sparsity: float = setting(0.25, "fraction of decoder-block parameters removed, in [0, 1)", check=in_range(0, 1, high_open=True))
    calib: str | os.PathLike | torch.Tensor | None = calib_setting()
    nsamples: int = nsamples_setting(32)
    seqlen: int = seqlen_setting(2048)
    seed: int = seed_setting()
    text_field: str = text_field_setting()
    width_multiple: int = setting(
        1, "keep the FFN width a multiple of this (4 for 2:4 afterwards, a quantization group size, 64/128 for GPU tiles); "
        "the neuron count is rounded to it and the report gives the exact fraction", check=at_least(1),
    )
    method_options: dict | None = setting({}, "options of the method (command line: --<method>-<option>)", cli=False)
    device: str | torch.device | None = device_setting()


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _removed_attention_params(found, removed: list[int]) -> int:
    return sum(found[i].attention_params() for i in removed)


@api(StructuredSettings)
def prune_structured(
    model: nn.Module,
    tokenizer=None,
    method: str = "2ssp",
    sparsity: float = 0.25,
    *,
    calib: str | os.PathLike | torch.Tensor | None = None,
    nsamples: int = 32,
    seqlen: int = 2048,
    seed: int = 0,
    text_field: str = "text",
    width_multiple: int = 1,
    method_options: dict | None = None,
    device: str | torch.device | None = None,
) -> StructuredReport:
    """Prune ``model`` in place with the structured method ``method``; the report has the exact parameter accounting."""
    s = StructuredSettings.of(locals())
    method = STRUCTURED.create(s.method, **(s.method_options or {}))
    _, found = blocks(model)
    shape = Shape.of(found)
    if any(b.params() != shape.block or b.width != shape.width for b in found):
        raise ModelError("structured pruning needs decoder blocks of one shape (the budget counts block 0's parameters)")
    done = getattr(model.config, CONFIG_KEY, None)
    if isinstance(done, dict) and done.get("method"):
        raise ModelError(f"this model was already pruned structurally ({done['method']}); prune the original model")
    budget: Budget = method.budget(shape, s.sparsity)
    if budget.neurons and s.width_multiple > 1:
        keep = max(s.width_multiple, round((shape.width - budget.neurons) / s.width_multiple) * s.width_multiple)
        budget.neurons = max(0, shape.width - keep)
    device = resolve_device(s.device)
    model.to(device)
    ids, info = None, None
    if method.needs_calibration and budget != Budget():
        ids, info = calibration_batch(model, tokenizer, s.calib, s.nsamples, s.seqlen, s.seed, s.text_field, f"{s.method} structured pruning")
    total_before, width_before = _count(model), shape.width
    started = time.perf_counter()
    details = method.apply(model, found, ids, budget) if budget != Budget() else {}
    seconds = time.perf_counter() - started
    _, found = blocks(model)
    rec = record(model)
    rec.update(method=s.method, sparsity=s.sparsity)
    removed_attention = _removed_attention_params(found, rec["removed_attention"])
    decoder_after = sum(b.params() for b in found) - removed_attention
    if shape.decoder - decoder_after != budget.removed(shape):
        raise ModelError(f"internal: removed {shape.decoder - decoder_after} parameters, the budget says {budget.removed(shape)}")
    width_after = found[0].width
    if getattr(model.config, width_field(model.config)) not in (None, width_after) and budget.neurons:
        raise ModelError("internal: the config's FFN width disagrees with the matrices")
    return StructuredReport(
        method=s.method,
        sparsity=s.sparsity,
        options=dict(s.method_options or {}),
        shape=vars(shape),
        budget=vars(budget),
        decoder_before=shape.decoder,
        decoder_after=decoder_after,
        total_before=total_before,
        total_after=_count(model) - removed_attention,
        width_before=width_before,
        width_after=width_after,
        removed_blocks=list(rec["removed_blocks"]),
        removed_attention=list(rec["removed_attention"]),
        calibration=info,
        seconds=seconds,
        details=details,
    )
