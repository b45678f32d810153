"""Micro-benchmarks behind the engine's design choices; prints one table.

    python bench/micro.py

* GEMM throughput of a Gemma 3 270M MLP-sized ``F.linear`` in float32 and bfloat16;
* SparseGPT Hessian update: full ``addmm`` vs the block upper triangle of ``llmsparse.core.stats.Hessian``;
* exact mask selection: ``topk`` vs ``kthvalue`` with tie-break (``llmsparse.core.masks``).
"""

import time

import torch
import torch.nn.functional as F

from llmsparse.core.masks import lowest_overall, lowest_per_row
from llmsparse.core.stats import Hessian


def seconds(fn, repeat=20):
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def main():
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        x, w = torch.randn(512, 640, dtype=dtype), torch.randn(2048, 640, dtype=dtype)
        t = seconds(lambda x=x, w=w: F.linear(x, w), 50)
        rows.append((f"F.linear 512x640 @ 640x2048, {str(dtype)[6:]}", t, f"{2 * 512 * 640 * 2048 / t / 1e9:.0f} GFLOP/s"))
    for cols in (640, 2048):
        x = torch.randn(1, 512, cols)
        full = torch.zeros(cols, cols)
        blocked = Hessian(cols)
        t_full = seconds(lambda x=x, full=full: full.mul_(0.5).addmm_(x[0].t(), x[0], alpha=0.1))
        t_block = seconds(lambda x=x, blocked=blocked: blocked.update(x))
        rows.append((f"Hessian update {cols} cols: full addmm", t_full, ""))
        rows.append((f"Hessian update {cols} cols: block upper triangle", t_block, f"{1 - t_block / t_full:.0%} less"))
    flat = torch.rand(2048 * 128)
    t_topk = seconds(lambda: torch.topk(flat, flat.numel() // 2, largest=False))
    t_ours = seconds(lambda: lowest_overall(flat.view(2048, 128), 0.5))
    rows.append(("lowest half of 2048x128: topk", t_topk, ""))
    rows.append(("lowest half of 2048x128: kthvalue + ties", t_ours, f"{t_topk / t_ours:.1f}x faster"))
    per_row = torch.rand(2048, 640)
    t_topk = seconds(lambda: torch.topk(per_row, 320, dim=1, largest=False))
    t_ours = seconds(lambda: lowest_per_row(per_row, 0.5))
    rows.append(("lowest half per row of 2048x640: topk", t_topk, ""))
    rows.append(("lowest half per row of 2048x640: kthvalue + ties", t_ours, f"{t_topk / t_ours:.1f}x faster"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"| {'operation':<52} | {'ms':>8} | {'note':<16} |")
    print(f"|{'-' * 54}|{'-' * 10}|{'-' * 18}|")
    for name, t, note in rows:
        print(f"| {name:<52} | {t * 1e3:8.2f} | {note:<16} |")


if __name__ == "__main__":
    main()
