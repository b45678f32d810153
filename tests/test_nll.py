"""core/nll.py: the head streamed over vocabulary slices gives the model's own next-token loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model

from llmsparse.core import nll
from llmsparse.errors import ModelError


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2", "opt"])
@pytest.mark.parametrize("slice_bytes", [4 * 300 * 7, nll.SLICE_BYTES])  # 7 entries per slice at 300 tokens: the floor of 256 rows
def test_streamed_nll_equals_cross_entropy_of_the_models_logits(arch, slice_bytes, monkeypatch):
    monkeypatch.setattr(nll, "SLICE_BYTES", slice_bytes)
    model = tiny_model(arch).eval()
    x = torch.randint(0, 320, (3, 100), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(input_ids=x, use_cache=False).logits[:, :-1].double()
        expected = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum").item()
        h = nll.body_hidden(model, x)[:, :-1]
        got = nll.nll_sum(model, h.reshape(-1, h.shape[-1]), x[:, 1:].reshape(-1))
    assert got == pytest.approx(expected, rel=1e-6)
    if arch == "gemma2":
        assert model.config.final_logit_softcapping  # the soft-capped head is covered


def test_slices_cover_targets_in_every_slice(monkeypatch):
    """Targets in the first, a middle and the last (partial) slice: each picked once, from its own slice."""
    monkeypatch.setattr(nll, "SLICE_BYTES", 4 * 256 * 1)  # 256 vocabulary entries per slice for <= 256 tokens
    model = tiny_model("llama").eval()
    vocab = model.get_output_embeddings().weight.shape[0]
    targets = torch.tensor([0, 255, 256, vocab - 1, 300, 5])
    h = torch.randn(targets.numel(), model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = F.cross_entropy(model.get_output_embeddings()(h).double(), targets, reduction="none")
        got = [nll.nll_sum(model, h[i : i + 1], targets[i : i + 1]) for i in range(targets.numel())]
    torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), expected, rtol=1e-6, atol=1e-6)


def test_an_unknown_head_is_refused():
    model = tiny_model("llama")
    original = type(model).forward

    def doubled(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        out.loss = out.loss * 2
        return out

    model.forward = doubled.__get__(model)
    with pytest.raises(ModelError, match="streamed loss does not know"):
        nll.check_head(model, torch.randint(2, 320, (1, 16)))


def _full_logits_ppl(model, ids, seqlen, windows):
    """The perplexity protocol computed from the model's own logits in float64 (the reference)."""
    total = 0.0
    with torch.no_grad():
        for w in range(windows):
            x = ids[w * seqlen : (w + 1) * seqlen].unsqueeze(0)
            logits = model(x, use_cache=False).logits[0, :-1].double()
            total += F.cross_entropy(logits, x[0, 1:], reduction="sum").item()
    return math.exp(total / (windows * (seqlen - 1)))


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_perplexity_streams_the_head_with_the_logits_result(arch, tokenizer, tmp_path, monkeypatch):
    """perplexity() sums the streamed NLL where the head allows it; a head it does not know takes the model's own logits. Same number."""
    from llmsparse.evaluation import ppl

    text = tmp_path / "t.txt"
    text.write_text("\n".join(f"line {i} of some words to read, number {i * 7 % 13}" for i in range(200)))
    model = tiny_model(arch).eval()
    ids = tokenizer(ppl.eval_text(str(text)), return_tensors="pt").input_ids[0]
    expected = _full_logits_ppl(model, ids, 32, 3)
    calls = []
    original = nll.nll_sum
    monkeypatch.setattr(ppl.streamed, "nll_sum", lambda *a, **k: calls.append(1) or original(*a, **k))
    assert ppl.perplexity(model, tokenizer, str(text), seqlen=32, windows=3).ppl == pytest.approx(expected, rel=1e-6)
    assert len(calls) == 4  # the head check, then one per window

    class Head(torch.nn.Linear):  # not a plain Linear: the streamed path stays out
        pass

    head = model.get_output_embeddings()
    wrapped = Head(head.in_features, head.out_features, bias=False)
    wrapped.weight = head.weight
    model.set_output_embeddings(wrapped)
    calls.clear()
    assert ppl.perplexity(model, tokenizer, str(text), seqlen=32, windows=3).ppl == pytest.approx(expected, rel=1e-6)
    assert not calls
