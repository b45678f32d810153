"""core/nll.py: the head streamed over vocabulary slices gives the model's own next-token loss."""

from __future__ import annotations

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
