"""The pure math of each method on small matrices, against brute force and naive references."""

import logging

import pytest
import torch

from llmsparse.core.hessian import inverse_hessian_factor, reconstruction_error
from llmsparse.core.masks import Pattern, SparsityError
from llmsparse.core.stats import Hessian, InputNorms
from llmsparse.errors import HessianError, UnknownNameError
from llmsparse.methods import get_method
from llmsparse.methods.magnitude import magnitude_mask
from llmsparse.methods.sparsegpt import sparsegpt_prune
from llmsparse.methods.wanda import wanda_mask, wanda_scores

UNSTRUCTURED = Pattern()


def layer_problem(rows=32, cols=64, tokens=1024, seed=0):
    """A weight and correlated inputs whose channels have very different scales (as in real LLMs)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g)
    mix = torch.randn(cols, cols, generator=g) / cols**0.5 + torch.eye(cols)
    scales = torch.logspace(-1, 1, cols)[torch.randperm(cols, generator=g)]
    X = (torch.randn(tokens, cols, generator=g) @ mix) * scales  # [tokens, cols]
    return W, X


def output_error(W, W2, X):
    return ((W - W2) @ X.T).pow(2).sum().item()


def test_input_norms_running_mean_is_brute_force():
    x = torch.randn(3, 10, 8)
    stats = InputNorms(8)
    stats.update(x[:1])
    stats.update(x[1:])
    brute = torch.stack([(x[s] ** 2).sum(0) for s in range(3)]).mean(0)
    torch.testing.assert_close(stats.norm2, brute)


def test_hessian_running_mean_is_brute_force():
    x = torch.randn(3, 40, 600)  # wider than one accumulation block
    stats = Hessian(600)
    for s in range(3):
        stats.update(x[s : s + 1])
    flat = x.reshape(-1, 600)
    torch.testing.assert_close(stats.H, 2 / 3 * flat.T @ flat, rtol=1e-4, atol=1e-3)


def test_wanda_scores_and_mask_brute_force():
    W, X = layer_problem(rows=6, cols=12, tokens=50)
    stats = InputNorms(12)
    stats.update(X.unsqueeze(0))
    scores = wanda_scores(W, stats.norm2)
    for i in range(6):
        for j in range(12):
            expected = abs(W[i, j].item()) * sum(X[t, j].item() ** 2 for t in range(50)) ** 0.5
            assert scores[i, j].item() == pytest.approx(expected, rel=1e-5)
    mask = wanda_mask(W, stats.norm2, 0.5, UNSTRUCTURED)
    for i in range(6):
        expected = set(sorted(range(12), key=lambda j: scores[i, j].item())[:6])
        assert set(torch.nonzero(mask[i]).flatten().tolist()) == expected


@pytest.mark.parametrize("pattern", [Pattern(), Pattern(2, 4), Pattern(4, 8)])
def test_wanda_exact_sparsity(pattern):
    W, X = layer_problem()
    stats = InputNorms(64)
    stats.update(X.unsqueeze(0))
    mask = wanda_mask(W, stats.norm2, 0.5, pattern)
    if pattern.structured:
        assert (mask.view(32, -1, pattern.m).sum(-1) == pattern.n).all()
    else:
        assert (mask.sum(1) == 32).all()


def test_magnitude_scopes():
    W = torch.randn(8, 16)
    matrix = magnitude_mask(W, 0.25, UNSTRUCTURED)
    assert matrix.sum() == 32 and W.abs()[matrix].max() <= W.abs()[~matrix].min()
    row = magnitude_mask(W, 0.25, UNSTRUCTURED, per_row=True)
    assert (row.sum(1) == 4).all()


def naive_obs(W, H, sparsity, pattern, blocksize, percdamp=0.01):
    """SparseGPT by explicit OBS elimination on H^-1, one column at a time, no Cholesky, no lazy batches."""
    from llmsparse.core.masks import lowest_n_of_m, lowest_overall

    W = W.clone().double()
    cols = W.shape[1]
    Hd = H.double() + percdamp * torch.diagonal(H).mean().double() * torch.eye(cols, dtype=torch.float64)
    Hinv = torch.linalg.inv(Hd)
    d2, h = [], Hinv.clone()  # d2[j]: diagonal of the inverse after eliminating columns < j
    for j in range(cols):
        d2.append(h[j, j].item())
        h = h - torch.outer(h[:, j], h[j, :]) / h[j, j]
    d2 = torch.tensor(d2, dtype=torch.float64)
    mask = torch.zeros_like(W, dtype=torch.bool)
    for j in range(cols):
        if not pattern.structured and j % blocksize == 0:
            mask[:, j : j + blocksize] = lowest_overall(W[:, j : j + blocksize] ** 2 / d2[j : j + blocksize], sparsity)
        if pattern.structured and j % pattern.m == 0:
            mask[:, j : j + pattern.m] = lowest_n_of_m(W[:, j : j + pattern.m] ** 2 / d2[j : j + pattern.m], pattern.n, pattern.m)
        err = torch.where(mask[:, j], W[:, j], 0.0) / Hinv[j, j]
        W[:, j:] -= torch.outer(err, Hinv[j, j:])
        W[:, j][mask[:, j]] = 0
        Hinv = Hinv - torch.outer(Hinv[:, j], Hinv[j, :]) / Hinv[j, j]
    return W.float()


@pytest.mark.parametrize("pattern", [Pattern(), Pattern(2, 4)])
def test_sparsegpt_matches_naive_obs(pattern):
    W, X = layer_problem(rows=8, cols=32, tokens=400)
    H = 2 * X.T @ X / 400
    ours, _ = sparsegpt_prune(W, H, 0.5, pattern, blocksize=8)
    expected = naive_obs(W, H, 0.5, pattern, blocksize=8)
    assert torch.equal(ours == 0, expected == 0)
    torch.testing.assert_close(ours, expected, rtol=1e-3, atol=1e-3)


def test_sparsegpt_exact_per_block_and_nm():
    W, X = layer_problem()
    H = 2 * X.T @ X / len(X)
    pruned, _ = sparsegpt_prune(W, H, 0.5, Pattern(), blocksize=16)
    for b in range(0, 64, 16):
        assert (pruned[:, b : b + 16] == 0).sum() == 32 * 16 // 2
    nm, _ = sparsegpt_prune(W, H, 0.5, Pattern(4, 8), blocksize=16)
    assert ((nm == 0).view(32, 8, 8).sum(-1) == 4).all()


def test_sparsegpt_identity_at_zero_sparsity():
    W, X = layer_problem()
    pruned, _ = sparsegpt_prune(W, 2 * X.T @ X, 0.0, Pattern())
    assert torch.equal(pruned, W)


def test_reconstruction_error_ordering():
    """SparseGPT < Wanda < magnitude on ||WX - W'X|| at the same budget (50% of every row for the masks)."""
    W, X = layer_problem()
    stats = InputNorms(64)
    stats.update(X.unsqueeze(0))
    H = 2 * X.T @ X / len(X)
    magnitude = W.masked_fill(magnitude_mask(W, 0.5, UNSTRUCTURED, per_row=True), 0)
    wanda = W.masked_fill(wanda_mask(W, stats.norm2, 0.5, UNSTRUCTURED), 0)
    sparsegpt, _ = sparsegpt_prune(W, H, 0.5, UNSTRUCTURED)
    errors = [output_error(W, w, X) for w in (sparsegpt, wanda, magnitude)]
    assert errors[0] < errors[1] < errors[2]
    assert (sparsegpt == 0).sum() == (wanda == 0).sum() == (magnitude == 0).sum()
    # the reported relative error is the same quantity, normalised
    assert reconstruction_error(W, sparsegpt, H) == pytest.approx(errors[0] / (W @ X.T).pow(2).sum().item(), rel=1e-3)


