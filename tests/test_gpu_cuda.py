"""The compiled Triton kernels: built for sm_90 on any machine, and run on CUDA against the CPU loops where there is one.

Runs in a subprocess without ``TRITON_INTERPRET`` (``tests/test_gpu_kernels.py`` sets it for its
whole process). On a GPU, Triton may fuse ``w - err*u`` into an FMA and cuBLAS orders the lazy
GEMM differently, so results are compared by masks, codes and layer error, not bit for bit.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

COMPILE = r"""
import json, sys, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from llmsparse.gpu.sparsegpt_triton import _block_kernel
signature = {"W": "*fp32", "stride_w": "i32", "U": "*fp32", "stride_u": "i32", "E": "*fp32", "P": "*i8", "S": "*fp32", "Z": "*fp32",
             "stride_q": "i32", "group0": "i32", "rows": "i32", "width": "i32", "tiny": "fp32"}
variants = {  # N, M, KEEP_PRUNED, QUANT, G, SYMMETRIC, SCALE_DTYPE
    "unstructured": (0, 0, False, False, 128, True, 0), "2:4": (2, 4, False, False, 128, True, 0), "4:8": (4, 8, False, False, 128, True, 0),
    "2:4+int4 g32 asym bf16": (2, 4, False, True, 32, False, 1), "unstructured+int4 fp16": (0, 0, False, True, 128, True, 2),
    "gptq keep fp32": (0, 0, True, True, 128, False, 0),
}
ptx = {}
for name, (n, m, keep, quant, g, sym, sd) in variants.items():
    const = dict(BM=16, BLOCK=128, N=n, M=m, KEEP_PRUNED=keep, QUANT=quant, G=g, QMIN=-8, QMAX=7, SYMMETRIC=sym, LEVELS=15.0, SCALE_DTYPE=sd)
    kernel = triton.compile(ASTSource(_block_kernel, {**signature, **dict.fromkeys(const, "constexpr")}, const),
                            target=GPUTarget("cuda", 90, 32), options={"enable_fp_fusion": False})
    ptx[name] = [len(kernel.asm["cubin"]), kernel.asm["ptx"].count("fma.rn.f32")]
print(json.dumps(ptx))
"""

SCRIPT = r"""
import json, torch
from llmsparse.core.hessian import prepare_hessian, reconstruction_error
from llmsparse.core.masks import Pattern
from llmsparse.core.quantgrid import ColumnQuantizer, Grid, gptq, quantize_codes
from llmsparse.gpu import dispatch
from llmsparse.methods.sparsegpt import _columns, _reference_columns
torch.backends.cuda.matmul.allow_tf32 = False
g = torch.Generator().manual_seed(0)
rows, cols = 512, 1024
X = torch.randn(4096, cols, generator=g) * (torch.rand(cols, generator=g) * 2 + 0.1)
H = 2 * X.t() @ X / X.shape[0]
W = torch.randn(rows, cols, generator=g)
_, U, _ = prepare_hessian(H, 0.01)
out = {}
for name, pattern in (("50%", Pattern()), ("2:4", Pattern(2, 4))):
    ref = _reference_columns(W.clone(), U, 0.5, pattern, 128)
    got = dispatch.column_loop(W.cuda(), U.cuda(), 0.5, pattern, 128).cpu()
    out[name] = [((got == 0) == (ref == 0)).float().mean().item(), reconstruction_error(W, ref, H), reconstruction_error(W, got, H)]
grid = Grid(4, 128, True)
qa, qb = ColumnQuantizer(grid, rows, cols, "cpu", torch.bfloat16), ColumnQuantizer(grid, rows, cols, "cuda", torch.bfloat16)
ref = _columns(W.clone(), U, 0.5, Pattern(2, 4), 128, qa)
got = dispatch.column_loop(W.cuda(), U.cuda(), 0.5, Pattern(2, 4), 128, qb).cpu()
same = (quantize_codes(got, qb.scale.cpu(), qb.zero.cpu(), grid) == quantize_codes(ref, qa.scale, qa.zero, grid)).float().mean().item()
out["2:4+int4"] = [same, reconstruction_error(W, ref, H), reconstruction_error(W, got, H)]
keep = torch.rand(rows, cols, generator=g) > 0.5
ref, sa = gptq(W, U, grid, keep, 128, torch.bfloat16)
got, sb = dispatch.gptq(W.cuda(), U.cuda(), grid, keep.cuda(), 128, torch.bfloat16)
got = got.cpu()
same = (quantize_codes(got, sb.scale, sb.zero_point, grid) == quantize_codes(ref, sa.scale, sa.zero_point, grid)).float().mean().item()
out["gptq"] = [same, reconstruction_error(W, ref, H), reconstruction_error(W, got, H), bool((got[~keep] == 0).all())]
print(json.dumps(out))
"""


def _run(script: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@needs_triton
def test_every_kernel_variant_compiles_for_an_h100_without_a_gpu():
    """Triton's frontend and its bundled ptxas build sm_90 cubins on any machine: a GPU-only compile error shows up here."""
    built = _run(COMPILE)
    assert len(built) == 6
    for name, (cubin_bytes, fused) in built.items():
        assert cubin_bytes > 0 and fused == 0, name  # no fused multiply-adds: updates round as the CPU loop's


@needs_triton
@needs_cuda
def test_compiled_kernels_match_the_cpu_loops():
    results = _run(SCRIPT)
    for name, (agree, ref_error, error, *rest) in results.items():
        assert agree >= 0.999, (name, agree)
        assert error == pytest.approx(ref_error, rel=0.01), name
        assert all(rest), name  # GPTQ: pruned weights stay exactly 0
