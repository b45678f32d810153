"""Optimal weights on a fixed mask (ADMM/PCG), ALPS and RIA: checked against closed forms and brute force."""

import pytest
import torch
from conftest import VALID, tiny_model

import llmsparse
from llmsparse.cli import main
from llmsparse.core.hessian import reconstruction_error
from llmsparse.core.masks import Pattern
from llmsparse.core.solvers import problem, solve
from llmsparse.errors import CalibrationDataError, SparsityError, UnknownNameError
from llmsparse.methods.alps import alps_prune
from llmsparse.methods.ria import reallocated_mask, ria_scores, zigzag_permutation


def layer_problem(out=12, inp=24, tokens=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(tokens, inp, generator=g, dtype=torch.float64) @ torch.randn(inp, inp, generator=g, dtype=torch.float64)
    X[:, 3] = 0  # a dead input
    W = torch.randn(out, inp, generator=g, dtype=torch.float64)
    keep = torch.rand(out, inp, generator=g) > 0.5
    keep[0] = False  # a fully pruned row
    keep[1] = True  # a dense row
    return X, W, keep


def closed_form(W, keep, H, G, damp):
    """Per row, the normal equations restricted to the kept columns, in float64; a kept weight of a
    dead input (no calibration signal, H_jj = 0) keeps its dense value, as the ridge alone decides it."""
    D = torch.diag(torch.diagonal(H))
    A, target = H + damp * D, (H if G is None else G)
    dead = torch.diagonal(H) == 0
    out = torch.zeros_like(W)
    for i in range(W.shape[0]):
        S = (keep[i] & ~dead).nonzero().squeeze(1)
        out[i, keep[i] & dead] = W[i, keep[i] & dead]
        if S.numel():
            b = target @ W[i] + damp * D @ W[i]
            out[i, S] = torch.linalg.solve(A[S][:, S], b[S])
    return out


@pytest.mark.parametrize("solver, iters", [("pcg", 300), ("admm", 300)])
@pytest.mark.parametrize("dense_target", [False, True])
def test_fixed_mask_solvers_reach_the_least_squares_solution(solver, iters, dense_target):
    X, W, keep = layer_problem()
    H = X.t() @ X
    G = X.t() @ (X + 0.05 * torch.randn_like(X)) if dense_target else None
    ref = closed_form(W, keep, H, G, 0.01)
    got = solve(problem(W, keep, H, G, 0.01, torch.float64), W * keep, solver, iters, polish=100)
    assert torch.equal(got == 0, ~keep | (got == 0)) and (got[~keep] == 0).all()
    assert torch.allclose(got.double(), ref, atol=1e-4, rtol=1e-4), (got.double() - ref).abs().max()


@pytest.mark.parametrize("solver", ["pcg", "admm"])
def test_solvers_never_raise_the_objective_from_their_warm_start(solver):
    for seed in range(5):
        X, W, keep = layer_problem(seed=seed)
        H = (X.t() @ X).float()
        p = problem(W.float(), keep, H, None, 0.01)
        for start in (W.float() * keep, torch.zeros_like(W.float()), 3 * W.float() * keep):
            for iters in (1, 2, 5):
                got = solve(problem(W.float(), keep, H, None, 0.01), start, solver, iters)
                scaled = lambda w, p=p: w * p.n.unsqueeze(0)  # noqa: E731
                before = p.objective(scaled(start * keep))
                assert (p.objective(scaled(got)) <= before + 1e-6 * before.abs()).all()  # float32 rounding only
                assert (got[~keep] == 0).all()


@pytest.mark.parametrize("pattern, sparsity", [(Pattern(), 0.5), (Pattern(), 0.7), (Pattern(2, 4), 0.5), (Pattern(4, 8), 0.5)])
def test_alps_support_has_the_exact_count_and_pattern_and_beats_the_warm_start(pattern, sparsity):
    X, W, _ = layer_problem(out=16, inp=32, tokens=200)
    H = (X.t() @ X).float()
    new, iterations = alps_prune(W.float(), H, sparsity, pattern)
    zeros = new == 0
    if pattern.structured:
        assert (zeros.view(16, -1, pattern.m).sum(-1) == pattern.n).all()
    else:
        assert zeros.sum() == int(round(W.numel() * sparsity, 6))
    magnitude = W.float().masked_fill(llmsparse.core.masks.select(W.abs().float(), sparsity, pattern, per_row=False), 0)
    assert reconstruction_error(W.float(), new, H) < reconstruction_error(W.float(), magnitude, H)
    assert 1 <= iterations <= 300


def test_ria_scores_equal_the_formula_entry_by_entry():
    g = torch.Generator().manual_seed(0)
    W, norm2 = torch.randn(5, 7, generator=g, dtype=torch.float64), torch.rand(7, generator=g, dtype=torch.float64)
    got = ria_scores(W, norm2, a=0.5)
    for i in range(5):
        for j in range(7):
            col = sum(abs(W[k, j]) for k in range(5))
            row = sum(abs(W[i, k]) for k in range(7))
            assert got[i, j] == pytest.approx((abs(W[i, j]) / col + abs(W[i, j]) / row) * norm2[j].sqrt() ** 0.5, rel=1e-12)


def test_channel_reallocation_only_chooses_which_weights_are_pruned():
    g = torch.Generator().manual_seed(0)
    W, x = torch.randn(8, 16, generator=g, dtype=torch.float64), torch.randn(3, 16, generator=g, dtype=torch.float64)
    scores = ria_scores(W, torch.rand(16, generator=g, dtype=torch.float64))
    mask, perm = reallocated_mask(scores, Pattern(2, 4))
    assert sorted(perm.tolist()) == list(range(16))
    assert (mask[:, perm].view(8, -1, 4).sum(-1) == 2).all()  # N:M in the permuted order
    # computing in the permuted order (inputs and weights permuted together) gives the same outputs
    assert torch.allclose((x[:, perm] @ W[:, perm].masked_fill(mask[:, perm], 0).t()), x @ W.masked_fill(mask, 0).t())
    # the zig-zag deal spreads the strongest channels over all groups
    strongest = torch.argsort(scores.sum(0), descending=True)[:4]
    positions = {int((perm == c).nonzero()) // 4 for c in strongest}
    assert len(positions) == 4
    assert torch.equal(zigzag_permutation(torch.arange(8.0), 4), torch.tensor([7, 4, 3, 0, 6, 5, 2, 1]))


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "magnitude", "ria", "dsnot"])
@pytest.mark.parametrize("target", ["pruned", "dense"])
def test_reconstruction_composes_with_methods_and_lowers_the_error(method, target, calib_ids):
    plain, rebuilt = tiny_model("llama"), tiny_model("llama")
    a = llmsparse.prune(plain, method=method, pattern="2:4", calib=calib_ids, device="cpu")
    b = llmsparse.prune(rebuilt, method=method, pattern="2:4", calib=calib_ids, device="cpu", reconstruct="pcg", reconstruct_target=target)
    for (name, p), q in zip(plain.named_parameters(), rebuilt.parameters()):
        if name in {m.name + ".weight" for m in a.matrices}:
            if ".layers.0." in name:  # same inputs, same mask: reconstruction keeps it exactly
                assert torch.equal(p == 0, q == 0), name
            assert (q.view(q.shape[0], -1, 4) == 0).sum(-1).ge(2).all(), name
    assert b.options["reconstruct"] == "pcg"
    if target == "pruned":
        first = [m for m in b.matrices if m.layer == 0]
        assert all(m.error <= m.notes["err_before_reconstruct"] + 1e-6 for m in first)


