"""Next-token negative log-likelihood of a causal LM without its ``[tokens, vocab]`` logits.

A model's own forward builds float32 logits for every position, and ``F.cross_entropy`` a
log-softmax of the same size: at Gemma 3's 262,144-entry vocabulary that is 1 MiB per token each
(1 GiB for one 512-token probe of 2SSP's stage 2), written and read again for one number per token.
Here the decoder body runs once and the head runs over slices of the vocabulary (rows of its weight):
per slice ``z = head(h)[:, v0:v1]`` (Gemma 2/3's final soft-capping ``tanh(z / c) * c`` applied), an
online log-sum-exp keeps a running maximum ``m`` and sum ``s`` per token
(``s <- s * exp(m - m') + sum exp(z - m')``, ``m' = max(m, max z)``), and the target's logit is picked
from the slice that holds it. ``nll = m + log s - z[target]``. The head's weight is read once; the
largest temporary is one slice of :data:`SLICE_BYTES`. The value equals ``F.cross_entropy`` of the
model's logits up to float32 summation order.

:func:`check_head` compares it with the model's own loss once, so an architecture whose head does
something else (logit scaling, a second projection) is refused instead of measured wrongly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError

#: Largest float32 logits slice (bytes).
SLICE_BYTES = 16 * 2**20


def body_hidden(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The decoder body's last hidden states (final norm included), ``[batch, tokens, hidden]``."""
    return model.base_model(input_ids=ids, use_cache=False)[0]


def head_logits(model: nn.Module, h: torch.Tensor, start: int = 0, stop: int | None = None, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Float32 logits of the vocabulary entries ``start:stop`` for the hidden states ``h`` (soft-capped where the model caps).

    ``weight``: a copy of the head's weight to use instead (a bf16 one: the GEMM in bf16, ``h`` rounded to it)."""
    head = model.get_output_embeddings()
    weight = (head.weight if weight is None else weight)[start:stop]
    bias = None if getattr(head, "bias", None) is None else head.bias[start:stop].to(weight.dtype)
    logits = F.linear(h.to(weight.dtype), weight, bias).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


@torch.no_grad()
def nll_sum(model: nn.Module, h: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None) -> float:
    """Summed next-token NLL of ``targets`` (``[n]``) given hidden states ``h`` (``[n, hidden]``), head streamed over the vocabulary
    (``weight``: as :func:`head_logits`; the log-sum-exp stays float32 either way)."""
    n, vocab = targets.numel(), model.get_output_embeddings().weight.shape[0]
    step = max(256, SLICE_BYTES // (4 * max(n, 1)))
    m = torch.full((n,), float("-inf"), device=h.device)
    s = torch.zeros(n, device=h.device)
    picked = torch.zeros(n, device=h.device)
    rows = torch.arange(n, device=h.device)
    for start in range(0, vocab, step):
        z = head_logits(model, h, start, start + step, weight)
        inside = (targets >= start) & (targets < start + z.shape[1])
        picked[inside] = z[rows[inside], targets[inside] - start]
        new_m = torch.maximum(m, z.amax(dim=1))
        s.mul_(torch.exp(m - new_m)).add_(z.sub_(new_m[:, None]).exp_().sum(dim=1))
        m = new_m
    return float((m + s.log() - picked).double().sum())


def plain_head(model: nn.Module) -> bool:
    """True when the head is a plain ``nn.Linear`` with its float weight at hand (not quantized, not offloaded by accelerate)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return type(head) is nn.Linear and head.weight.is_floating_point() and not head.weight.is_meta and not hasattr(head, "_hf_hook")


@torch.no_grad()
def check_head(model: nn.Module, ids: torch.Tensor) -> None:
    """Refuse a model whose own loss on ``ids`` (``[1, tokens]``) is not head + cross-entropy of its body's output."""
    own = float(model(input_ids=ids, labels=ids, use_cache=False).loss)
    h = body_hidden(model, ids)[0, :-1]
    width = model.get_output_embeddings().weight.shape[1]
    if h.dim() != 2 or h.shape[-1] != width:
        raise ModelError(f"{type(model).__name__}: its body's output is not [tokens, {width}] hidden states; llmsparse's streamed loss does not know this model")
    ours = nll_sum(model, h, ids[0, 1:]) / (ids.shape[1] - 1)
    if abs(own - ours) > 1e-3 * max(abs(own), 1.0):
        raise ModelError(
            f"{type(model).__name__}: its own loss ({own:.6f}) is not head + cross-entropy of its body's output ({ours:.6f}); "
            "llmsparse's streamed loss does not know this architecture's head"
        )
