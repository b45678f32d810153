"""Quantized weights in the runtime: kernels from integer codes + group scales against float64 dequantize-then-matmul."""

import pytest
import torch
from conftest import tiny_model

from llmsparse.core.quantgrid import Grid, rtn
from llmsparse.formats import get_format
from llmsparse.formats.base import QuantLayout
from llmsparse.formats.bitmask import quantized_compress
from llmsparse.formats.packquant import pack_int32
from llmsparse.runtime import quant
from llmsparse.runtime import sparse_kernel as kernel

ISAS = [pytest.param(isa, marks=pytest.mark.skipif(kernel.ISAS.index(isa) > kernel.ISAS.index(kernel.cpu_isa()), reason=f"no {isa}")) for isa in kernel.ISAS]
# (rows, cols, group): per-channel odd widths, groups of 16/32/48/128 (the SIMD path), 8 and 24 (the scalar path)
SHAPES = [(5, 77, -1), (9, 33, -1), (7, 64, 16), (6, 96, 32), (11, 96, 48), (4, 256, 128), (8, 40, 8), (3, 72, 24), (130, 160, 32)]


@pytest.fixture(scope="module")
def ext():
    if not kernel.available():
        pytest.skip("the C++ extension does not build here (no compiler)")
    return kernel.load()


def quantized(rows, cols, group, bits, symmetric, sparsity, dtype=torch.float32, seed=0):
    """(weight on the grid, its QuantState, float64 reference matrix): row 0 all zero, row 1 dense, row 2's first group zero."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) + (0.5 if not symmetric else 0.0)
    w[torch.rand(rows, cols, generator=g) < sparsity] = 0
    w[0] = 0
    if rows > 2:
        w[1] = torch.randn(cols, generator=g) + 3
        w[2, : cols if group == -1 else group] = 0
    deq, state = rtn(w, Grid(bits, group, symmetric), dtype)
    weight = deq.to(dtype)
    q = state.codes(weight).double()
    width = cols if group == -1 else group
    expand = lambda t: t.double().repeat_interleave(width, dim=1)  # noqa: E731
    exact = (q - expand(state.zero_point)) * expand(state.scale)
    return weight, state, torch.where(weight != 0, exact, torch.zeros_like(exact))


def sparse_layout(weight, state) -> QuantLayout:
    return get_format("bitmask").layout(quantized_compress(weight, state), "w")


def dense_layout(weight, state) -> QuantLayout:
    """The dense (pack-quantized) layout, zero points included (the kernels take them; the stock format writes none)."""
    packed = pack_int32(state.codes(weight), state.grid.bits).contiguous()
    zero = None if state.grid.symmetric else state.zero_point.to(torch.int8)
    return QuantLayout(weight.shape[0], weight.shape[1], state.grid.bits, packed.view(torch.uint8).reshape(-1), state.scale.to(weight.dtype), zero)


def check(ext, layout, reference, isa, dtype):
    rows, cols = reference.shape
    index = kernel.ISAS.index(isa)
    codes, bits, mask, offsets, scale, zero = quant._args(layout)
    dense = torch.empty(rows, cols, dtype=dtype)
    ext.qdecompress(codes, bits, mask, offsets, scale, zero, dense, index)
    assert torch.equal(dense, reference.to(dtype)) and torch.equal(quant.torch_dense(layout), dense)
    for tokens in (1, 2, 3, 4, 5, 8):
        x = torch.randn(tokens, cols, dtype=torch.float64)
        bias = torch.randn(rows)
        expected = x @ reference.t() + bias.double()
        got = ext.qrows_matmul(x.float(), codes, bits, mask, offsets, cols, scale, zero, bias, index)
        atol = 1e-5 * float(x.abs().sum(-1).max() * reference.abs().max() + 1)
        torch.testing.assert_close(got.double(), expected, atol=atol, rtol=1e-5)
    x = torch.randn(2, 9, cols)
    for block in (1, 7, rows + 3):  # the long-input path: the GEMM runs on values rounded to the scales' dtype
        got = ext.qblocked_matmul(x, codes, bits, mask, offsets, cols, scale, zero, None, block, index)
        expected = x.to(dtype).double() @ reference.to(dtype).double().t()
        loose = 1e-5 if dtype == torch.float32 else 1e-2
        torch.testing.assert_close(got.double(), expected, atol=loose * float(expected.abs().max() + 1), rtol=loose)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("rows, cols, group", SHAPES)
def test_quantized_kernels_equal_dequantize_then_matmul(ext, isa, bits, symmetric, rows, cols, group):
    for sparsity in (0.0, 0.5, 0.9):
        weight, state, reference = quantized(rows, cols, group, bits, symmetric, sparsity)
        check(ext, sparse_layout(weight, state), reference, isa, torch.float32)
        check(ext, dense_layout(weight, state), reference, isa, torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_scales_are_read_as_stored(ext, dtype):
    weight, state, reference = quantized(64, 256, 128, 4, True, 0.5, dtype)
    assert sparse_layout(weight, state).scale.dtype == dtype
    check(ext, sparse_layout(weight, state), reference, kernel.cpu_isa(), dtype)


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_a_quantized_bitmask_checkpoint_runs_from_its_codes_with_the_fake_quantized_logits(tokenizer, calib_ids, tmp_path, monkeypatch, symmetric):
    """Loaded straight into QuantLayouts (no value, no dense matrix is ever made); prefill and decode give the in-memory model's logits."""
    import llmsparse
    from llmsparse.formats import bitmask as bitmask_format
    from llmsparse.runtime import SparseLinear, sparse_layers

    model = tiny_model("llama")
    report = llmsparse.prune(model, method="sparsegpt", sparsity=0.5, calib=calib_ids, quantize="int4", group_size=32, symmetric=symmetric)
    out = llmsparse.save_pruned(model, tokenizer, tmp_path / "q", report=report, format="bitmask")

    def refuse(*args, **kwargs):
        raise AssertionError("float values or a dense matrix were built while loading")

    with monkeypatch.context() as patch:
        for name in ("decompress", "with_values"):
            patch.setattr(bitmask_format, name, refuse)
        patch.setattr(SparseLinear, "stored_dense", refuse)
        sparse, _ = llmsparse.load_model(out, runtime="sparse")
        layers = sparse_layers(sparse)
        assert layers and all(isinstance(m.layout(), QuantLayout) and "compressed" not in m.parts for m in layers.values())
        assert all(m.nbytes < 0.3 * m.in_features * m.out_features * 4 for m in layers.values())  # 4-bit codes of half the weights + mask + scales
        ids = calib_ids[:2, :12]
        with torch.no_grad():
            full, ours = model(ids, use_cache=True), sparse(ids, use_cache=True)  # 24 tokens: the blocked path
            torch.testing.assert_close(ours.logits, full.logits, atol=1e-4, rtol=1e-4)
            step = full.logits[:, -1:].argmax(-1)  # 2 tokens: dequantized in registers
            a = model(step, past_key_values=full.past_key_values).logits
            b = sparse(step, past_key_values=ours.past_key_values).logits
            torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


