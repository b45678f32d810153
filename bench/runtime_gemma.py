"""The sparse runtime on CPU: per-matmul time against dense F.linear, and Gemma 3 270M end to end (tokens/s, memory, perplexity).

``matmul``: y = x Wᵀ at batch 1 (and a few prompt lengths) for the Gemma 3 270M shapes and a 7B-class
set (out x in: 4096x4096, 11008x4096, 4096x11008), unstructured 50/60/70/80% and 2:4, values in bf16
and fp32. The sparse layer is a SparseLinear (Python call included); dense is F.linear on the same
matrix in bf16 and in fp32, and "speedup" is over the faster of the two. Variants alternate within
each repeat, medians are reported.

``e2e``: Gemma 3 270M (float32, as the bundled GGUF converts) pruned with Wanda (16 x 512 tokens of
wiki.valid.tokens, seed 0) at each sparsity and saved as ``bitmask``; then, each in a fresh process,
the checkpoint loaded with ``runtime="dense"`` and ``runtime="sparse"``: resident memory after load
and peak during it, greedy decode tokens/s (median of 3 x 64 tokens), perplexity (wiki.test.raw,
seqlen 1024) and the greedy text. f is the share of per-token weight bytes in the pruned matrices
(every Linear counted, lm_head included; the tied 262k x 640 embedding is 63% of the bytes a token
reads, and sparsity does not touch it), r the compressed/dense bytes of the pruned matrices, and
1 / (1 - f (1 - r)) the memory-bound ceiling of the end-to-end gain.

``widths``: the cost per kept value against the row length, one thread (where the row walk stops scaling).

    python bench/runtime_gemma.py matmul [--repeats 30] [--batches 1,9,128]
    python bench/runtime_gemma.py quant [--repeats 30] [--batches 1,4] [--busy]   (bench/_runtime_quant.py)
    python bench/runtime_gemma.py widths [--repeats 30]
    python bench/runtime_gemma.py e2e [--sparsities 0.5,0.7] [--windows 8]
    python bench/runtime_gemma.py e2e-quant [--busy]   (bench/_runtime_quant.py: dense/sparse int4 end to end)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _gemma import DATA, machine_header, pruned_once  # noqa: E402

GEMMA = {"q": (1024, 640), "k/v": (256, 640), "o": (640, 1024), "gate/up": (2048, 640), "down": (640, 2048)}
SEVEN_B = {"4096x4096": (4096, 4096), "11008x4096": (11008, 4096), "4096x11008": (4096, 11008)}
PATTERNS = ["50%", "60%", "70%", "80%", "2:4"]
PROMPT = "The history of the city begins in the Roman period, when a small settlement grew up around the river crossing and"


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def sparse_layer(weight: torch.Tensor, pattern: str):
    """A SparseLinear of ``weight`` pruned to ``pattern`` at random (bitmask for percentages, the N:M layout for 2:4)."""
    from llmsparse.formats import get_format
    from llmsparse.runtime import SparseLinear

    g = torch.Generator().manual_seed(0)
    w = weight.clone()
    if pattern == "2:4":
        order = torch.rand(w.shape[0], w.shape[1] // 4, 4, generator=g).argsort(-1)[..., :2]
        w.view(w.shape[0], -1, 4).scatter_(-1, order, 0)
        fmt = get_format("2:4")
    else:
        w[torch.rand(w.shape, generator=g) < float(pattern.rstrip("%")) / 100] = 0
        fmt = get_format("bitmask")
    rows, cols = w.shape
    return SparseLinear(cols, rows, fmt, fmt.compress(w, "bench"))


def call(fn, *args):
    return lambda: fn(*args)


def median_times(calls: dict, repeats: int) -> dict:
    """Median seconds of each call, the calls alternating within every repeat (same noise for all)."""
    for fn in calls.values():
        fn()
    times = {k: [] for k in calls}
    for _ in range(repeats):
        for k, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


@torch.no_grad()
def matmul(repeats: int, batches: list[int]) -> None:
    from llmsparse.runtime import cpu_isa

    print(machine_header())
    print(f"load average {load_average()}; {torch.get_num_threads()} threads; sparse kernels: {cpu_isa()}\n")
    for title, shapes, tokens in (("Gemma 3 270M shapes", GEMMA, [b for b in batches if b == 1]), ("7B-class shapes", SEVEN_B, batches)):
        for t in tokens:
            print(f"{title}, batch {t} (out x in; microseconds, median of {repeats}; speedup over the faster dense):\n")
            print("| shape | dense bf16 | dense fp32 | values | " + " | ".join(PATTERNS) + " |")
            print("|---|---|---|---|" + "---|" * len(PATTERNS))
            for name, (rows, cols) in shapes.items():
                w32 = torch.randn(rows, cols)
                x32 = torch.randn(t, cols)
                w16, x16 = w32.bfloat16(), x32.bfloat16()
                for values in (torch.bfloat16, torch.float32):
                    layers = {p: sparse_layer(w32.to(values), p) for p in PATTERNS}
                    x = x32.to(values)
                    calls = {"bf16": call(F.linear, x16, w16), "fp32": call(F.linear, x32, w32)}
                    calls.update({p: call(layer, x) for p, layer in layers.items()})
                    m = median_times(calls, repeats if rows * cols < 2**24 or t == 1 else max(3, repeats // 5))
                    best = min(m["bf16"], m["fp32"])
                    cells = " | ".join(f"{m[p] * 1e6:.0f} ({best / m[p]:.2f}x)" for p in PATTERNS)
                    print(f"| {name} | {m['bf16'] * 1e6:.0f} | {m['fp32'] * 1e6:.0f} | {str(values)[6:]} | {cells} |", flush=True)
                    del layers
                    gc.collect()
            print()
    print(f"load average at the end {load_average()}")


def widths(repeats: int) -> None:
    """Cost per kept value against the row length (2048 rows, 50% bf16, one thread): where the row walk stops scaling."""
    torch.set_num_threads(1)
    print(machine_header())
    print(f"load average {load_average()}; 1 thread; 2048 rows, 50% bf16 bitmask vs dense bf16, batch 1, median of {repeats}\n")
    print("| inputs | sparse us | ns per kept value | dense us | ns per weight | speedup |")
    print("|---|---|---|---|---|---|")
    for cols in (2048, 4096, 6144, 8192, 11008, 16384):
        w = torch.randn(2048, cols).bfloat16()
        x = torch.randn(1, cols).bfloat16()
        layer = sparse_layer(w, "50%")
        m = median_times({"sparse": call(layer, x), "dense": call(F.linear, x, w)}, repeats)
        kept = 2048 * cols / 2
        print(
            f"| {cols} | {m['sparse'] * 1e6:.0f} | {m['sparse'] / kept * 1e9:.3f} | {m['dense'] * 1e6:.0f} | {m['dense'] / (2 * kept) * 1e9:.3f} | {m['dense'] / m['sparse']:.2f}x |",
            flush=True,
        )


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def share_and_ratio(directory: Path) -> tuple[float, float, int]:
    """f (share of per-token weight bytes in the pruned matrices), r (their compressed / dense bytes) and their dense bytes."""
    config = json.loads((directory / "config.json").read_text())
    block = config["quantization_config"]["sparsity_config"]
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(directory)
    del cfg.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    linears = sum(m.weight.numel() * m.weight.element_size() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert model.lm_head.weight.numel() == config["vocab_size"] * config["hidden_size"]  # the tied embedding, read by every token
    return block["bytes_dense"] / linears, block["bytes_compressed"] / block["bytes_dense"], block["bytes_dense"]


@torch.no_grad()
def child(spec: dict) -> dict:
    """One load of one checkpoint in this fresh process: memory, decode speed, perplexity, greedy text."""
    import llmsparse
    from llmsparse.activation.decode import timed_generate
    from llmsparse.core.memory import peak_rss
    from llmsparse.runtime import sparse_layers

    before = rss_bytes()
    start = time.perf_counter()
    model, tok = llmsparse.load_model(spec["dir"], runtime=spec["runtime"], dtype=spec.get("dtype", "auto"))
    load_s = time.perf_counter() - start
    gc.collect()
    layers = sparse_layers(model).values()
    result = {
        "bits_per_weight": 8 * sum(m.nbytes for m in layers) / max(sum(m.in_features * m.out_features for m in layers), 1),
        "load_s": load_s,
        "rss_after_load": rss_bytes(),
        "rss_before_load": before,
        "peak_rss": peak_rss(),  # VmHWM: ru_maxrss would keep the forking parent's mark (the pruning run's)
    }
    runs = [timed_generate(model, tok, PROMPT, spec["tokens"]) for _ in range(3)]
    result["tokens_per_s"] = statistics.median(r.tokens_per_s for r in runs)
    ids = tok(PROMPT, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=spec["tokens"], do_sample=False)
    result["tokens"] = out[0, ids.shape[1] :].tolist()
    result["text"] = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    if not spec.get("ppl", True):  # a busy-machine run times decoding only
        return result
    result["ppl"] = llmsparse.perplexity(model, tok, str(DATA / "wiki.test.raw"), seqlen=1024, windows=spec["windows"]).ppl
    if (
        spec["runtime"] == "dense" and spec.get("dtype", "auto") != "bfloat16"
    ):  # the top-2 logit gap at every greedy step, to judge a divergence
        logits = model(out).logits[0, ids.shape[1] - 1 : -1].float()
        top = logits.topk(2, dim=-1).values
        result["margins"] = (top[:, 0] - top[:, 1]).tolist()
    return result


def prune_once(sparsity: float, workdir: Path) -> Path:
    return pruned_once(workdir / f"gemma-3-270m-wanda-{int(sparsity * 100)}-bitmask", method="wanda", sparsity=sparsity, format="bitmask")


def e2e(sparsities: list[float], windows: int, tokens: int, workdir: Path) -> None:
    rows = []
    for s in sparsities:
        directory = prune_once(s, workdir)
        f, r, pruned_bytes = share_and_ratio(directory)
        runs = {}
        for runtime in ("dense", "sparse"):
            spec = json.dumps({"dir": str(directory), "runtime": runtime, "windows": windows, "tokens": tokens})
            done = subprocess.run([sys.executable, __file__, "child", spec], check=True, capture_output=True, text=True)
            runs[runtime] = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append((s, f, r, pruned_bytes, runs["dense"], runs["sparse"]))
        print(f"done {s:.0%} (load average {load_average()})", flush=True)
    print(
        f"\nGemma 3 270M, float32, {torch.get_num_threads()} threads, greedy {tokens} tokens (median of 3), perplexity over {windows} x 1024 tokens\n"
    )
    print(
        "| sparsity | f | r | ceiling | dense tok/s | sparse tok/s | speedup | of ceiling | RSS after load dense / sparse (MiB) | saved / dense bytes of pruned | peak RSS in load dense / sparse (MiB) | ppl dense / sparse | greedy text |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    mib = 2**20
    for s, f, r, pruned_bytes, d, sp in rows:
        ceiling = 1 / (1 - f * (1 - r))
        gain = sp["tokens_per_s"] / d["tokens_per_s"]
        saved = (d["rss_after_load"] - sp["rss_after_load"]) / pruned_bytes
        same = next((i for i, (a, b) in enumerate(zip(d["tokens"], sp["tokens"])) if a != b), None)
        text = "identical" if same is None else f"differs at token {same} (dense top-2 margin {d['margins'][same]:.3f})"
        print(
            f"| {s:.0%} | {f:.3f} | {r:.3f} | {ceiling:.3f}x | {d['tokens_per_s']:.2f} | {sp['tokens_per_s']:.2f} | {gain:.3f}x | {gain / ceiling:.0%} "
            f"| {d['rss_after_load'] / mib:.0f} / {sp['rss_after_load'] / mib:.0f} | {saved:.2f} | {d['peak_rss'] / mib:.0f} / {sp['peak_rss'] / mib:.0f} "
            f"| {d['ppl']:.3f} / {sp['ppl']:.3f} ({(sp['ppl'] / d['ppl'] - 1) * 100:+.3f}%) | {text} |"
        )
    for s, *_, sp in rows:
        print(f"\n{s:.0%} sparse runtime text: {sp['text']!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["matmul", "quant", "widths", "e2e", "e2e-quant", "child"])
    parser.add_argument("spec", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batches", default="1,9,128", help="matmul: tokens per call (the Gemma shapes run at batch 1 only)")
    parser.add_argument("--sparsities", default="0.5,0.7")
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--busy", action="store_true", help="quant, e2e-quant: run while another process does a dense matmul loop")
    parser.add_argument("--threads", type=int, help="quant: torch's (and the kernels') thread count (default: all)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument(
        "--workdir", default=str(Path(os.environ.get("LLMSPARSE_CACHE", Path.home() / ".cache" / "llmsparse")) / "bench-runtime")
    )
    args = parser.parse_args()
    if args.part == "child":
        print(json.dumps(child(json.loads(args.spec))))
    elif args.part == "matmul":
        matmul(args.repeats, [int(b) for b in args.batches.split(",")])
    elif args.part == "quant":
        from _runtime_quant import table

        if args.threads:
            torch.set_num_threads(args.threads)
        table(
            args.repeats,
            [int(b) for b in args.batches.split(",")],
            args.busy,
            median_times,
            f"{machine_header()}; load average {load_average()}" + (f"; {args.threads} thread(s)" if args.threads else ""),
        )
    elif args.part == "e2e-quant":
        from _runtime_quant import e2e as quant_e2e

        quant_e2e(args.windows, args.tokens, Path(args.workdir), args.busy, f"{machine_header()}; load average {load_average()}")
    elif args.part == "widths":
        widths(args.repeats)
    else:
        e2e([float(s) for s in args.sparsities.split(",")], args.windows, args.tokens, Path(args.workdir))


if __name__ == "__main__":
    main()
