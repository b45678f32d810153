"""Quantization that keeps the mask: the grid, RTN, GPTQ against a naive float64 version, SparseGPT's joint mode, bad input."""

import pytest
import torch
from conftest import tiny_model

import llmsparse
from llmsparse.cli import main
from llmsparse.core.hessian import prepare_hessian, reconstruction_error
from llmsparse.core.layout import target_weights
from llmsparse.core.masks import Pattern
from llmsparse.core.quantgrid import ColumnQuantizer, Grid, gptq, rtn, state_of
from llmsparse.errors import SettingsError, UnknownNameError
from llmsparse.methods import METHODS
from llmsparse.methods.sparsegpt import sparsegpt_prune

GRIDS = [Grid(4, 8, True), Grid(4, 8, False), Grid(8, -1, True), Grid(8, 16, False), Grid(4, -1, False)]


def problem(rows=12, cols=32, tokens=256, seed=0):
    """A weight and a full-rank, correlated input Hessian ``2 X^T X / n``."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=g, dtype=torch.float64) / cols**0.5 + torch.eye(cols, dtype=torch.float64)
    X = torch.randn(tokens, cols, generator=g, dtype=torch.float64) @ mix
    W = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    return W, 2 * X.T @ X / tokens


def correlated_layer(rows=24, cols=64, tokens=512, seed=0):
    """A layer whose inputs look like an LLM's: correlated channels of very different scales (where GPTQ's compensation pays)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=g) / cols**0.5
    X = (torch.randn(tokens, cols, generator=g) @ mix) * torch.exp(torch.randn(cols, generator=g))
    return torch.randn(rows, cols, generator=g), 2 * X.T @ X / tokens


