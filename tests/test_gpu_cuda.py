"""The compiled Triton kernels on CUDA against the CPU loops (skipped without CUDA or triton).

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

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("triton") is None, reason="needs CUDA and triton")

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


def test_compiled_kernels_match_the_cpu_loops():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for name, (agree, ref_error, error, *rest) in results.items():
        assert agree >= 0.999, (name, agree)
        assert error == pytest.approx(ref_error, rel=0.01), name
        assert all(rest), name  # GPTQ: pruned weights stay exactly 0