def test_alps_and_ria_with_owl_and_reconstruction(calib_ids):
    model = tiny_model("qwen2")
    report = llmsparse.prune(model, method="alps", sparsity=0.6, calib=calib_ids, device="cpu", layer_budget="owl", owl_lambda=0.05)
    assert report.global_sparsity == pytest.approx(0.6, abs=0.01)
    model = tiny_model("gemma3")
    report = llmsparse.prune(model, method="ria", sparsity=0.5, calib=calib_ids, device="cpu", reconstruct="admm")
    assert report.global_sparsity == pytest.approx(0.5, abs=1e-3)


def test_bad_reconstruction_requests_are_refused(model_dir, tmp_path, capsys, calib_ids):
    with pytest.raises(CalibrationDataError, match="needs calibration data"):
        llmsparse.prune(tiny_model("llama"), method="magnitude", sparsity=0.5, reconstruct="pcg")
    with pytest.raises(UnknownNameError, match="did you mean admm"):
        llmsparse.prune(tiny_model("llama"), method="wanda", sparsity=0.5, calib=calib_ids, reconstruct="adm")
    with pytest.raises(SparsityError, match="not divisible"):
        llmsparse.prune(tiny_model("llama"), method="alps", pattern="3:7", calib=calib_ids)
    with pytest.raises(SparsityError, match="N:M patterns only"):
        llmsparse.prune(tiny_model("llama"), method="ria", sparsity=0.5, calib=calib_ids, method_options={"reallocate": True})
    out = tmp_path / "out"
    base = ["prune", str(model_dir), "--output", str(out), "--nsamples", "2", "--seqlen", "16"]
    assert main([*base, "--method", "magnitude", "--sparsity", "0.5", "--reconstruct", "admm"]) == 2
    assert "--reconstruct admm needs --calib" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--method", "wanda", "--sparsity", "0.5", "--calib", str(VALID), "--reconstruct", "lsq"])
    assert "unknown reconstruct 'lsq'" in capsys.readouterr().err
    assert main([*base, "--method", "alps", "--pattern", "3:7", "--calib", str(VALID)]) == 2
    assert "not divisible" in capsys.readouterr().err
    assert not out.exists()
