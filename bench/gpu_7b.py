"""Benchmark: prune a random Llama-2-7B-shaped model on one GPU; seconds per layer, peak memory, where the time goes.

Self-contained: builds the model on the device (hidden 4096, MLP 11008, 32 heads, ``--layers``
decoder layers, random weights, bfloat16), calibrates on random tokens (``--nsamples`` x
``--seqlen``, default 128 x 2048) and prunes it once per row of ``--rows`` (``method:pattern``),
restoring the dense weights between rows. Per row it prints the total and per-layer seconds, the
peak GPU memory (peak RSS on CPU) and the share of time in calibration forwards, statistics
(Hessian / norm updates) and the solve (the method's ``prune`` per matrix, column loops included).
The breakdown synchronises the GPU at every timed boundary (``--no-breakdown`` for clean totals).

    python bench/gpu_7b.py --layers 4                        # on CUDA
    python bench/gpu_7b.py --layers 4 --peer                 # also llm-compressor's oneshot, same model and tokens
    python bench/gpu_7b.py --tiny --device cpu               # tiny shapes on CPU (what the tests run)

``--peer`` runs llm-compressor in the same process when ``llmcompressor`` and ``datasets`` import.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager

import torch

ROWS = ["sparsegpt:unstructured", "sparsegpt:2:4", "wanda:unstructured"]
SEVEN_B = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, vocab_size=32000)
TINY = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, vocab_size=128)


class Timers:
    """Wall seconds per category, counting only the outermost call of each (nested stats updates are not counted twice)."""

    def __init__(self, device: torch.device, sync: bool):
        self.device, self.sync = device, sync
        self.seconds: dict[str, float] = {}
        self.depth: dict[str, int] = {}
        self.started: dict[str, float] = {}

    def _now(self) -> float:
        if self.sync and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def enter(self, key: str) -> None:
        self.depth[key] = self.depth.get(key, 0) + 1
        if self.depth[key] == 1:
            self.started[key] = self._now()

    def leave(self, key: str) -> None:
        self.depth[key] -= 1
        if self.depth[key] == 0:
            self.seconds[key] = self.seconds.get(key, 0.0) + self._now() - self.started[key]

    def wrap(self, owner, attr: str, key: str):
        real = getattr(owner, attr)

        def timed(*args, **kwargs):
            self.enter(key)
            try:
                return real(*args, **kwargs)
            finally:
                self.leave(key)

        setattr(owner, attr, timed)
        return lambda: setattr(owner, attr, real)


@contextmanager
def instrumented(model, method_cls, timers: Timers, layer_ends: dict):
    """Time decoder-layer forwards (module hooks), statistics updates and the method's prune; record when each layer's last forward ends.

    Layer ``i``'s seconds are from the end of layer ``i-1``'s last forward (its outputs are layer ``i``'s inputs)
    to the end of its own last forward; layer 0's include capturing the calibration inputs, the last layer's end with the run.
    """
    from llmsparse.core import stats

    undo = [timers.wrap(cls, "update", "statistics") for cls in (stats.InputNorms, stats.Hessian, stats.InputMoments, stats.CrossHessian, stats.Bundle)]
    undo.append(timers.wrap(method_cls, "prune", "solve"))
    handles = []
    for index, layer in enumerate(model.model.layers):

        def after(*_, index=index):
            timers.leave("forward")
            layer_ends[index] = timers._now()

        handles.append(layer.register_forward_pre_hook(lambda *_: timers.enter("forward")))
        handles.append(layer.register_forward_hook(after, always_call=True))  # also when the engine stops a forward by an exception
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for u in reversed(undo):
            u()


def build(args: argparse.Namespace, device: torch.device):
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = TINY if args.tiny else SEVEN_B
    config = LlamaConfig(num_hidden_layers=args.layers, max_position_embeddings=max(args.seqlen, 128), **shape)
    torch.manual_seed(args.seed)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    ids = torch.randint(0, config.vocab_size, (args.nsamples, args.seqlen), generator=torch.Generator().manual_seed(args.seed))
    return model, ids


def run_row(row: str, model, ids, args, device: torch.device) -> dict:
    import llmsparse
    from llmsparse.core.memory import peak_rss
    from llmsparse.methods import get_method

    method, pattern = row.split(":", 1)
    sparsity = None if ":" in pattern else 0.5
    timers, ends = Timers(device, sync=not args.no_breakdown), {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    context = instrumented(model, type(get_method(method)), timers, ends) if not args.no_breakdown else _nothing()
    with context:
        t0 = timers._now()
        report = llmsparse.prune(model, None, method=method, sparsity=sparsity, pattern=pattern, calib=ids, nsamples=args.nsamples, seqlen=args.seqlen, device=device)
        total = timers._now() - t0
    marks = [t0] + [ends[i] for i in sorted(ends)][:-1] + [t0 + total]  # the last layer's outputs are never computed: it ends with the run
    per_layer = [round(b - a, 3) for a, b in zip(marks, marks[1:])]
    forward = timers.seconds.get("forward", 0.0) - timers.seconds.get("statistics", 0.0)
    shares = {k: round(v / total, 3) for k, v in {"forwards": forward, "statistics": timers.seconds.get("statistics", 0.0), "solve": timers.seconds.get("solve", 0.0)}.items()}
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss()
    return {"row": row, "tool": "llmsparse", "seconds": round(total, 3), "per_layer_s": per_layer, "peak_gib": round(peak / 2**30, 2),
            "shares": shares if not args.no_breakdown else None, "sparsity": round(report.global_sparsity, 4)}  # fmt: skip


@contextmanager
def _nothing():
    yield


def run_peer(row: str, model, ids, args, device: torch.device) -> dict:
    """llm-compressor's ``oneshot`` on the same model and tokens (decoder Linears only, as llmsparse)."""
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

    method, pattern = row.split(":", 1)
    cls = {"sparsegpt": SparseGPTModifier, "wanda": WandaPruningModifier}[method]
    recipe = cls(sparsity=0.5, mask_structure="0:0" if pattern == "unstructured" else pattern, targets=["Linear"], ignore=["re:.*lm_head"])
    data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    oneshot(model=model, dataset=data, recipe=recipe, num_calibration_samples=ids.shape[0], max_seq_length=ids.shape[1], shuffle_calibration_samples=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    total = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"row": row, "tool": "llm-compressor", "seconds": round(total, 3), "per_layer_s": [], "peak_gib": peak and round(peak, 2), "shares": None}


def table(results: list[dict], layers: int) -> str:
    lines = [f"{'row':<24} {'tool':<15} {'total s':>8} {'s/layer':>8} {'peak GiB':>9} {'fwd':>6} {'stats':>6} {'solve':>6}  per layer s"]
    for r in results:
        s = r["shares"] or {}
        share = [f"{s[k]:6.1%}" if k in s else f"{'-':>6}" for k in ("forwards", "statistics", "solve")]
        peak = f"{r['peak_gib']:9.2f}" if r["peak_gib"] is not None else f"{'-':>9}"
        lines.append(f"{r['row']:<24} {r['tool']:<15} {r['seconds']:8.2f} {r['seconds'] / layers:8.2f} {peak} {' '.join(share)}  {r['per_layer_s']}")
    return "\n".join(lines)


@torch.no_grad()  # a context, not set_grad_enabled(False): tests call main() in their own process
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (hidden 64, MLP 128, 4 heads, vocab 128; 4 x 32 tokens unless given)")
    parser.add_argument("--nsamples", type=int)
    parser.add_argument("--seqlen", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", nargs="+", default=ROWS, help="method:pattern rows (default: %(default)s)")
    parser.add_argument("--peer", action="store_true", help="also run llm-compressor (SparseGPT and Wanda rows) when importable")
    parser.add_argument("--no-breakdown", action="store_true", help="no timers inside the run (no GPU syncs at their boundaries)")
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    args.nsamples = args.nsamples or (4 if args.tiny else 128)
    args.seqlen = args.seqlen or (32 if args.tiny else 2048)
    from llmsparse.errors import LlmsparseError
    from llmsparse.settings import known_device

    problem = known_device(args.device)
    if problem:
        print(f"gpu_7b.py: error: --device {args.device} {problem}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    model, ids = build(args, device)
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    results = []
    try:
        for row in args.rows:
            results.append(run_row(row, model, ids, args, device))
            model.load_state_dict(dense)
            if args.peer and row.split(":")[0] in ("sparsegpt", "wanda"):
                try:
                    results.append(run_peer(row, model, ids, args, device))
                except ImportError as missing:
                    print(f"peer skipped: {missing}", file=sys.stderr)
                model.load_state_dict(dense)
    except LlmsparseError as error:
        print(f"gpu_7b.py: error: {error}", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{'tiny' if args.tiny else 'Llama-2-7B-shaped'}, {args.layers} layers, {args.nsamples} x {args.seqlen} random tokens, bf16, {name}, torch {torch.__version__}")
    print(table(results, args.layers))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "args": vars(args), "rows": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
