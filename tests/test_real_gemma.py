"""Integration on the real Gemma 3 270M (bundled GGUF) with WikiText-2 from ../shared/data.

Calibration: 16 x 512 tokens of wiki.valid.tokens; perplexity: wiki.test.raw, seqlen 1024, first 4 windows.
(Smaller than the benchmark's 32 x 512 / 8 windows to keep the suite fast; the ordering is what is checked.)
"""

import json

import pytest
import torch
from conftest import TEST, VALID
from transformers import AutoModelForCausalLM

import llmsparse
from llmsparse.cli import main

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def gemma():
    model, tok = llmsparse.load_model("gemma-3-270m")
    return model, tok, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def ppl(gemma):
    """Perplexity per setting, computed once per module (each from the dense weights)."""
    model, tok, dense = gemma
    cache = {}

    def measure(method=None):
        if method not in cache:
            model.load_state_dict(dense)
            if method:
                report = llmsparse.prune(model, tok, method=method, sparsity=0.5, calib=str(VALID), nsamples=16, seqlen=512, device="cpu")
                assert report.global_sparsity == pytest.approx(0.5, abs=1e-4)
            cache[method] = llmsparse.perplexity(model, tok, str(TEST), seqlen=1024, windows=4).ppl
        return cache[method]

    yield measure
    model.load_state_dict(dense)


def test_dense_perplexity_matches_the_reference_protocol(ppl):
    assert 30 < ppl() < 50  # 8 windows give 39.37 (docs/BENCHMARKS.md); 4 windows are close


def test_sparsegpt_between_dense_and_magnitude(ppl):
    assert ppl() < ppl("sparsegpt") < ppl("magnitude")


def test_wanda_beats_magnitude(ppl):
    assert ppl("wanda") < ppl("magnitude")


def test_cli_output_loads_with_plain_transformers(tmp_path):
    out = tmp_path / "gemma-magnitude"
    assert main(["-q", "prune", "gemma-3-270m", "--method", "magnitude", "--sparsity", "0.5", "--dtype", "bfloat16", "--output", str(out)]) == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    w = model.model.layers[3].mlp.gate_proj.weight
    assert w.dtype == torch.bfloat16 and (w == 0).sum() == w.numel() // 2
    assert (model.lm_head.weight != 0).float().mean() > 0.99
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
