"""The next-token loss of a causal LM without its full logits: the head and the loss run over token chunks.

A model's own ``labels=`` loss builds ``[tokens, vocab]`` float32 logits, their log-softmax and, in
training, their gradient: at Gemma 3's 262,144-entry vocabulary that is 1 MiB per token, several times
the memory of everything else recovery holds. Here the decoder body runs once; the head (plus the
final logit soft-capping of Gemma 2/3, ``tanh(z / c) * c``) and the cross-entropy run on chunks of at
most :data:`CHUNK_BYTES` of logits. In training each chunk is backpropagated to the body's last
hidden state at once (its logits are freed before the next chunk), and the summed gradient then
goes through the body in one backward pass: the same gradient as the whole-logits loss, with no
recomputation. The loss is the mean over every next-token position, as transformers' own.

:func:`check_matches` compares it with the model's own loss once, so an architecture whose head does
something else (logit scaling, a second projection) is refused instead of trained on a different loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError

#: Largest float32 logits chunk (bytes); 64 tokens at a 262k vocabulary.
CHUNK_BYTES = 64 * 2**20


def _hidden(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hidden states of every position but the last, [n, hidden]; next tokens, [n])``."""
    hidden = model.base_model(input_ids=x, use_cache=False)[0]
    return hidden[:, :-1].reshape(-1, hidden.shape[-1]), x[:, 1:].reshape(-1)


def _chunk_sum(model: nn.Module, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of the chunk ``h`` (the head, soft-capping, float32 logits as transformers computes them)."""
    logits = model.get_output_embeddings()(h).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return F.cross_entropy(logits, targets, reduction="sum")


def _rows(model: nn.Module) -> int:
    return max(1, CHUNK_BYTES // (4 * model.get_output_embeddings().weight.shape[0]))


@torch.no_grad()
def mean_loss(model: nn.Module, x: torch.Tensor) -> float:
    """Mean next-token loss of the sequences ``x`` (``[batch, tokens]``)."""
    h, targets = _hidden(model, x)
    rows = _rows(model)
    return sum(_chunk_sum(model, h[i : i + rows], targets[i : i + rows]).item() for i in range(0, targets.numel(), rows)) / targets.numel()


def backward(model: nn.Module, x: torch.Tensor, scale: float = 1.0) -> float:
    """Backpropagate ``scale`` x the mean next-token loss of ``x`` into the trainable parameters; returns that scaled loss."""
    h, targets = _hidden(model, x)
    leaf = h.detach().requires_grad_(True)
    rows, total, weight = _rows(model), 0.0, scale / targets.numel()
    for i in range(0, targets.numel(), rows):
        part = _chunk_sum(model, leaf[i : i + rows], targets[i : i + rows]) * weight
        part.backward()  # the head's trainable parameters (if any) and leaf.grad accumulate
        total += part.item()
    h.backward(leaf.grad)
    return total


@torch.no_grad()
def check_matches(model: nn.Module, x: torch.Tensor) -> None:
    """Refuse a model whose own loss on ``x`` is not the chunked loss (its head does more than project and soft-cap)."""
    own = float(model(input_ids=x, labels=x, use_cache=False).loss)
    ours = mean_loss(model, x)
    if abs(own - ours) > 1e-3 * max(abs(own), 1.0):
        raise ModelError(
            f"{type(model).__name__}: its own loss ({own:.6f}) is not head + cross-entropy of its body's output ({ours:.6f}); "
            "recovery's chunked loss does not know this architecture's head"
        )
