"""``runtime_gemma.py quant``: int4 weights per matmul on 7B shapes, ours (sparse and dense) against torch's int4 CPU kernel.

Rows per shape and batch: dense bf16 and fp32 ``F.linear``; torch's int4 kernel
(``aten._weight_int4pack_mm_for_cpu`` on ``_convert_weight_to_int4pack_for_cpu``, g128, bf16
activations); our dense int4 g128 (a pack-quantized layout); our sparse bf16 SparseLinear at
50%/70%/2:4 and our sparse int4 g128 at the same sparsities (bitmask + codes). Every int4 variant is
checked against the dense matmul of its own dequantized weights before it is timed. Bytes per weight
are the stored bytes (codes, mask, scales, offsets) over rows x cols; "ceiling" is the dense bf16
time scaled by bytes (what a purely memory-bound kernel at dense bf16's rate would take). ``--busy``
runs the whole table while another process does a fixed single-thread dense matmul loop.
"""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

SEVEN_B = {"4096x4096": (4096, 4096), "11008x4096": (11008, 4096), "4096x11008": (4096, 11008)}
SPARSITIES = ["50%", "70%", "2:4"]
COMPETITOR = "import torch\ntorch.set_num_threads(1)\na = torch.randn(1024, 1024)\nwhile True:\n    a = torch.tanh(a @ a)\n"


def pruned(weight: torch.Tensor, pattern: str, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = weight.clone()
    if pattern == "2:4":
        order = torch.rand(w.shape[0], w.shape[1] // 4, 4, generator=g).argsort(-1)[..., :2]
        w.view(w.shape[0], -1, 4).scatter_(-1, order, 0)
    else:
        w[torch.rand(w.shape, generator=g) < float(pattern.rstrip("%")) / 100] = 0
    return w


def variants(w32: torch.Tensor, x16: torch.Tensor) -> dict[str, tuple]:
    """name -> (callable, stored bytes, dequantized bf16 weight or None): every variant of one shape."""
    from llmsparse.core.quantgrid import Grid, rtn
    from llmsparse.formats import get_format
    from llmsparse.formats.base import QuantLayout
    from llmsparse.formats.bitmask import quantized_compress
    from llmsparse.formats.packquant import pack_int32
    from llmsparse.runtime import SparseLinear, quant

    rows, cols = w32.shape
    w16 = w32.bfloat16()
    out = {
        "dense bf16": (lambda: F.linear(x16, w16), 2 * w16.numel(), None),
        "dense fp32": (lambda: F.linear(x16.float(), w32), 4 * w32.numel(), None),
    }
    deq, state = rtn(w32, Grid(4, 128, True), torch.bfloat16)
    weight = deq.bfloat16()
    codes = state.codes(weight)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu((codes.to(torch.int32) + 8).contiguous(), 2)
    scales_zeros = torch.stack([state.scale, torch.zeros_like(state.scale)], -1).transpose(0, 1).contiguous().bfloat16()
    out["torch int4"] = (
        lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(x16, packed, 128, scales_zeros),
        packed.numel() * packed.element_size() + scales_zeros.numel() * 2,
        weight,
    )
    dense4 = QuantLayout(rows, cols, 4, pack_int32(codes, 4).view(torch.uint8).reshape(-1), state.scale.bfloat16())
    out["ours int4"] = (lambda: quant.matmul(dense4, x16, None, True, 512), dense4.codes.numel() + dense4.scale.numel() * 2, weight)
    fmt = get_format("bitmask")
    for pattern in SPARSITIES:
        ws = pruned(w32, pattern).bfloat16()
        layer = SparseLinear(cols, rows, fmt, fmt.compress(ws, "bench"))
        out[f"{pattern} bf16"] = (lambda layer=layer: layer(x16), layer.nbytes - 8 * rows, None)  # row offsets are derivable from the mask
        deq, state = rtn(pruned(w32, pattern), Grid(4, 128, True), torch.bfloat16)
        wq = deq.bfloat16()
        qlayer = SparseLinear(cols, rows, fmt, quantized_compress(wq, state))
        out[f"{pattern} int4"] = (lambda qlayer=qlayer: qlayer(x16), qlayer.nbytes - 8 * rows, wq)
    return out


@contextmanager
def competing(busy: bool):
    """With ``busy``, another process runs a single-thread dense matmul loop until the block ends."""
    competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR]) if busy else None
    try:
        yield "; BUSY: another process runs a single-thread 1024x1024 fp32 matmul loop" if busy else ""
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()


def table(repeats: int, batches: list[int], busy: bool, median_times, header: str) -> None:
    with competing(busy) as note:
        print(header + note)
        for t in batches:
            print(
                f"\n7B shapes, batch {t}: microseconds (median of {repeats}), speedup over torch int4 / over the faster dense, bits per weight\n"
            )
            names = None
            with torch.no_grad():
                for shape, (rows, cols) in SEVEN_B.items():
                    g = torch.Generator().manual_seed(0)
                    w32, x16 = torch.randn(rows, cols, generator=g) * 0.02, torch.randn(t, cols, generator=g).bfloat16()
                    found = variants(w32, x16)
                    for name, (fn, _, weight) in found.items():  # every int4 path computes its own dequantized matmul
                        if weight is not None:
                            ref = F.linear(x16.float(), weight.float())
                            got = fn()
                            assert torch.allclose(got.float(), ref, atol=2e-2 * float(ref.abs().max()) + 1e-3), name
                    m = median_times({k: v[0] for k, v in found.items()}, repeats)
                    if names is None:
                        names = list(found)
                        print("| shape | " + " | ".join(names) + " |")
                        print("|---|" + "---|" * len(names))
                    dense = min(m["dense bf16"], m["dense fp32"])
                    rate = m["dense bf16"] / found["dense bf16"][1]
                    cells = []
                    for k in names:
                        size = found[k][1]
                        cells.append(
                            f"{m[k] * 1e6:.0f} ({m['torch int4'] / m[k]:.2f}x / {dense / m[k]:.2f}x; {8 * size / (rows * cols):.2f} b; ceil {rate * size * 1e6:.0f})"
                        )
                    print(f"| {shape} | " + " | ".join(cells) + " |", flush=True)


