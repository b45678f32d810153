"""The next-token training loss of a causal LM without its full logits: the head and the loss run over token chunks.

A model's own ``labels=`` loss builds ``[tokens, vocab]`` float32 logits, their log-softmax and, in
training, their gradient: at Gemma 3's 262,144-entry vocabulary that is 1 MiB per token, several times
the memory of everything else recovery holds. Here the decoder body runs once; the head (plus the
final logit soft-capping of Gemma 2/3, :func:`core.nll.head_logits`) and the cross-entropy run on
chunks of at most :data:`CHUNK_BYTES` of logits. Each chunk is backpropagated to the body's last
hidden state at once (its logits are freed before the next chunk), and the summed gradient then
goes through the body in one backward pass: the same gradient as the whole-logits loss, with no
recomputation. The loss is the mean over every next-token position, as transformers' own. Without
gradients (validation) :func:`core.nll.nll_sum` streams the head over the vocabulary instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core import nll

#: Largest float32 logits chunk (bytes); 64 tokens at a 262k vocabulary.
CHUNK_BYTES = 64 * 2**20


def _hidden(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hidden states of every position but the last, [n, hidden]; next tokens, [n])``."""
    hidden = nll.body_hidden(model, x)
    return hidden[:, :-1].reshape(-1, hidden.shape[-1]), x[:, 1:].reshape(-1)


def _rows(model: nn.Module) -> int:
    return max(1, CHUNK_BYTES // (4 * model.get_output_embeddings().weight.shape[0]))


@torch.no_grad()
def mean_loss(model: nn.Module, x: torch.Tensor) -> float:
    """Mean next-token loss of the sequences ``x`` (``[batch, tokens]``)."""
    h, targets = _hidden(model, x)
    return nll.nll_sum(model, h, targets) / targets.numel()


def backward(model: nn.Module, x: torch.Tensor, scale: float = 1.0) -> float:
    """Backpropagate ``scale`` x the mean next-token loss of ``x`` into the trainable parameters; returns that scaled loss."""
    h, targets = _hidden(model, x)
    leaf = h.detach().requires_grad_(True)
    rows, total, weight = _rows(model), 0.0, scale / targets.numel()
    for i in range(0, targets.numel(), rows):
        part = F.cross_entropy(nll.head_logits(model, leaf[i : i + rows]), targets[i : i + rows], reduction="sum") * weight
        part.backward()  # the head's trainable parameters (if any) and leaf.grad accumulate
        total += part.item()
    h.backward(leaf.grad)
    return total
