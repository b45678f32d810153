"""Perplexity with the WikiText-2 protocol of the pruning papers.

Documents are joined with a blank line, tokenized once and cut into non-overlapping windows of
``seqlen`` tokens; ppl = exp(mean NLL over every predicted token). The number depends on seqlen
and on the window count, so both are always reported beside it.

Where the head is a plain Linear that :func:`core.nll.check_head` accepts, the NLL is summed with the
head streamed over the vocabulary (:func:`core.nll.nll_sum`): the same number to float32 rounding
(closer to float64, in fact) without the ``[seqlen, vocab]`` logits and their log-softmax, 1 GiB each
for a 1024-token window of a 262k vocabulary. Quantized, offloaded or unusual heads take the model's
own logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..core import nll as streamed
from ..data.calibration import check_positions
from ..data.text import eval_text
from ..errors import EvaluationError, ModelError, SettingsError
from ..settings import at_least, setting


def ppl_setting(help: str = "perplexity on a text file (non-empty lines are documents) or 'wikitext2'"):
    return setting(None, help, metavar="TEXT")


def ppl_seqlen_setting():
    return setting(1024, "perplexity window length", check=at_least(2))


def ppl_windows_setting():
    return setting(None, "perplexity windows from the start (default: all)", check=at_least(1))


@dataclass
class PerplexityResult:
    ppl: float
    source: str
    seqlen: int
    windows: int
    tokens: int  # predicted tokens: windows * (seqlen - 1)

    def __str__(self) -> str:
        return f"ppl {self.ppl:.3f} on {self.source} (seqlen {self.seqlen}, {self.windows} windows, {self.tokens} tokens)"


def _streams(model, ids: torch.Tensor) -> bool:
    """True when the streamed NLL serves ``model``: a plain head, and the model's own loss agrees with it on ``ids``."""
    if not streamed.plain_head(model):
        return False
    try:
        streamed.check_head(model, ids)
    except ModelError:
        return False
    return True


@torch.no_grad()
def perplexity(model, tokenizer, source: str, seqlen: int = 1024, windows: int | None = None) -> PerplexityResult:
    """Perplexity of ``model`` on ``source`` over the first ``windows`` windows (all when ``None``)."""
    if seqlen < 2 or (windows is not None and windows < 1):
        raise SettingsError(f"perplexity needs seqlen >= 2 and windows >= 1 (or None: all), got seqlen {seqlen} and windows {windows}")
    check_positions(model.config, seqlen, "perplexity seqlen", EvaluationError)  # past them: an IndexError, or a number that means nothing
    ids = tokenizer(eval_text(source), return_tensors="pt").input_ids[0]
    available = ids.numel() // seqlen
    count = available if windows is None else min(windows, available)
    if count < 1:
        raise EvaluationError(f"{source} has {ids.numel()} tokens, fewer than one window of {seqlen}")
    device = next(model.parameters()).device
    stream = _streams(model, ids[: min(32, seqlen)].unsqueeze(0).to(device))
    head = model.get_output_embeddings().weight.device if stream else None
    nll = 0.0
    for w in tqdm(range(count), desc="perplexity", leave=False):
        x = ids[w * seqlen : (w + 1) * seqlen].unsqueeze(0).to(device)
        if stream:  # the head's device holds the hidden states and targets (a device map may put it last)
            h = streamed.body_hidden(model, x)[0, :-1].to(head)
            nll += streamed.nll_sum(model, h, x[0, 1:].to(head))
            continue
        logits = model(x, use_cache=False).logits[0, :-1].float()
        nll += F.cross_entropy(logits, x[0, 1:], reduction="sum").item()
    tokens = count * (seqlen - 1)
    return PerplexityResult(math.exp(nll / tokens), str(source), seqlen, count, tokens)
