"""The sparse kernels on a busy machine: with another process spinning on a core, a sparse call stays near the dense one."""

import statistics
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from llmsparse.core.quantgrid import Grid, rtn
from llmsparse.formats import get_format
from llmsparse.formats.bitmask import quantized_compress
from llmsparse.runtime import SparseLinear
from llmsparse.runtime import sparse_kernel as kernel

SPIN = "import torch\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\nwhile True:\n    a = torch.tanh(a @ a)\n"


def medians(calls: dict, repeats: int = 40) -> dict:
    for fn in calls.values():
        fn()
    times = {k: [] for k in calls}
    for _ in range(repeats):
        for k, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


@pytest.mark.skipif(not kernel.available(), reason="the C++ extension does not build here")
def test_sparse_calls_are_not_3x_slower_than_dense_under_a_competing_thread():
    """Generous bound (the issue's target is 0.9x of the fastest dense): a static split used to wait out a preempted thread."""
    torch.manual_seed(0)
    w = torch.randn(2048, 2048)
    w[torch.rand(w.shape) < 0.5] = 0
    fmt = get_format("bitmask")
    deq, state = rtn(w, Grid(4, 128, True), torch.bfloat16)
    layers = {"bf16": SparseLinear(2048, 2048, fmt, fmt.compress(w.bfloat16(), "w")),
              "int4": SparseLinear(2048, 2048, fmt, quantized_compress(deq.bfloat16(), state))}
    x = torch.randn(1, 2048).bfloat16()
    w16, w32 = w.bfloat16(), w.clone()
    competitor = subprocess.Popen([sys.executable, "-c", SPIN])
    try:
        time.sleep(1.0)  # the competitor is running
        with torch.no_grad():
            m = medians({"dense bf16": lambda: F.linear(x, w16), "dense fp32": lambda: F.linear(x.float(), w32)}
                        | {k: (lambda layer=layer: layer(x)) for k, layer in layers.items()})
    finally:
        competitor.kill()
        competitor.wait()
    dense = min(m["dense bf16"], m["dense fp32"])
    for k in layers:
        assert m[k] < 3 * dense, f"sparse {k} {m[k] * 1e6:.0f} us against dense {dense * 1e6:.0f} us under load"
