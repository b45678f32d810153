"""DSnoT mask refinement: a naive per-row reference, invariants the method guarantees, engine and CLI use."""

import pytest
import torch
from conftest import tiny_model
from test_methods import layer_problem

import llmsparse
from llmsparse.core.masks import Pattern, select
from llmsparse.core.stats import InputMoments
from llmsparse.errors import UnknownNameError
from llmsparse.methods import get_method
from llmsparse.methods.dsnot import dsnot_refine, expected_error
from llmsparse.methods.wanda import wanda_scores

PATTERNS = [Pattern(), Pattern(2, 4), Pattern(4, 8)]


def problem(rows=24, cols=64, sequences=4, seed=0):
    """Weights and inputs with non-zero channel means (as after a LayerNorm), plus their moments."""
    W, X = layer_problem(rows, cols, tokens=sequences * 50, seed=seed)
    X = X + torch.linspace(-0.5, 1.0, cols)
    stats = InputMoments(cols)
    for s in range(sequences):
        stats.update(X[s * 50 : (s + 1) * 50].unsqueeze(0))
    return W, X.view(sequences, 50, cols), stats


def partner(mask, D, wanda, i, j, block, sign):
    """The lowest-Wanda kept weight in j's block whose D does not push e away from zero (or None)."""
    start = j // block * block
    kept = [k for k in range(start, start + block) if not mask[i, k] and D[i][k] * sign <= 0]
    return min(kept, key=lambda k: wanda[i][k]) if kept else None


def naive_refine(W, mask, mu, var, norm2, pattern, max_cycles=50, threshold=0.1):
    """The algorithm as written in ALGORITHMS.md, one row at a time with Python loops."""
    mask = mask.clone()
    cols = W.shape[1]
    block = pattern.m if pattern.structured else cols
    D = (W * mu).tolist()
    wanda = wanda_scores(W, norm2).tolist()
    for i in range(W.shape[0]):
        e = sum(D[i][j] for j in range(cols) if mask[i, j])
        sign = (e > 0) - (e < 0)
        for _ in range(max_cycles):
            if abs(e) <= threshold or sign == 0:
                break

            grow = [j for j in range(cols) if mask[i, j] and D[i][j] * sign > 0 and partner(mask, D, wanda, i, j, block, sign) is not None]
            if not grow:
                break
            g = max(grow, key=lambda j: D[i][j] * sign / var[j].item())  # noqa: B023 (used at once)
            k = partner(mask, D, wanda, i, g, block, sign)
            after = e - D[i][g] + D[i][k]
            if (after > 0) - (after < 0) != sign:
                break
            mask[i, g], mask[i, k], e = False, True, after
    return mask


@pytest.mark.parametrize("pattern", PATTERNS, ids=str)
def test_matches_naive_reference(pattern):
    W, X, stats = problem()
    initial = select(wanda_scores(W, stats.norm2), 0.5, pattern)
    refined = dsnot_refine(W, initial, stats.seq_sum, stats.var, stats.norm2, pattern)
    expected = naive_refine(W, initial, stats.seq_sum, stats.var, stats.norm2, pattern)
    assert refined.swaps > 0
    assert torch.equal(refined.mask, expected)


