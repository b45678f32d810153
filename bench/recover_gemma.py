"""Recovery after pruning (PERP, ``llmsparse.recover``) on Gemma 3 270M: perplexity before and after, per pruning recipe.

    python bench/recover_gemma.py --only sparsegpt-50            # one row (rows already in --json are skipped)
    python bench/recover_gemma.py --only sparsegpt-50 --redo     # run it again
    python bench/recover_gemma.py --plot                         # table + validation-loss plot from --json

Protocol (bench/_gemma.py): prune with 32 x 512 calibration tokens of wiki.valid.tokens (seed 0,
float32), perplexity on wiki.test.raw at seqlen 1024 over the first 8 windows, before and after
recovery. Recovery trains ONLY on wiki.valid.tokens (its last 5% of tokens held out for the
validation loss and early stopping); the test text is never read for training or for choosing
settings. Each row runs in a fresh process, so its peak RSS is its own (load + prune + recovery).
Training budget (``--steps`` x ``--batch-size`` x ``--seqlen``) is sized so that a row's recovery
ends within about 15 minutes on the 2-core machine; the default is the one in docs/RECOVERY.md.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _gemma import DATA, cloze, machine_header  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ROWS = {  # prune() arguments of each starting point
    "sparsegpt-50": {"method": "sparsegpt", "sparsity": 0.5},
    "magnitude-50": {"method": "magnitude", "sparsity": 0.5},
    "wanda-50": {"method": "wanda", "sparsity": 0.5},
    "best-50": "recipes/best-50.yaml",
    "sparsegpt-2of4": {"method": "sparsegpt", "pattern": "2:4"},
    "sparsegpt-70": {"method": "sparsegpt", "sparsity": 0.7},
    "dense": None,  # the unpruned model, same training: how much of a row's gain is adapting to the training text's domain
}


def child(spec: dict) -> dict:
    """One row: load, prune, perplexity, recover, perplexity."""
    import torch

    import llmsparse
    from llmsparse.core.memory import peak_rss

    torch.set_num_threads(spec["threads"])
    model, tok = llmsparse.load_model("gemma-3-270m")
    prune = ROWS[spec["row"]]
    if isinstance(prune, str):
        prune = llmsparse.load_recipe(ROOT / prune)
    started = time.perf_counter()
    if prune is not None:
        prune = {"calib": str(DATA / "wiki.valid.tokens"), "nsamples": 32, "seqlen": 512, "seed": 0, **prune}
        llmsparse.prune(model, tok, device="cpu", compute_dtype="float32", **prune)
    prune_s = time.perf_counter() - started
    test = str(DATA / "wiki.test.raw")
    before = llmsparse.perplexity(model, tok, test, seqlen=1024, windows=8).ppl
    tasks_before = cloze(model, tok) if spec.get("tasks") else None
    whole_peak = peak_rss()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # return the evaluation's freed logits to the OS first, so they do not count below
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM restarts from the current RSS, so the next peak is recovery's own
    trimmed = rss_now()
    report = llmsparse.recover(model, tok, data=str(DATA / "wiki.valid.tokens"), device="cpu", **spec["recover"])
    recover_peak = peak_rss()
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    after = llmsparse.perplexity(model, tok, test, seqlen=1024, windows=8).ppl
    tasks = {"tasks_before": tasks_before, "tasks_after": cloze(model, tok)} if spec.get("tasks") else {}
    return {
        "row": spec["row"], "prune": prune and {k: v for k, v in prune.items() if k != "calib"}, "prune_s": prune_s,
        "ppl_before": before, "ppl_after": after, "recover": spec["recover"], "trainable": report.trainable,
        "share": report.share, "steps": report.steps, "best_step": report.best_step, "stopped_early": report.stopped_early,
        "tokens": report.tokens, "recover_s": report.seconds, "peak_rss_gib": max(whole_peak, peak_rss()) / 2**30,
        "recover_peak_gib": recover_peak / 2**30, "rss_at_start_gib": trimmed / 2**30, "model_gib": model_bytes / 2**30,
        "zeros_before": report.zeros_before, "zeros_after": report.zeros_after,
        "val_loss": report.val_loss, "train_loss": report.train_loss,
    } | tasks


def rss_now() -> int:
    return next(int(line.split()[1]) * 1024 for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmRSS:"))


def recover_peak(r: dict) -> str:
    """Recovery's own peak RSS and its ratio to the model's bytes (rows run before it was measured: not measured)."""
    if "recover_peak_gib" not in r:
        return "not measured"
    start = f"; {r['rss_at_start_gib']:.2f} GiB resident when it started" if "rss_at_start_gib" in r else ""
    return f"{r['recover_peak_gib']:.2f} GiB ({r['recover_peak_gib'] / r['model_gib']:.2f}x{start})"


def accuracies(r: dict) -> str:
    if not r.get("tasks_after"):
        return "-"
    b, a = r["tasks_before"], r["tasks_after"]
    return f"{b['wt2_cloze/acc']:.2f} / {b['wt2_cloze_mc/acc']:.2f} -> {a['wt2_cloze/acc']:.2f} / {a['wt2_cloze_mc/acc']:.2f}"


def table(rows: dict) -> str:
    lines = [
        "| start | ppl before | ppl after | cloze / cloze-mc acc before -> after | trainable | steps (kept) | tokens | recovery wall | peak RSS in recovery (x model bytes) | peak RSS of the row | zeros kept |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows.values():
        lines.append(
            f"| {r['row']} | {r['ppl_before']:.2f} | **{r['ppl_after']:.2f}** | {accuracies(r)} | {r['trainable']:,} ({r['share']:.2%}) | "
            f"{r['steps']} ({r['best_step']}) | {r['tokens']:,} | {r['recover_s'] / 60:.1f} min | {recover_peak(r)} | {r['peak_rss_gib']:.2f} GiB | "
            f"{'yes' if r['zeros_after'] == r['zeros_before'] else 'NO'} ({r['zeros_after']:,}) |"
        )
    return "\n".join(lines)


def plot(rows: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows.values():
        steps, losses = zip(*r["val_loss"])
        ax.plot(steps, losses, marker="o", label=r["row"])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation loss (held-out 5% of wiki.valid.tokens)")
    ax.set_title("Gemma 3 270M: recovery after pruning (masked LoRA + norms)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="sparsegpt-50", help=f"comma-separated rows: {', '.join(ROWS)}")
    parser.add_argument("--json", default=str(ROOT / "docs" / "recover_gemma.json"))
    parser.add_argument("--redo", action="store_true", help="run rows that --json already holds again")
    parser.add_argument("--plot", action="store_true", help="only print the table and draw the plot from --json")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--val-every", type=int, default=8)
    parser.add_argument("--max-minutes", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--label", help="store the rows as 'ROW (LABEL)' (another budget of a row kept beside it)")
    parser.add_argument("--tasks", action="store_true", help="also the offline cloze tasks before and after recovery (minutes per row)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    path = Path(args.json)
    rows = json.loads(path.read_text()) if path.is_file() else {}
    if not args.plot:
        import subprocess

        recover = {
            "train": ["norms", "biases", "lora"], "lora_rank": args.lora_rank, "lora_alpha": 2.0 * args.lora_rank, "lr": args.lr,
            "steps": args.steps, "batch_size": args.batch_size, "seqlen": args.seqlen, "warmup": 10, "val_every": args.val_every,
            "val_windows": 8, "patience": 2, "seed": 0, "max_minutes": args.max_minutes,
        }
        for row in args.only.split(","):
            if row not in ROWS:
                sys.exit(f"unknown row {row!r}; rows: {', '.join(ROWS)}")
            key = f"{row} ({args.label})" if args.label else row
            if key in rows and not args.redo:
                print(f"{key}: already in {path} (--redo to run again)")
                continue
            spec = {"row": row, "recover": recover, "threads": args.threads, "tasks": args.tasks}
            done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], check=True, stdout=subprocess.PIPE, text=True)
            rows[key] = json.loads(done.stdout.strip().splitlines()[-1]) | {"machine": machine_header(), "row": key}
            path.write_text(json.dumps(rows, indent=1) + "\n")  # after every row: an interrupted bench keeps what it finished
            print(table({key: rows[key]}))
    print(machine_header())
    print(table(rows))
    if rows:
        plot(rows, path.with_suffix(".png"))
        print(f"plot: {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
