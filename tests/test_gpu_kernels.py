"""The fused Triton column loops (llmsparse.gpu) against the CPU loops they replace.

Without CUDA the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, numpy, IEEE float32
without fused multiply-adds): SparseGPT's plain loop then gives the reference loop's weights bit
for bit; the joint mode and GPTQ use the reference order where the CPU loops use sub-blocks, so
they are compared by masks, integer codes and layer error. Skipped when triton is not installed.
This module switches Triton to its interpreter for the whole process; the compiled CUDA kernels
are tested in a clean subprocess by ``tests/test_gpu_cuda.py``.
"""

import os
import subprocess
import sys

import pytest
import torch

os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported; the compiled CUDA kernels: tests/test_gpu_cuda.py
pytest.importorskip("triton")

from llmsparse.core.hessian import prepare_hessian, reconstruction_error  # noqa: E402
from llmsparse.core.masks import Pattern  # noqa: E402
from llmsparse.core.quantgrid import ColumnQuantizer, Grid, dequantize, gptq, quantize_codes, state_of  # noqa: E402
from llmsparse.gpu import dispatch  # noqa: E402
from llmsparse.methods.sparsegpt import _columns, _reference_columns, sparsegpt_prune  # noqa: E402

ROWS, COLS, BLOCK = 48, 160, 64  # blocks of 64, 64 and 32 columns: the lazy update and a narrow last block


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(512, COLS, generator=g) * (torch.rand(COLS, generator=g) * 2 + 0.1)
    H = 2 * X.t() @ X / X.shape[0]
    W = torch.randn(ROWS, COLS, generator=g)
    dead, U, _ = prepare_hessian(H, 0.01)
    return W, H, U


@pytest.fixture
def forced(monkeypatch):
    monkeypatch.setenv(dispatch.FORCE, "1")


def _kernel(W, U, sparsity, pattern, quantizer=None):
    from llmsparse.gpu import sparsegpt_triton

    return sparsegpt_triton.columns(W.clone(), U, BLOCK, sparsity, pattern, quantizer)


@pytest.mark.parametrize("pattern", [Pattern(), Pattern(2, 4), Pattern(4, 8)], ids=str)
def test_sparsegpt_kernel_equals_the_reference_loop(problem, pattern):
    W, H, U = problem
    ref = _reference_columns(W.clone(), U, 0.5, pattern, BLOCK)
    out = _kernel(W, U, 0.5, pattern)
    assert torch.equal(out == 0, ref == 0)  # the masks
    if pattern.structured:
        assert ((out == 0).view(ROWS, -1, pattern.m).sum(-1) == pattern.n).all()
    else:
        assert int((out == 0).sum()) == ROWS * COLS // 2
    assert torch.equal(out, ref)  # the interpreter computes in the reference's order, without FMA
    assert reconstruction_error(W, out, H) == pytest.approx(reconstruction_error(W, ref, H), rel=1e-6)


def _codes(weight, quantizer):
    return quantize_codes(weight, quantizer.scale, quantizer.zero, quantizer.grid)


@pytest.mark.parametrize(
    "pattern,grid,dtype",
    [
        (Pattern(), Grid(4, 32, True), torch.float32),
        (Pattern(2, 4), Grid(4, 32, False), torch.float32),
        (Pattern(), Grid(8, 32, False), torch.bfloat16),
        (Pattern(2, 4), Grid(4, 32, True), torch.float16),
    ],
    ids=str,
)
def test_joint_kernel_matches_the_cpu_joint_loop(problem, pattern, grid, dtype):
    W, H, U = problem
    qa, qb = (ColumnQuantizer(grid, ROWS, COLS, "cpu", dtype) for _ in range(2))
    ref = _columns(W.clone(), U, 0.5, pattern, BLOCK, qa)
    out = _kernel(W, U, 0.5, pattern, qb)
    assert (out == 0).float().mean() >= 0.5  # the mask, plus kept weights that round to 0
    assert ((out == 0) == (ref == 0)).float().mean() >= 0.999
    assert (_codes(out, qb) == _codes(ref, qa)).float().mean() >= 0.999
    assert torch.equal(dequantize(_codes(out, qb), qb.scale, qb.zero, grid), out)  # every weight on its group's grid
    assert reconstruction_error(W, out, H) == pytest.approx(reconstruction_error(W, ref, H), rel=0.01)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gptq_kernel_keeps_the_mask_and_matches_cpu_gptq(problem, forced, dtype):
    W, H, U = problem
    keep = torch.rand(ROWS, COLS, generator=torch.Generator().manual_seed(1)) > 0.4
    grid = Grid(4, 32, False)
    ref, sa = gptq(W, U, grid, keep, BLOCK, dtype)
    out, sb = dispatch.gptq(W, U, grid, keep, BLOCK, dtype)
    assert (out[~keep] == 0).all() and (out[keep] != 0).float().mean() > 0.9
    assert (quantize_codes(out, sb.scale, sb.zero_point, grid) == quantize_codes(ref, sa.scale, sa.zero_point, grid)).float().mean() >= 0.999
    assert reconstruction_error(W, out, H) == pytest.approx(reconstruction_error(W, ref, H), rel=0.01)