def test_dead_inputs_are_zeroed():
    W, X = layer_problem(rows=4, cols=16, tokens=100)
    X[:, 3] = 0
    pruned, _ = sparsegpt_prune(W, 2 * X.T @ X, 0.25, Pattern())
    assert (pruned[:, 3] == 0).all()


def test_hessian_never_falls_back_to_identity():
    with pytest.raises(HessianError, match="could not be factored"):
        inverse_hessian_factor(-torch.eye(4), 0.01)


def test_hessian_retry_grows_damping_and_reports(caplog):
    v = torch.randn(8, 1)
    H = v @ v.T  # rank 1: Cholesky fails without dampening
    with caplog.at_level(logging.WARNING):
        U, damp = inverse_hessian_factor(H, 0.0)
    assert damp > 0 and "retrying" in caplog.text
    method = get_method("sparsegpt", percdamp=0.0)
    result = method.prune(torch.randn(4, 8), type("S", (), {"H": H})(), 0.5, Pattern())
    assert result.notes["percdamp"] == damp


def test_unknown_method_and_option():
    with pytest.raises(UnknownNameError, match="available"):
        get_method("obc")
    with pytest.raises(UnknownNameError, match="blocksize"):
        get_method("sparsegpt", block=3)


def test_wanda_variant_is_the_cumulative_rule_with_one_alpha():
    from llmsparse.methods.wanda import variant_mask

    W, X = layer_problem(rows=128, cols=256, tokens=512)
    stats = InputNorms(256)
    stats.update(X.unsqueeze(0))
    scores = wanda_scores(W, stats.norm2)
    mask, alpha = variant_mask(scores, 0.6)
    assert abs(mask.float().mean().item() - 0.6) <= 0.001
    assert len(set(mask.sum(1).tolist())) > 1  # rows differ in sparsity, unlike plain Wanda
    for i in range(128):  # brute force per row: the longest prefix of sorted scores with cumsum <= alpha * row sum
        row = scores[i].double()
        ordered = row.sort().values
        k = int((ordered.cumsum(0) <= alpha * row.sum()).sum())
        assert set(torch.nonzero(mask[i]).flatten().tolist()) == set(row.argsort()[:k].tolist())


def test_wanda_variant_in_the_method_and_its_refusal_of_n_m():
    W, X = layer_problem(rows=64, cols=128)
    stats = InputNorms(128)
    stats.update(X.unsqueeze(0))
    method = get_method("wanda", variant=True)
    result = method.prune(W, stats, 0.5, UNSTRUCTURED)
    assert abs((result.weight == 0).float().mean().item() - 0.5) <= 0.001 and "alpha" in result.notes
    with pytest.raises(SparsityError, match="unstructured"):
        method.check(Pattern(2, 4))
