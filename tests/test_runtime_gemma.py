"""The sparse runtime on the real Gemma 3 270M: a compact checkpoint runs compressed with the dense model's perplexity and greedy text."""

import pytest
import torch
from conftest import TEST

import llmsparse
from llmsparse.runtime import sparse_layers

pytestmark = pytest.mark.real


@torch.no_grad()
def test_gemma_bitmask_checkpoint_runs_sparse_like_the_dense_load(tmp_path):
    model, tok = llmsparse.load_model("gemma-3-270m")
    report = llmsparse.prune(model, tok, method="magnitude", sparsity=0.5)
    out = llmsparse.save_pruned(model, tok, tmp_path / "gemma-50", report=report, format="bitmask")
    sparse, _ = llmsparse.load_model(out, runtime="sparse")
    assert len(sparse_layers(sparse)) == 18 * 7
    dense_ppl = llmsparse.perplexity(model, tok, str(TEST), seqlen=512, windows=2).ppl
    sparse_ppl = llmsparse.perplexity(sparse, tok, str(TEST), seqlen=512, windows=2).ppl
    assert sparse_ppl == pytest.approx(dense_ppl, rel=0.005)
    ids = tok("The history of the city begins", return_tensors="pt").input_ids
    dense_text = model.generate(ids, max_new_tokens=16, do_sample=False)
    sparse_text = sparse.generate(ids, max_new_tokens=16, do_sample=False)
    assert torch.equal(dense_text, sparse_text)
