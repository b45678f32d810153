"""The sparse-weight kernels against the masked dense matmul: every layout, dtype and SIMD path this CPU has, odd shapes."""

import logging

import pytest
import torch

from llmsparse.errors import UnknownNameError
from llmsparse.formats import get_format
from llmsparse.runtime import SparseLinear
from llmsparse.runtime import linear as linear_module
from llmsparse.runtime import sparse_kernel as kernel

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# widths that are not multiples of 8 or 16, a single column, and one wider than a 16-column group
SHAPES = [(5, 3), (7, 9), (3, 1), (33, 77), (64, 130), (17, 16)]


def available_isas() -> list[str]:
    return list(kernel.ISAS[: kernel.ISAS.index(kernel.cpu_isa()) + 1])


ISAS = [pytest.param(isa, marks=pytest.mark.skipif(isa not in available_isas(), reason=f"this CPU has no {isa}")) for isa in kernel.ISAS]


@pytest.fixture(scope="module")
def ext():
    if not kernel.available():
        pytest.skip("the C++ extension does not build here (no compiler)")
    return kernel.load()


def sparse_matrix(rows: int, cols: int, dtype: torch.dtype, sparsity: float, seed: int = 0) -> torch.Tensor:
    """Random values with ``sparsity`` zeros, plus an all-zero first row and a fully dense second row."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    w[torch.rand(rows, cols, generator=g) < sparsity] = 0
    w[0] = 0
    if rows > 1:
        w[1] = torch.randn(cols, generator=g) + 3  # no zeros
    return w.to(dtype)


def reference(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The masked dense matmul in float64 (the weight's zeros are the mask)."""
    y = x.double() @ w.double().t()
    return (y + bias.double() if bias is not None else y).float()


def tolerance(dtype: torch.dtype, x: torch.Tensor, w: torch.Tensor) -> float:
    """fp32 accumulation in another order: relative to the size of the terms summed."""
    return 1e-5 * float(x.abs().sum(-1).max() * w.float().abs().max() + 1)


def layout_args(parts: dict, fmt) -> tuple:
    layout = fmt.layout(parts, "w")
    offsets = layout.row_offsets if layout.row_offsets is not None else torch.empty(0, dtype=torch.int64)
    return layout.values, layout.bitmask, offsets


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows, cols", SHAPES)
def test_rows_cols_and_decompress_equal_the_masked_dense_matmul(ext, isa, dtype, rows, cols):
    index = kernel.ISAS.index(isa)
    fmt = get_format("bitmask")
    for sparsity in (0.0, 0.5, 0.9, 1.0):
        w = sparse_matrix(rows, cols, dtype, sparsity)
        values, bits, offsets = layout_args(fmt.compress(w, "w"), fmt)
        out = torch.empty(rows, cols, dtype=dtype)
        ext.decompress(values, bits, offsets, out, index)
        assert torch.equal(out, w)
        wt = w.t().contiguous()  # the same matrix stored input-major
        t_values, t_bits, t_offsets = layout_args(fmt.compress(wt, "wt"), fmt)
        for tokens in (1, 3, 4, 9):
            x = torch.randn(tokens, cols)
            x[:, ::4] = 0  # zero inputs (what activation sparsity leaves) are skipped by the input-major walk
            bias = torch.randn(rows)
            expected = reference(x, w, bias)
            got_rows = ext.rows_matmul(x, values, bits, offsets, cols, bias, index)
            got_cols = ext.cols_matmul(x, t_values, t_bits, t_offsets, rows, bias, index)
            for got in (got_rows, got_cols):
                assert got.shape == (tokens, rows) and got.dtype == x.dtype
                torch.testing.assert_close(got, expected, atol=tolerance(dtype, x, w), rtol=1e-5)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows, cols", SHAPES)
def test_blocked_matmul_equals_the_masked_dense_matmul_in_the_values_dtype(ext, isa, dtype, rows, cols):
    """The long-input path: blocks of any size (one row, a remainder, more than the matrix) give the GEMM's result."""
    fmt = get_format("bitmask")
    for sparsity in (0.0, 0.5, 1.0):
        w = sparse_matrix(rows, cols, dtype, sparsity)
        values, bits, offsets = layout_args(fmt.compress(w, "w"), fmt)
        x = torch.randn(2, 11, cols)
        bias = torch.randn(rows)
        expected = reference(x.to(dtype).view(-1, cols), w, bias).view(2, 11, rows)  # the GEMM runs in the values' dtype
        for block in (1, 2, 7, rows + 5):
            got = ext.blocked_matmul(x, values, bits, offsets, cols, bias, block, kernel.ISAS.index(isa))
            assert got.shape == (2, 11, rows) and got.dtype == x.dtype
            loose = 1e-5 if dtype == torch.float32 else 1e-2  # one rounding of each output to 16 bits
            scale = float(expected.abs().max()) + 1
            torch.testing.assert_close(got, expected, atol=tolerance(dtype, x, w) + loose * scale, rtol=loose)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nm_layout_without_row_offsets(ext, isa, dtype):
    fmt = get_format("2:4")
    w = torch.randn(24, 40).to(dtype)
    w.view(24, -1, 4)[..., 1:3] = 0
    values, bits, offsets = layout_args(fmt.compress(w, "w"), fmt)
    assert offsets.numel() == 0
    x = torch.randn(2, 3, 40).to(dtype)  # any leading shape, the model's dtype in and out
    got = ext.rows_matmul(x, values, bits, offsets, 40, None, kernel.ISAS.index(isa))
    assert got.shape == (2, 3, 24) and got.dtype == dtype
    expected = reference(x.float().view(-1, 40), w).view(2, 3, 24).to(dtype)
    loose = {} if dtype == torch.float32 else {"atol": 1e-2, "rtol": 1e-2}  # one rounding to 16 bits either side
    torch.testing.assert_close(got, expected, **loose)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("module", ["linear", "conv1d"])
