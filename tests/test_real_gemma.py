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

    def measure(method=None, sparsity=0.5, **options):
        key = (method, sparsity, repr(sorted(options.items())))
        if key not in cache:
            model.load_state_dict(dense)
            if method:
                report = llmsparse.prune(model, tok, method=method, sparsity=sparsity, calib=str(VALID), nsamples=16, seqlen=512, device="cpu", **options)
                assert report.global_sparsity == pytest.approx(sparsity, abs=0.005 if "layer_budget" in options else 5e-4)  # per-row floor: 2048 * 0.7 = 1433.6
            cache[key] = llmsparse.perplexity(model, tok, str(TEST), seqlen=1024, windows=4).ppl
        return cache[key]

    yield measure
    model.load_state_dict(dense)


def test_dense_perplexity_matches_the_reference_protocol(ppl):
    assert 30 < ppl() < 50  # 8 windows give 39.37 (docs/BENCHMARKS.md); 4 windows are close


def test_sparsegpt_between_dense_and_magnitude(ppl):
    assert ppl() < ppl("sparsegpt") < ppl("magnitude")


def test_wanda_beats_magnitude(ppl):
    assert ppl("wanda") < ppl("magnitude")


def test_at_70_percent_dsnot_beats_plain_wanda_and_owl_keeps_the_global_target(ppl):
    """DSnoT's gain holds here at every calibration size we tried. OWL's does not: at 16 x 512 tokens
    Wanda+OWL is worse than Wanda (472 vs 414 over 4 windows), at 32 x 512 slightly better (606 vs 621
    over 8 windows, bench/sweep_gemma.py). So for OWL this test checks only the budget mechanics; the
    measured numbers are in docs/BENCHMARKS.md."""
    assert ppl("dsnot", 0.7, method_options={"init": "wanda"}) < ppl("wanda", 0.7)
    ppl("wanda", 0.7, layer_budget="owl")  # asserts global sparsity within 0.5 points of 0.7


@pytest.mark.parametrize("pattern, fmt, bound", [(None, "bitmask", 0.6), ("2:4", "2:4", 0.57)])
def test_compact_checkpoints_are_small_and_reload_exactly(tmp_path, pattern, fmt, bound):
    model, tok = llmsparse.load_model("gemma-3-270m", dtype="bfloat16")
    report = llmsparse.prune(model, tok, method="magnitude", sparsity=None if pattern else 0.5, pattern=pattern, device="cpu")
    out = llmsparse.save_pruned(model, tok, tmp_path / fmt.replace(":", "of"), report=report, format=fmt)
    assert report.storage["bytes_compressed"] <= bound * report.storage["bytes_dense"]
    again, _ = llmsparse.load_model(out)
    for (name, a), b in zip(again.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    ids = tok(TEST.read_text(encoding="utf-8")[:3000], return_tensors="pt").input_ids[:, :256]
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)


def test_cli_output_loads_with_plain_transformers(tmp_path):
    out = tmp_path / "gemma-magnitude"
    assert main(["-q", "prune", "gemma-3-270m", "--method", "magnitude", "--sparsity", "0.5", "--dtype", "bfloat16", "--output", str(out)]) == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    w = model.model.layers[3].mlp.gate_proj.weight
    assert w.dtype == torch.bfloat16 and (w == 0).sum() == w.numel() // 2
    assert (model.lm_head.weight != 0).float().mean() > 0.99
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config


