"""2SSP (Sandri, Cunegatti, Iacca, TMLR 2025): FFN neurons by activation norm, then attention modules by perplexity.

Reference: FabrizioSandri/2SSP ``src/pruning.py`` ``two_stage_2ssp``.

* Balance: ``N_attn = round(L · s^((P_ffn / P_attn) / alpha))`` attention modules (``alpha`` = 1.5;
  ``n_attention`` overrides), refused when they alone remove more than ``s`` of the decoder
  parameters; the FFNs give the rest, the same neuron count in every block (nearest count, so the
  achieved fraction is within half a neuron per block of ``s``; the report prints it exactly).
* Stage 1 (width): keep, in every block, the neurons with the largest L2 norm over the calibration
  tokens of their activation (the output projection's input), averaged over samples.
* Stage 2 (depth): ``N_attn`` times, remove the attention module whose removal raises the
  perplexity of the first ``stage2_samples`` calibration samples least (the reference: 1 sample),
  probed in the model's dtype or, with ``probe_dtype="bfloat16"``, in bf16 with a float32 log-sum-exp
  (the reference probes in float16 on a GPU; the model's own weights stay as they are either way).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...errors import SparsityError
from ...settings import Settings, at_least, greater_than, setting
from ..anatomy import Block
from ..base import STRUCTURED, Budget, Shape, StructuredMethod, check_budget, neurons_for
from ..signals import PerplexityProbe, ffn_norms
from ..surgery import narrow_ffn, remove_attention

log = logging.getLogger(__name__)

#: ``probe_dtype`` values: the dtype stage 2's probe computes in (None: the model's own).
PROBE_DTYPES = {"model": None, "bfloat16": torch.bfloat16}


def keep_top(norms: list[torch.Tensor], remove: int) -> list[torch.Tensor]:
    """Per block, the indices of the ``width - remove`` largest norms (ties: the lower index), sorted."""
    out = []
    for n in norms:
        order = torch.sort(n, descending=True, stable=True).indices
        out.append(order[: n.numel() - remove].sort().values)
    return out


def width_stage(model: nn.Module, found: list[Block], ids: torch.Tensor, remove: int) -> dict[str, Any]:
    """Stage 1: drop ``remove`` neurons per block by activation norm; returns the count for the report."""
    if remove == 0:
        return {"neurons_removed_per_block": 0}
    norms = ffn_norms(model, found, ids)
    narrow_ffn(model, keep_top(norms, remove))
    return {"neurons_removed_per_block": remove}


def depth_stage(model: nn.Module, found: list[Block], ids: torch.Tensor, count: int, dtype: torch.dtype | None = None) -> list[dict[str, Any]]:
    """Stage 2: ``count`` greedy removals of the attention module whose removal raises perplexity least (probed in ``dtype``)."""
    steps: list[dict[str, Any]] = []
    removed: list[int] = []
    probe = PerplexityProbe(model, found, ids, dtype)
    for _ in range(count):
        before = probe.reset()
        trials = {i: probe.without_attention(i) for i in range(len(found)) if i not in removed}
        best = min(trials, key=lambda i: (trials[i], i))
        remove_attention(model, [best])
        removed.append(best)
        steps.append({"removed": best, "ppl_before": before, "ppl_after": trials[best]})
        log.info("2ssp: attention of block %d removed, calibration ppl %.3f -> %.3f", best, before, trials[best])
    return steps


@STRUCTURED.register
class TwoStage(StructuredMethod):
    name = "2ssp"
    summary = "FFN neurons by activation norm, then attention modules by calibration perplexity (Sandri et al. 2025)"

    @dataclass
    class Config(Settings):
        alpha: float = setting(1.5, "balance of the two stages: N_attn = round(L * s^((P_ffn/P_attn)/alpha))", check=greater_than(0))
        n_attention: int = setting(-1, "attention modules to remove (-1: from alpha)", check=at_least(-1))
        stage2_samples: int = setting(1, "calibration samples whose perplexity ranks attention modules (the reference: 1)", check=at_least(1))
        probe_dtype: str = setting(
            "model",
            "dtype of stage 2's perplexity probe: model (the model's own), or bfloat16 (matmuls and head in bf16, log-sum-exp in float32; "
            "faster where bf16 matmuls are, e.g. CPUs with AVX-512 BF16; logits rounded to 8 bits; the reference probes in float16)",
            choices=PROBE_DTYPES,
        )

    def budget(self, shape: Shape, sparsity: float) -> Budget:
        n = self.config.n_attention
        if n < 0:
            n = round(shape.blocks * sparsity ** ((shape.ffn / shape.attention) / self.config.alpha)) if sparsity > 0 else 0
        target = sparsity * shape.decoder
        if n > shape.blocks or n * shape.attention > target:
            raise SparsityError(
                f"2ssp: removing {n} attention modules takes {n * shape.attention / shape.decoder:.2%} of the decoder parameters, "
                f"more than the target {sparsity:g}; lower n_attention or raise alpha"
            )
        return check_budget(shape, sparsity, Budget(attention=n, neurons=neurons_for(shape, target - n * shape.attention, shape.blocks)), self.name)

    def apply(self, model: nn.Module, found: list[Block], ids: torch.Tensor, budget: Budget) -> dict[str, Any]:
        details = width_stage(model, found, ids, budget.neurons)
        dtype = PROBE_DTYPES[self.config.probe_dtype]
        details["attention_steps"] = depth_stage(model, found, ids[: self.config.stage2_samples], budget.attention, dtype)
        return details