def test_input_moments_are_brute_force():
    W, X, stats = problem()
    torch.testing.assert_close(stats.seq_sum, X.sum(1).mean(0))
    torch.testing.assert_close(stats.var, X.reshape(-1, X.shape[-1]).var(0, unbiased=False), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(stats.norm2, X.pow(2).sum(1).mean(0))


@pytest.mark.parametrize("pattern", PATTERNS, ids=str)
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_keeps_sparsity_and_pattern_and_never_increases_expected_error(pattern, sparsity):
    W, X, stats = problem(seed=3)
    initial = select(wanda_scores(W, stats.norm2), sparsity, pattern)
    refined = dsnot_refine(W, initial, stats.seq_sum, stats.var, stats.norm2, pattern)
    assert torch.equal(refined.mask.sum(1), initial.sum(1))
    if pattern.structured:
        assert (refined.mask.view(W.shape[0], -1, pattern.m).sum(-1) == pattern.n).all()
    # the layer's expected reconstruction error, from the raw calibration inputs (not the method's own stats)
    mean_input = X.sum(1).mean(0).double()
    before = ((W.double() * initial) @ mean_input).abs()
    after = ((W.double() * refined.mask) @ mean_input).abs()
    assert (after <= before + 1e-9).all()
    assert after.sum() < before.sum()
    assert refined.error_after == pytest.approx(after.sum().item(), rel=1e-6)


def test_limits_stop_the_swaps():
    W, X, stats = problem()
    initial = select(wanda_scores(W, stats.norm2), 0.5, Pattern())
    for kwargs in ({"max_cycles": 0}, {"threshold": 1e9}):
        refined = dsnot_refine(W, initial, stats.seq_sum, stats.var, stats.norm2, Pattern(), **kwargs)
        assert refined.swaps == 0 and torch.equal(refined.mask, initial)
    one = dsnot_refine(W, initial, stats.seq_sum, stats.var, stats.norm2, Pattern(), max_cycles=1)
    assert 0 < one.swaps <= W.shape[0]
    assert (one.mask != initial).sum() == 2 * one.swaps


def test_expected_error_definition():
    W = torch.tensor([[1.0, -2.0, 3.0]])
    mask = torch.tensor([[True, False, True]])
    assert expected_error(W, mask, torch.tensor([2.0, 5.0, -1.0])).item() == pytest.approx(1 * 2 + 3 * -1)


@pytest.mark.parametrize("init", ["wanda", "sparsegpt", "magnitude"])
def test_engine_refines_each_initial_method(init, calib_ids):
    refined_model, plain_model = tiny_model("qwen2"), tiny_model("qwen2")
    report = llmsparse.prune(refined_model, method="dsnot", sparsity=0.625, calib=calib_ids, device="cpu", method_options={"init": init})
    options = {"scope": "row"} if init == "magnitude" else {}
    llmsparse.prune(plain_model, method=init, sparsity=0.625, calib=calib_ids, device="cpu", method_options=options)
    assert report.global_sparsity == pytest.approx(0.625)
    assert all(m.notes["e_ratio"] <= 1.0 for m in report.matrices)
    assert sum(m.notes["swaps"] for m in report.matrices) > 0
    refined = dict(refined_model.named_parameters())
    for name, p in plain_model.named_parameters():
        if init != "sparsegpt":  # SparseGPT's own run also updates weights; DSnoT keeps the originals
            assert torch.equal((refined[name] == 0).sum(-1), (p == 0).sum(-1)), name
    assert any(not torch.equal(refined[n] == 0, p == 0) for n, p in plain_model.named_parameters() if "proj" in n)


def test_skip_keeps_the_initial_mask(calib_ids):
    refined_model, plain_model = tiny_model("llama"), tiny_model("llama")
    report = llmsparse.prune(refined_model, method="dsnot", sparsity=0.5, calib=calib_ids, device="cpu", method_options={"skip": "mlp"})
    llmsparse.prune(plain_model, method="wanda", sparsity=0.5, calib=calib_ids, device="cpu")
    plain = dict(plain_model.named_parameters())
    for m in report.matrices:
        assert ("refined" in m.notes) == ("mlp" in m.name)
    for name, p in refined_model.named_parameters():
        if "layers.0.mlp" in name:  # later layers see inputs from refined attention
            assert torch.equal(p, plain[name]), name


def test_bad_init_is_refused():
    with pytest.raises(UnknownNameError, match="unknown method 'obc'"):
        get_method("dsnot", init="obc")
    with pytest.raises(UnknownNameError, match="another method"):
        get_method("dsnot", init="dsnot")