def naive_fit(x, bits, symmetric):
    """The grid of one group, written out: range includes 0; symmetric absmax/((2^b-1)/2), zero 0; else min/max with an integer zero."""
    low, high = x.min(1).values.clamp(max=0), x.max(1).values.clamp(min=0)
    scale = torch.maximum(-low, high) / ((2**bits - 1) / 2) if symmetric else (high - low) / (2**bits - 1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero group
    zero = torch.zeros_like(low) if symmetric else torch.round(-low / scale) - 2 ** (bits - 1)
    return scale, zero


def naive_gptq(W, H, grid, keep=None, percdamp=0.01, U=None):
    """GPTQ one column at a time in float64, no blocks: err = (w - q)/U_ii, W[:, i:] -= err U[i, i:] (masked by ``keep``)."""
    W, H = W.clone(), H.clone()
    H += percdamp * torch.diagonal(H).mean() * torch.eye(H.shape[0], dtype=H.dtype)
    U = torch.linalg.cholesky(torch.linalg.inv(H), upper=True) if U is None else U
    if keep is not None:
        W = W * keep
    g = W.shape[1] if grid.group_size == -1 else grid.group_size
    lo, hi = -(2 ** (grid.bits - 1)), 2 ** (grid.bits - 1) - 1
    for i in range(W.shape[1]):
        if i % g == 0:
            scale, zero = naive_fit(W[:, i : i + g], grid.bits, grid.symmetric)
        q = (torch.clamp(torch.round(W[:, i] / scale) + zero, lo, hi) - zero) * scale
        update = torch.outer((W[:, i] - q) / U[i, i], U[i, i:])
        W[:, i:] -= update * keep[:, i:] if keep is not None else update
        W[:, i] = q
    return W


def distinct_per_group(W, grid):
    g = W.shape[1] if grid.group_size == -1 else grid.group_size
    return max(len(W[r, c : c + g].unique()) for r in range(W.shape[0]) for c in range(0, W.shape[1], g))


@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_rtn_lies_on_the_grid_and_keeps_zeros_zero(grid):
    W, _ = problem()
    W = W.float().masked_fill(torch.rand(W.shape, generator=torch.Generator().manual_seed(3)) < 0.5, 0)
    Q, state = rtn(W, grid)
    assert distinct_per_group(Q, grid) <= 2**grid.bits
    assert bool((Q[W == 0] == 0).all())
    codes = state.codes(Q)
    assert codes.dtype == torch.int8 and int(codes.min()) >= grid.qmin and int(codes.max()) <= grid.qmax
    step = state.scale.repeat_interleave(W.shape[1] // state.scale.shape[1], 1)
    assert bool(((Q - W).abs() <= step / 2 + 1e-6).all())  # nearest: within half a step (no clipping: the range covers the group)


@pytest.mark.parametrize("grid", GRIDS, ids=str)
@pytest.mark.parametrize("masked", [False, True], ids=["dense", "masked"])
def test_gptq_equals_a_naive_float64_gptq(grid, masked):
    W, H = problem()
    keep = torch.rand(W.shape, generator=torch.Generator().manual_seed(5)) >= 0.5 if masked else None
    _, U, _ = prepare_hessian(H, 0.01)
    if grid.symmetric:
        # absmax/7.5 puts every group's largest weight on a rounding tie (±7.5), which the last bit of
        # float64 decides: run both loops in the same order of operations (one block, the same U)
        ours, state = gptq(W, U, grid, keep, blocksize=W.shape[1], dtype=torch.float64)
        reference = naive_gptq(W, H, grid, keep, U=U)
    else:  # blocks and lazy updates against the column-by-column loop, each with its own factorisation
        ours, state = gptq(W, U, grid, keep, blocksize=16, dtype=torch.float64)
        reference = naive_gptq(W, H, grid, keep)
    assert torch.allclose(ours, reference, rtol=0, atol=1e-10)
    assert distinct_per_group(ours, grid) <= 2**grid.bits
    if masked:
        assert bool((ours[~keep] == 0).all())  # pruned: exactly zero, never moved


def test_gptq_never_moves_a_pruned_weight_whatever_its_value():
    """Only the mask matters: the pruned entries' values (zeroed first) change nothing, and they end exactly zero."""
    W, H = problem()
    keep = torch.rand(W.shape, generator=torch.Generator().manual_seed(7)) >= 0.5
    _, U, _ = prepare_hessian(H, 0.01)
    grid = Grid(4, 8, False)
    a, _ = gptq(W * keep, U, grid, keep, blocksize=16)
    b, _ = gptq(W + 100 * ~keep, U, grid, keep, blocksize=16)
    assert torch.equal(a, b) and bool((a[~keep] == 0).all())


@pytest.mark.parametrize("pattern", [Pattern(), Pattern(2, 4)], ids=str)
@pytest.mark.parametrize("grid", [Grid(4, 8, True), Grid(4, 16, False), Grid(4, -1, True)], ids=str)
def test_joint_sparsegpt_beats_prune_then_rtn_on_the_same_layer(pattern, grid):
    W, H = correlated_layer()
    pruned, _ = sparsegpt_prune(W, H, 0.5, pattern, blocksize=16)
    then_rtn, _ = rtn(pruned, grid)
    quantizer = ColumnQuantizer(grid, *W.shape, "cpu")
    joint, _ = sparsegpt_prune(W, H, 0.5, pattern, blocksize=16, quantizer=quantizer)
    assert distinct_per_group(joint, grid) <= 2**grid.bits
    quantizer.state().codes(joint)  # on the recorded grid
    assert (joint == 0).sum() >= W.numel() // 2
    if pattern.structured:
        assert bool(((joint == 0).view(-1, 4).sum(1) >= 2).all())
    assert reconstruction_error(W, joint, H) < reconstruction_error(W, then_rtn, H)
    assert reconstruction_error(W, pruned, H) < reconstruction_error(W, joint, H)  # quantizing costs something


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("pattern", [None, "2:4"])
def test_every_method_keeps_its_zeros_and_lands_on_the_grid(method, pattern, calib_ids):
    model = tiny_model("llama")
    sparsity = None if pattern else 0.5
    report = llmsparse.prune(model, method=method, sparsity=sparsity, pattern=pattern, calib=calib_ids, quantize="int4", group_size=32, device="cpu")
    assert report.options["quantize"] == "int4" and report.options["joint"] == (method == "sparsegpt")
    for name, module in target_weights(model).items():
        w = module.weight.data
        state = state_of(module)
        assert state is not None, name
        state.codes(w)  # every weight (zeros included) is a grid value
        assert distinct_per_group(w, state.grid) <= 16
        zeros = w == 0
        if pattern:
            assert bool((zeros.view(-1, 4).sum(1) >= 2).all()), name
        else:
            assert zeros.float().mean() >= 0.5 - 1 / w.shape[1], name


def test_rtn_pass_and_sparsity_zero_need_no_calibration_and_gptq_at_zero_is_plain_gptq(calib_ids):
    model = tiny_model("llama")
    llmsparse.prune(model, method="magnitude", sparsity=0.0, quantize="int8", group_size=-1, quantize_method="rtn")
    module = next(iter(target_weights(model).values()))
    assert state_of(module).grid == Grid(8, -1, True)
    reference = tiny_model("llama")
    dense = next(iter(target_weights(reference).values())).weight.data
    assert torch.equal(module.weight.data, rtn(dense, Grid(8, -1, True))[0])


@pytest.mark.parametrize(
    "kwargs, error, text",
    [
        (dict(quantize="int4", group_size=48), SettingsError, "group_size 48 does not divide"),
        (dict(quantize="int3"), UnknownNameError, "int3"),
        (dict(quantize="int4", group_size=0), SettingsError, "group_size"),
        (dict(quantize="int4", quantize_method="awq"), UnknownNameError, "awq"),
    ],
)
def test_bad_quantization_requests_fail_before_any_weight_changes(kwargs, error, text, calib_ids):
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=text):
        llmsparse.prune(model, method="wanda", sparsity=0.5, calib=calib_ids, **kwargs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(UnknownNameError):
        Grid(3)


def test_cli_refuses_a_bad_group_size_with_exit_2_and_writes_nothing(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["prune", str(model_dir), "--method", "magnitude", "--sparsity", "0.5", "--quantize", "int4", "--quantize-method", "rtn", "--group-size", "48", "--output", str(out)])
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("llmsparse: error")]
    assert len(lines) == 1 and "group_size 48 does not divide" in lines[0]