#: End-to-end checkpoints: name -> (method, sparsity, quantize, format). Calibration as ``e2e``'s (16 x 512 tokens).
CHECKPOINTS = {
    "GPTQ int4 (dense)": ("sparsegpt", 0.0, "int4", "pack-quantized"),
    "SparseGPT 50%": ("sparsegpt", 0.5, "none", "bitmask"),
    "SparseGPT 50% + int4": ("sparsegpt", 0.5, "int4", "bitmask"),
    "SparseGPT 70% + int4": ("sparsegpt", 0.7, "int4", "bitmask"),
}
#: Loads of each checkpoint: label -> (runtime, dtype). The float32 dense load is the fake-quantized model.
LOADS = {"dense fp32": ("dense", "float32"), "dense bf16": ("dense", "bfloat16"), "ours bf16": ("sparse", "bfloat16")}


def checkpoint(name: str, workdir: Path) -> Path:
    """The checkpoint ``name`` of :data:`CHECKPOINTS`, pruned once and cached under ``workdir``."""
    method, sparsity, quantize, fmt = CHECKPOINTS[name]
    out = workdir / ("gemma-3-270m-" + "-".join(name.lower().replace("%", "").replace("+ ", "").replace("(", "").replace(")", "").split()))
    from _gemma import pruned_once

    twins = {"dense": twin(out)} if fmt == "pack-quantized" else None  # a pack-quantized dense load needs compressed-tensors
    return pruned_once(out, twins, method=method, sparsity=sparsity, quantize=quantize, group_size=128, format=fmt)


def twin(directory: Path) -> Path:
    return directory.with_name(directory.name + "-as-dense")


def e2e(windows: int, tokens: int, workdir: Path, busy: bool, header: str) -> None:
    """Gemma 3 270M end to end: every checkpoint loaded dense (fp32, bf16) and into the runtime, each load a fresh process."""
    dirs = {name: checkpoint(name, workdir) for name in CHECKPOINTS}  # pruning runs before any competitor starts
    runs: dict[tuple[str, str], dict] = {}
    with competing(busy) as note:
        for name, directory in dirs.items():
            for label, (runtime, dtype) in LOADS.items():
                source = twin(directory) if runtime == "dense" and twin(directory).is_dir() else directory
                spec = {"dir": str(source), "runtime": runtime, "dtype": dtype, "windows": windows, "tokens": tokens, "ppl": not busy}
                done = subprocess.run([sys.executable, sys.argv[0], "child", json.dumps(spec)], check=True, capture_output=True, text=True)
                runs[name, label] = json.loads(done.stdout.strip().splitlines()[-1])
                print(f"done {name}: {label} {runs[name, label]['tokens_per_s']:.2f} tok/s", flush=True)
    print(
        f"\n{header}{note}\nGemma 3 270M, {torch.get_num_threads()} threads, greedy {tokens} tokens (median of 3)"
        + ("" if busy else f", perplexity over {windows} x 1024 tokens")
        + "\n"
    )
    print(
        "| checkpoint | bits/weight in the runtime's matrices | "
        + " | ".join(f"{k} tok/s" for k in LOADS)
        + " | ours / dense bf16 | ours / fastest dense | RSS after load dense bf16 / ours (MiB) | ours / dense bf16 RSS |"
        + ("" if busy else " ppl fake-quantized (dense fp32) / ours | greedy text ours vs dense fp32 |")
    )
    print("|---|---|" + "---|" * len(LOADS) + "---|---|---|---|" + ("" if busy else "---|---|"))
    mib = 2**20
    for name in dirs:
        r = {label: runs[name, label] for label in LOADS}
        ours, bf16 = r["ours bf16"], r["dense bf16"]
        fastest = max(r["dense fp32"]["tokens_per_s"], bf16["tokens_per_s"])
        bits = f"{ours['bits_per_weight']:.2f}"
        cells = [f"{r[k]['tokens_per_s']:.2f}" for k in LOADS] + [
            f"{ours['tokens_per_s'] / bf16['tokens_per_s']:.2f}x",
            f"{ours['tokens_per_s'] / fastest:.2f}x",
            f"{bf16['rss_after_load'] / mib:.0f} / {ours['rss_after_load'] / mib:.0f}",
            f"{ours['rss_after_load'] / bf16['rss_after_load']:.2f}",
        ]
        if not busy:
            ref = r["dense fp32"]
            same = next((i for i, (a, b) in enumerate(zip(ref["tokens"], ours["tokens"])) if a != b), None)
            cells += [
                f"{ref['ppl']:.3f} / {ours['ppl']:.3f} ({(ours['ppl'] / ref['ppl'] - 1) * 100:+.3f}%)",
                "identical" if same is None else f"differs at token {same} (top-2 margin {ref['margins'][same]:.3f})",
            ]
        print(f"| {name} | {bits} | " + " | ".join(cells) + " |", flush=True)