def test_sparsegpt_prune_takes_the_kernel_when_forced_dead_inputs_included(problem, monkeypatch):
    W, H, _ = problem
    H = H.clone()
    H[:, 5] = H[5, :] = 0  # a dead input: zeroed before the loop, on both paths
    monkeypatch.setenv(dispatch.FORCE, "0")
    ref, _ = sparsegpt_prune(W, H, 0.5, Pattern(2, 4), BLOCK)
    monkeypatch.setenv(dispatch.FORCE, "1")
    calls = []
    real = dispatch.column_loop
    monkeypatch.setattr("llmsparse.methods.sparsegpt.column_loop", lambda *a, **k: calls.append(1) or real(*a, **k))
    out, _ = sparsegpt_prune(W, H, 0.5, Pattern(2, 4), BLOCK)
    assert calls and torch.equal(out, ref) and (out[:, 5] == 0).all()


@pytest.mark.parametrize("pattern", [Pattern(), Pattern(2, 4)], ids=str)
def test_matrices_sharing_a_hessian_run_stacked_as_one_by_one(problem, forced, pattern):
    W, H, U = problem
    q, k = W[:32], torch.randn(16, COLS, generator=torch.Generator().manual_seed(2)) * 3  # other scales: one threshold each
    alone = [_reference_columns(m.clone(), U, 0.5, pattern, BLOCK) for m in (q, k)]
    stacked = dispatch.column_loop_shared([q.clone(), k.clone()], U, 0.5, pattern, BLOCK)
    for a, b in zip(alone, stacked):
        assert torch.equal(a == 0, b == 0) and int((b == 0).sum()) == b.numel() // 2
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_unsupported_shapes_fall_back_to_the_torch_loop(forced):
    W = torch.zeros(4, 96)
    assert dispatch.column_loop(W, torch.eye(96), 0.5, Pattern(3, 6), 96) is None  # M not a power of two
    assert dispatch.column_loop(W, torch.eye(96), 0.5, Pattern(), 512) is None  # block wider than the kernel's
    assert dispatch.gptq(W.double(), torch.eye(96), Grid(4, 32)) is None  # float64 stays on the CPU loop
    assert not dispatch.supported(128, Pattern(), group=256)  # groups straddling blocks


def test_non_finite_result_is_one_error_per_matrix(problem, forced):
    from llmsparse.errors import NonFiniteError

    W, _, U = problem
    bad = W.clone()
    bad[3, 7] = float("nan")
    with pytest.raises(NonFiniteError, match="q_proj"):
        dispatch.column_loop(bad, U, 0.5, Pattern(2, 4), BLOCK, name="q_proj")


def test_a_failing_triton_is_one_line_with_the_way_around_oom_passes_through(problem, forced, monkeypatch):
    from llmsparse.errors import KernelBuildError
    from llmsparse.gpu import sparsegpt_triton

    W, _, U = problem

    def broken(*args, **kwargs):
        raise RuntimeError("Failed to find C compiler. Please specify via CC environment variable.\nmore")

    monkeypatch.setattr(sparsegpt_triton, "columns", broken)
    with pytest.raises(KernelBuildError, match=r"^the Triton column-loop kernel failed \(RuntimeError: Failed to find C compiler.*\); set LLMSPARSE_TRITON=0"):
        dispatch.column_loop(W.clone(), U, 0.5, Pattern(), BLOCK)

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(sparsegpt_triton, "columns", oom)
    with pytest.raises(torch.OutOfMemoryError):
        dispatch.column_loop(W.clone(), U, 0.5, Pattern(), BLOCK)


def test_importing_llmsparse_imports_no_triton():
    code = "import sys, llmsparse, llmsparse.gpu, llmsparse.methods.sparsegpt; assert 'triton' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("options", [dict(sparsity=0.5), dict(pattern="2:4", quantize="int4", group_size=32)], ids=["50%", "2:4+int4"])
def test_prune_through_the_engine_takes_the_kernel_path(monkeypatch, options):
    """llmsparse.prune on a tiny Llama, device="cpu": the kernel (interpreted) against the torch loops, matrix by matrix."""
    from conftest import VOCAB, tiny_model

    import llmsparse

    ids = torch.randint(0, VOCAB, (4, 32), generator=torch.Generator().manual_seed(1))
    results = {}
    for flag in ("0", "1"):
        monkeypatch.setenv(dispatch.FORCE, flag)
        model = tiny_model("llama")
        llmsparse.prune(model, None, method="sparsegpt", calib=ids, nsamples=4, seqlen=32, device="cpu", **options)
        results[flag] = {n: (m.weight.detach(), state_of(m)) for n, m in model.named_modules() if n.endswith("proj")}
    for name, (ref, ref_state) in results["0"].items():
        out, state = results["1"][name]
        if "quantize" in options:  # float32 scales: values may differ by an ulp of the scale, the codes agree
            # layer 0 sees the same inputs; later layers see inputs that differ in the last bits, and a row's choices cascade
            least = 0.999 if ".layers.0." in name else 0.98
            assert ((out == 0) == (ref == 0)).float().mean() >= least, name
            codes, ref_codes = (quantize_codes(w, st.scale, st.zero_point, st.grid) for w, st in ((out, state), (ref, ref_state)))
            assert (codes == ref_codes).float().mean() >= least, name
        else:
            assert torch.equal(out, ref), name