def test_a_pack_quantized_export_runs_from_its_dense_codes(tokenizer, calib_ids, tmp_path):
    """compressed-tensors' pack-quantized layout loads into the runtime too (dense int4 codes, no float matrix)."""
    import llmsparse
    from llmsparse.runtime import sparse_layers

    model = tiny_model("llama")
    report = llmsparse.prune(model, method="sparsegpt", sparsity=0.5, calib=calib_ids, quantize="int4", group_size=32)
    out = llmsparse.save_pruned(model, tokenizer, tmp_path / "packed", report=report, format="pack-quantized")
    sparse, _ = llmsparse.load_model(out, runtime="sparse")
    layers = sparse_layers(sparse)
    assert layers and all(isinstance(m.layout(), QuantLayout) and m.layout().bitmask is None for m in layers.values())
    ids = calib_ids[:1, :12]
    with torch.no_grad():
        torch.testing.assert_close(sparse(ids).logits, model(ids).logits, atol=1e-4, rtol=1e-4)  # the blocked path
        torch.testing.assert_close(sparse(ids[:, :3]).logits, model(ids[:, :3]).logits, atol=1e-4, rtol=1e-4)  # in registers


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("rows, cols, group", [(9, 96, 32), (130, 256, 128), (5, 64, -1), (6, 192, 64), (17, 384, 128), (8, 512, 256), (5, 128, -1), (5, 6400, 128)])
def test_bf16_activations_take_the_bf16_dot_product_path_with_the_same_result(ext, symmetric, rows, cols, group):
    """bf16 inputs with int4 codes run vdpbf16ps on exact bf16 integers (where the CPU has it): the fp32 path's result, one bf16 rounding apart.

    Symmetric codes with groups of 64k (bitmask) or 128k (dense) columns take the rearranged-input kernels
    (quant_bf16.cpp), whose 128 + q values cancel against 136 Σx: inputs with a large common offset check it."""
    for sparsity in (0.0, 0.6):
        weight, state, reference = quantized(rows, cols, group, 4, symmetric, sparsity)
        for layout in (sparse_layout(weight, state), dense_layout(weight, state)):
            codes, bits, mask, offsets, scale, zero = quant._args(layout)
            for tokens, offset in ((1, 0.0), (2, 0.0), (3, 4.0), (4, 0.0), (7, 0.0), (1, 6.0)):
                x = (torch.randn(tokens, cols) + offset).bfloat16()
                got = ext.qrows_matmul(x, codes, bits, mask, offsets, cols, scale, zero, None, kernel.ISAS.index(kernel.cpu_isa()))
                assert got.dtype == torch.bfloat16
                expected = (x.double() @ reference.t()).float()
                torch.testing.assert_close(got.float(), expected, atol=1e-2 * float(expected.abs().max()) + 1e-3, rtol=1e-2)


def test_quantized_sparse_linear_weight_autograd_and_input_major():
    """``weight`` is the dequantized matrix; autograd and the input-major walk fall back to it (dequantized once)."""
    from llmsparse.runtime import SparseLinear

    weight, state, reference = quantized(48, 64, 32, 4, False, 0.5)
    layer = SparseLinear(64, 48, get_format("bitmask"), quantized_compress(weight, state))
    assert torch.equal(layer.weight, weight)
    x = torch.randn(20, 64, requires_grad=True)
    layer(x).sum().backward()  # more than 8 tokens with autograd: F.linear on the dequantized matrix
    torch.testing.assert_close(x.grad, weight.sum(0).expand(20, -1))
    layer.use_input_major(True)  # re-compressed as a float bitmask of the other orientation
    torch.testing.assert_close(layer(x[:3].detach()), x[:3].detach() @ weight.t(), atol=1e-5, rtol=1e-5)