def test_sparse_linear_decode_prefill_and_torch_paths(dtype, module, monkeypatch):
    """Up to DECODE_TOKENS tokens the kernels walk the rows, longer inputs decompress blocks of rows (output-major) or the
    whole matrix (input-major) and multiply; without the extension torch ops do both."""
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    if module == "linear":
        dense = torch.nn.Linear(45, 29).to(dtype)
        weight = dense.weight
    else:
        dense = Conv1D(29, 45).to(dtype)  # weight stored [in, out]
        torch.nn.init.normal_(dense.bias)
        weight = dense.weight.t()
    with torch.no_grad():
        dense.weight[torch.rand(dense.weight.shape) < 0.6] = 0
    layer = SparseLinear.from_module(dense, get_format("bitmask"), "layer")
    assert layer.input_major == (module == "conv1d") and torch.equal(layer.weight, weight)
    for use_kernel in (True, False):
        monkeypatch.setattr(kernel, "available", lambda use=use_kernel: use)
        for tokens in (1, linear_module.DECODE_TOKENS, linear_module.DECODE_TOKENS + 1, 40):
            x = torch.randn(2, tokens, 45).to(dtype)
            with torch.no_grad():
                got, expected = layer(x), dense(x)
            assert got.dtype == dtype
            loose = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 5e-2, "rtol": 2e-2}
            torch.testing.assert_close(got.float(), expected.float(), **loose)


def test_orientation_can_change_and_weight_is_read_only():
    torch.manual_seed(0)
    dense = torch.nn.Linear(30, 20)
    with torch.no_grad():
        dense.weight[torch.rand(20, 30) < 0.5] = 0
    layer = SparseLinear.from_module(dense, get_format("bitmask"))
    x = torch.randn(1, 30)
    x[0, ::3] = 0
    before = layer(x)
    layer.use_input_major(True)
    assert layer.input_major and layer.bitmask.shape == (30, 3) and torch.equal(layer.weight, dense.weight)
    torch.testing.assert_close(layer(x), before, atol=1e-5, rtol=1e-5)
    layer.use_input_major(False)
    torch.testing.assert_close(layer(x), before, atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="inference tensor"):
        layer.weight.mul_(0)  # pruning or training a compressed layer fails loudly instead of editing a copy


def test_isa_requests_fall_back_with_a_note_never_a_crash(ext, monkeypatch, caplog):
    monkeypatch.setenv(kernel.ISA_ENV, "avx512")
    kernel.cpu_isa.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger="llmsparse.runtime.sparse_kernel"):
            chosen = kernel.cpu_isa()
        if chosen != "avx512":
            assert "supports only" in caplog.text
            values, bits, offsets = layout_args(get_format("bitmask").compress(torch.eye(4), "w"), get_format("bitmask"))
            with pytest.raises(RuntimeError, match="no AVX-512F"):  # the extension refuses what the CPU lacks instead of faulting
                ext.rows_matmul(torch.ones(1, 4), values, bits, offsets, 4, None, kernel.ISAS.index("avx512"))
        monkeypatch.setenv(kernel.ISA_ENV, "scalar")
        kernel.cpu_isa.cache_clear()
        assert kernel.cpu_isa() == "scalar"
        monkeypatch.setenv(kernel.ISA_ENV, "sse9")
        kernel.cpu_isa.cache_clear()
        with pytest.raises(UnknownNameError, match="LLMSPARSE_CPU_ISA"):
            kernel.cpu_isa()
    finally:
        kernel.cpu_isa.cache_clear()


@pytest.mark.parametrize("rows, cols", SHAPES + [(40, 11008), (41, 8200)])  # wide rows: one token walks rows in pairs
def test_bf16_inputs_on_bf16_values_give_the_fp32_paths_result(ext, rows, cols):
    """bf16 x on bf16 values (vdpbf16ps where the CPU has it): products are exact, so only the output's bf16 rounding differs."""
    fmt = get_format("bitmask")
    for sparsity in (0.0, 0.5, 0.9, 1.0):
        w = sparse_matrix(rows, cols, torch.bfloat16, sparsity)
        values, bits, offsets = layout_args(fmt.compress(w, "w"), fmt)
        for tokens in (1, 2, 3, 4, 6):
            x = torch.randn(tokens, cols).bfloat16()
            got = ext.rows_matmul(x, values, bits, offsets, cols, None, kernel.ISAS.index(kernel.cpu_isa()))
            expected = reference(x.float(), w)
            assert got.dtype == torch.bfloat16
            torch.testing.assert_close(got.float(), expected, atol=tolerance(torch.bfloat16, x, w) + 1e-2 * float(expected.abs().max()), rtol=1e-2)
