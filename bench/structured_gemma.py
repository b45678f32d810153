"""Structured pruning on Gemma 3 270M: 2SSP vs ShortGPT vs FFN-only width pruning (and unstructured Wanda/SparseGPT).

Protocol (``bench/_gemma.py``): calibration 32 x 512 tokens of wiki.valid.tokens (seed 0); perplexity on
wiki.test.raw, seqlen 1024, first 8 windows. At 25%, 37.5% and 50% of the decoder-block parameters, each
run in a fresh process: prune time, parameters, perplexity, the offline cloze tasks (``wt2_cloze``,
``wt2_cloze_mc``, built by eval/build_tasks.py as in docs/EVALUATION.md: 100 passages of <= 80 words), and
the speed of the saved model loaded by stock transformers: prefill of 512 tokens (one forward with
``logits_to_keep=1``, what ``generate`` does) and batch-1 greedy decoding (64 new tokens after a 32-token prompt).
2SSP's prefill is also timed as ``llmsparse.load_model`` loads it (removed attention modules not computed).
Wanda at 25/37.5/50% and SparseGPT at 50% run in the same session for the plot and the time target.
``2ssp-bf16`` is 2SSP with ``probe_dtype="bfloat16"`` (stage 2's perplexity probe in bf16).

    python bench/structured_gemma.py                  # CPU table, docs/structured_gemma.json and .png
    python bench/structured_gemma.py --device cuda    # the same on a GPU (timings synchronised)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _gemma import DATA, cloze, machine_header, run_isolated  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SPARSITIES = (0.25, 0.375, 0.5)
STRUCTURED = ("2ssp", "shortgpt", "width", "2ssp-bf16")
#: Bench names that run a method with options: name -> (method, method_options).
VARIANTS = {"2ssp-bf16": ("2ssp", {"probe_dtype": "bfloat16"})}
UNSTRUCTURED = (("wanda", 0.25), ("wanda", 0.375), ("wanda", 0.5), ("sparsegpt", 0.5))


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int = 3) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def speed(model, ids, device: str, decode: bool = True) -> dict:
    """Prefill tok/s (512 tokens, logits of the last only) and batch-1 greedy decode tok/s (31 tokens after the first)."""
    import torch

    model.to(device)
    prompt, prefill = ids[:, :32].to(device), ids[:, :512].to(device)
    with torch.no_grad():
        t_prefill = timed(lambda: model(prefill, use_cache=False, logits_to_keep=1), device, repeats=2)
        if not decode:
            return {"prefill_s": t_prefill, "prefill_tok_s": 512 / t_prefill}
        gen = dict(do_sample=False, pad_token_id=0)
        t1 = timed(lambda: model.generate(prompt, max_new_tokens=1, min_new_tokens=1, **gen), device, repeats=2)
        t32 = timed(lambda: model.generate(prompt, max_new_tokens=32, min_new_tokens=32, **gen), device, repeats=1)
    return {"prefill_s": t_prefill, "prefill_tok_s": 512 / t_prefill, "decode_tok_s": 31 / (t32 - t1)}


def prefill_flops(config, removed_attention: int, count_removed: bool) -> float:
    """Forward FLOPs of a 512-token prefill with the last token's logits: 2 x parameters used per token for the
    projections, 2 x 2 x heads x head_dim x mean causal context per token and layer for the attention products,
    and the head for one token. ``count_removed``: the zeroed attention modules still run (stock transformers)."""
    tokens, h = 512, config.hidden_size
    heads, kv, hd = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    layers, width = config.num_hidden_layers, config.intermediate_size
    attention_linear = h * hd * (2 * heads + 2 * kv)  # q and o (heads), k and v (kv heads)
    window = min(getattr(config, "sliding_window", None) or tokens, tokens)
    products = 2 * 2 * heads * hd * (window + 1) / 2
    active = layers - (0 if count_removed else removed_attention)
    per_token = 2 * (3 * h * width) * layers + active * (2 * attention_linear + products)
    return per_token * tokens + 2 * h * config.vocab_size


def child(spec: dict) -> dict:
    import torch
    import transformers

    import llmsparse

    device = spec["device"]
    model, tok = llmsparse.load_model("gemma-3-270m")
    decoder = sum(p.numel() for p in llmsparse.find_layers(model).layers.parameters())
    matrices = sum(m.weight.numel() for m in llmsparse.core.layout.target_weights(model).values())
    text_ids = tok(open(DATA / "wiki.test.raw", encoding="utf-8").read()[:20000], return_tensors="pt").input_ids
    out: dict = {"decoder_before": decoder, "seconds": 0.0}
    calib = dict(calib=str(DATA / "wiki.valid.tokens"), nsamples=32, seqlen=512, seed=0, device=device)
    if spec["kind"] == "structured":
        start = time.perf_counter()
        method, options = VARIANTS.get(spec["method"], (spec["method"], None))
        report = llmsparse.prune_structured(model, tok, method=method, sparsity=spec["sparsity"], method_options=options, **calib)
        out["seconds"] = time.perf_counter() - start
        out |= {k: getattr(report, k) for k in ("decoder_after", "total_before", "total_after", "removed_attention", "removed_blocks", "width_after")}
        out["budget"], out["remaining"] = report.budget, report.decoder_after / decoder
    elif spec["kind"] == "unstructured":
        start = time.perf_counter()
        report = llmsparse.prune(model, tok, method=spec["method"], sparsity=spec["sparsity"], compute_dtype="float32", **calib)
        out["seconds"] = time.perf_counter() - start
        out["remaining"] = 1 - report.global_sparsity * matrices / decoder  # nonzero decoder parameters
    else:
        out["remaining"], out["total_after"] = 1.0, sum(p.numel() for p in model.parameters())
    if spec.get("ppl_only"):
        out["seconds"] = None  # run beside other work: not a timing
    model.to(device)
    out["ppl"] = llmsparse.perplexity(model, tok, str(DATA / "wiki.test.raw"), seqlen=1024, windows=8).ppl
    if spec.get("tasks"):
        out["tasks"] = cloze(model.to("cpu"), tok)
    if spec["kind"] != "unstructured" and not spec.get("ppl_only"):  # speed of the saved checkpoint under stock transformers
        with tempfile.TemporaryDirectory() as tmp:
            model.to("cpu").save_pretrained(tmp)
            tok.save_pretrained(tmp)
            out["bytes_on_disk"] = sum(f.stat().st_size for f in Path(tmp).glob("*.safetensors"))
            del model
            stock = transformers.AutoModelForCausalLM.from_pretrained(tmp).eval()
            out["stock"] = speed(stock, text_ids, device)
            config = stock.config
            removed = len(out.get("removed_attention", []))
            out["flops_stock"], out["flops_skip"] = prefill_flops(config, removed, True), prefill_flops(config, removed, False)
            if removed:
                ours, _ = llmsparse.load_model(tmp, dtype="float32")
                out["skip"] = speed(ours, text_ids, device, decode=False)
            del stock
        torch.cuda.empty_cache() if device.startswith("cuda") else None
    return out


def from_sweep() -> dict:
    """Wanda and SparseGPT (uniform, no DSnoT) from docs/sweep_gemma.json: the same calibration and perplexity protocol
    (bench/sweep_gemma.py, an earlier session); their parameters kept are the nonzero decoder parameters."""
    sweep = json.loads((DOCS / "sweep_gemma.json").read_text())
    share = 0.99945  # Gemma 3 270M: the decoder Linear matrices hold 99.945% of the decoder-block parameters (the rest: norms)
    out = {}
    for method in ("wanda", "sparsegpt"):
        for s in (0.5, 0.6):
            r = sweep.get(f"{method}|{s:g}|uniform|-")
            if r:
                out[f"{method}|{s:g}"] = {"ppl": r["ppl"], "seconds": r["seconds"], "remaining": 1 - s * share, "source": "docs/sweep_gemma.json"}
    return out


def key(spec: dict) -> str:
    return "dense" if spec["kind"] == "dense" else f"{spec['method']}|{spec['sparsity']:g}"


def table(results: dict) -> str:
    dense = results["dense"]
    head = ("| method | target | decoder params removed | model params | ppl | cloze acc | cloze-mc acc | prune s | prefill tok/s "
            "| prefill / (dense x FLOP share) | decode tok/s |")
    lines = [head, "|" + "|".join("---" for _ in head.split("|")[1:-1]) + "|"]
    for name, r in results.items():
        t = r.get("tasks", {})
        st = r.get("stock")
        share = ratio = ""
        if st:
            share = r["flops_stock"] / dense["flops_stock"]
            ratio = f"{st['prefill_s'] / (dense['stock']['prefill_s'] * share):.2f}"
            if "skip" in r:
                ratio += f" (llmsparse load: {r['skip']['prefill_s'] / (dense['stock']['prefill_s'] * r['flops_skip'] / dense['flops_stock']):.2f})"
        cells = [
            name.split("|")[0], "-" if name == "dense" else name.split("|")[1], f"{1 - r['remaining']:.2%}",
            f"{r.get('total_after', '-'):,}" if "total_after" in r else "-", f"{r['ppl']:.2f}",
            f"{t['wt2_cloze/acc']:.2f}" if t else "-", f"{t['wt2_cloze_mc/acc']:.2f}" if t else "-", f"{r['seconds']:.0f}" if r.get("seconds") is not None else "-",
            f"{st['prefill_tok_s']:.0f}" + (f" ({r['skip']['prefill_tok_s']:.0f})" if "skip" in r else "") if st else "-",
            ratio or "-", f"{st['decode_tok_s']:.1f}" if st else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    styles = {"2ssp": ("tab:red", "o"), "shortgpt": ("tab:blue", "s"), "width": ("tab:green", "^"), "2ssp-bf16": ("tab:orange", "."), "wanda": ("tab:gray", "x"), "sparsegpt": ("black", "+")}
    for method, (color, marker) in styles.items():
        pts = sorted((r["remaining"], r["ppl"]) for k, r in results.items() if k.split("|")[0] == method)
        if pts:
            label = method + (" (unstructured; nonzero params)" if method in ("wanda", "sparsegpt") else "")
            ax.plot(*zip(*pts), color=color, marker=marker, label=label, linestyle="-" if method in STRUCTURED else ":")
    ax.axhline(results["dense"]["ppl"], color="k", linewidth=0.6, linestyle="--", label="dense")
    ax.set_xlabel("decoder-block parameters kept (fraction)")
    ax.set_ylabel("WikiText-2 ppl (seqlen 1024, 8 windows)")
    ax.set_yscale("log")
    ax.invert_xaxis()
    ax.set_title("Gemma 3 270M: structured vs unstructured pruning")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def add_tasks(specs: list[dict], results: dict, path: Path, device: str) -> None:
    """Cloze accuracies for stored points: the prune runs again (same seed and data, so the same model, checked by
    its perplexity), and only ``tasks`` joins the stored entry; its timings stay those of the run that measured them."""
    for spec in specs:
        stored = results.get(key(spec))
        if stored is None or "tasks" in stored:
            continue
        again = run_isolated(__file__, spec | {"device": device, "tasks": True, "ppl_only": True})
        if abs(again["ppl"] - stored["ppl"]) > 1e-6 * stored["ppl"]:
            raise SystemExit(f"{key(spec)}: ppl {again['ppl']:.4f} != stored {stored['ppl']:.4f}: not the same model, tasks not added")
        stored["tasks"] = again["tasks"]
        print(key(spec), json.dumps(again["tasks"]), flush=True)
        path.write_text(json.dumps(results, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=str(DOCS / "structured_gemma.json"))
    parser.add_argument("--ppl-only", action="store_true", help="parameters and perplexity only (no speed; prune times are not comparable)")
    parser.add_argument("--sparsities", default=",".join(map(str, SPARSITIES)), help="comma-separated targets (default 0.25,0.375,0.5)")
    parser.add_argument("--tasks", action="store_true", help="also run the offline cloze tasks (minutes per point)")
    parser.add_argument("--unstructured", action="store_true", help="also run Wanda 25/37.5/50%% and SparseGPT 50%% (else read from docs/sweep_gemma.json)")
    parser.add_argument("--methods", help="comma-separated: only these methods' points (and dense, kept as it is unless named)")
    parser.add_argument("--redo", action="store_true", help="run the selected points that --json already holds again")
    parser.add_argument("--add-tasks", action="store_true",
                        help="add the cloze columns to the points --json holds without them: each is pruned again (no timing kept) and must reproduce its stored ppl")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    path = Path(args.json)
    results = json.loads(path.read_text()) if path.exists() else {}
    sparsities = [float(x) for x in args.sparsities.split(",")]
    specs = [{"kind": "dense"}] + [{"kind": "structured", "method": m, "sparsity": s} for s in sparsities for m in STRUCTURED]
    if args.unstructured:
        specs += [{"kind": "unstructured", "method": m, "sparsity": s} for m, s in UNSTRUCTURED]
    if args.methods:
        specs = [s for s in specs if s["kind"] == "dense" or s["method"] in args.methods.split(",")]
    if args.ppl_only:  # the dense perplexity of the same protocol, from bench/sweep_gemma.py
        specs = specs[1:]
        results.setdefault("dense", {**json.loads((DOCS / "sweep_gemma.json").read_text())["dense"], "remaining": 1.0, "seconds": None})
    print(machine_header())
    if args.add_tasks:
        add_tasks(specs, results, path, args.device)
        specs = []
    for spec in specs:
        spec |= {"device": args.device, "tasks": args.tasks, "ppl_only": args.ppl_only}
        again = args.redo and (spec["kind"] != "dense" or not args.methods or "dense" in args.methods.split(","))
        if key(spec) in results and not again:
            continue
        results[key(spec)] = run_isolated(__file__, spec)
        print(key(spec), json.dumps(results[key(spec)]), flush=True)
        path.write_text(json.dumps(results, indent=1) + "\n")
    results = from_sweep() | results  # points this bench measured win over the earlier sweep's
    print(table(results))
    plot(results, path.with_suffix(".png"))


if __name__ == "__main__":
    main()