def test_teal_on_gemma_reaches_its_target_and_reloads_exactly(gemma, ppl, tmp_path):
    """TEAL 50% (uniform, 8 x 512 calibration tokens): perplexity between dense and 2x dense over 4 windows,
    a measured common figure near the target, the sparse decode path generating the masked model's
    text, and a saved-then-loaded bf16 copy giving identical logits."""
    from llmsparse.activation import attach, detach, disable_sparse_decode, enable_sparse_decode, settings_of, sites_of
    from llmsparse.activation.decode import timed_generate

    model, tok, dense_state = gemma
    dense = ppl()
    model.load_state_dict(dense_state)
    report = llmsparse.sparsify_activations(model, tok, "teal", 0.5, calib=str(VALID), nsamples=8, seqlen=512, device="cpu")
    try:
        sparse = llmsparse.perplexity(model, tok, str(TEST), seqlen=1024, windows=4).ppl
        assert dense < sparse < 2 * dense
        measured = llmsparse.measure_activation_sparsity(model, tok, str(TEST), seqlen=1024, windows=1)
        assert measured["overall"] == pytest.approx(0.5, abs=0.05)
        masked = timed_generate(model, tok, "The history of the city", 12).text
        enable_sparse_decode(model)
        assert timed_generate(model, tok, "The history of the city", 12).text == masked
        disable_sparse_decode(model)
        # A bf16 load, not model.to(bfloat16): .to() also rounds the rotary inv_freq buffers, which a
        # bf16 from_pretrained keeps in fp32, so the two differ even densely.
        bf16, _ = llmsparse.load_model("gemma-3-270m", dtype="bfloat16")
        attach(bf16, sites_of(model), settings_of(model))
        out = llmsparse.save_pruned(bf16, tok, tmp_path / "teal", activation=report)
        again, _ = llmsparse.load_model(out)
        ids = tok(TEST.read_text(encoding="utf-8")[:3000], return_tensors="pt").input_ids[:, :128]
        with torch.no_grad():
            assert torch.equal(again(ids).logits, bf16(ids).logits)
    finally:
        detach(model)
        model.load_state_dict(dense_state)


@pytest.fixture(scope="module")
def gemma_tasks(tmp_path_factory):
    """Local lm-eval tasks from wiki.test.raw: the first ~12k characters for rolling perplexity,
    48 cloze passages of at most 80 words (kept short for CPU)."""
    out = tmp_path_factory.mktemp("gemma_tasks")
    llmsparse.build_local_tasks(TEST, "wt2", out, llmsparse.evaluation.ClozeConfig(examples=48, max_words=80), ppl_chars=12_000)
    return out


def test_local_ppl_task_agrees_with_llmsparse_perplexity(gemma, gemma_tasks, tmp_path):
    """The same text through lm-eval's rolling log-likelihood (max_length 1024) and through
    ``llmsparse.perplexity`` (seqlen 1024, all windows). The protocols differ in two ways: lm-eval
    the tail that does not fill a window; llmsparse scores seqlen-1 tokens per full window and
    drops the tail. On this text the two agree within 1-2% (docs/EVALUATION.md gives the figures);
    5% is allowed, far below what a wrong token count or window would give."""
    model, tok, dense = gemma
    model.load_state_dict(dense)
    doc = json.loads((gemma_tasks / "wt2_ppl.jsonl").read_text())["text"]
    text = tmp_path / "doc.txt"
    text.write_text(doc, encoding="utf-8")
    ours = llmsparse.perplexity(model, tok, str(text), seqlen=1024)
    assert ours.windows >= 2
    theirs = llmsparse.evaluate(model, tok, ["wt2_ppl"], include_path=gemma_tasks, max_length=1024).metrics["wt2_ppl"]["token_perplexity"]
    assert theirs == pytest.approx(ours.ppl, rel=0.05)


def test_cloze_on_gemma_is_above_chance_and_drops_at_70_percent_magnitude(gemma, gemma_tasks):
    model, tok, dense = gemma
    model.load_state_dict(dense)
    tasks = ["wt2_cloze", "wt2_cloze_mc"]
    try:
        before = llmsparse.evaluate(model, tok, tasks, include_path=gemma_tasks, max_length=1024, batch_size=8).metrics
        assert before["wt2_cloze_mc"]["acc"] > 0.25 + 0.15  # 4 choices: chance is 0.25
        assert before["wt2_cloze"]["acc"] > 0.05  # exact greedy word out of 262k tokens: chance is ~0
        llmsparse.prune(model, tok, method="magnitude", sparsity=0.7)
        after = llmsparse.evaluate(model, tok, tasks, include_path=gemma_tasks, max_length=1024, batch_size=8).metrics
        assert after["wt2_cloze_mc"]["acc"] < before["wt2_cloze_mc"]["acc"] - 0.1
        assert after["wt2_cloze"]["acc"] < before["wt2_cloze"]["acc"]
        assert after["wt2_cloze"]["perplexity"] > 2 * before["wt2_cloze"]["perplexity"]
    finally:
        model.load_state_dict(dense)
