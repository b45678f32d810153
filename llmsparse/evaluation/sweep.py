"""Sweeps: prune one model at several sparsities with several methods, evaluate every point, plot.

Everything lands in one output directory: ``sweep.json`` (settings and every finished point,
rewritten after each), ``sweep.md`` (the table and the command that made it) and ``sweep.png``
(one panel per metric, value against sparsity, a line per method, the dense model as a line).
Re-running the same command skips finished points; adding methods or sparsities extends the
run (each distinct command is recorded). A directory holding a run with other settings (model, calibration, evaluation) is refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..checkpoint.load import check_source, load_model
from ..core import bnb
from ..core.layout import resolve_device
from ..core.masks import resolve_target
from ..data.calibration import calib_setting, check_calib, nsamples_setting, seed_setting, seqlen_setting, text_field_setting
from ..errors import SettingsError, SweepDirError
from ..methods import get_method
from ..pruning.api import prune
from ..pruning.budgets import BUDGETS
from ..settings import Settings, setting
from .compare import EvalSettings, ModelEval, comma_list, evaluate_model, recovery
from .harness import check_tasks, task_manager

JSON_FILE, MARKDOWN_FILE, PLOT_FILE = "sweep.json", "sweep.md", "sweep.png"


@dataclass
class SweepSpec(Settings):
    """What identifies a sweep run; the points (methods x sparsities) can grow between runs."""

    model: str = setting(dataclasses.MISSING, "the model to sweep", positional=True)
    calib: str | None = calib_setting()
    nsamples: int = nsamples_setting(128)
    seqlen: int = seqlen_setting(2048)
    seed: int = seed_setting()
    calib_field: str = text_field_setting()
    layer_budget: str = setting("uniform", "how sparsity is spread over decoder layers: uniform or owl", choices=BUDGETS)
    method_options: dict[str, dict] = setting({}, "options per method name", cli=False)
    dtype: str = setting("auto", "weight dtype to load")
    load_in: str | None = setting(None, "evaluate the dense model and every point after quantizing it with bitsandbytes: 4bit (NF4) or 8bit", choices=bnb.LOAD_IN)
    evaluation: EvalSettings = field(default_factory=EvalSettings, metadata={"cli": False})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def float_list(text: str) -> list[float]:
    try:
        return [float(x) for x in comma_list(text)]
    except ValueError:
        raise SettingsError(f"sparsities must be comma-separated numbers, got {text!r}") from None


@dataclass
class SweepPoints(Settings):
    """Which points a sweep runs (they may grow between runs) and where it writes."""

    output: str = setting(dataclasses.MISSING, "sweep directory (sweep.json, sweep.md, sweep.png); re-run to resume")
    methods: list[str] = setting(["wanda"], "comma-separated pruning methods", parse=comma_list)
    sparsities: list[float] = setting([], "comma-separated unstructured sparsities, e.g. 0.3,0.5,0.6,0.7", parse=float_list)
    pattern: str | None = setting(None, "also prune each method with this N:M pattern, e.g. 2:4")


def points(methods: list[str], sparsities: list[float], pattern: str | None) -> list[tuple[str, float, str]]:
    """``(method, sparsity, pattern)`` for every method at every sparsity, plus each method at ``pattern`` (N:M)."""
    out = []
    for method in methods:
        get_method(method)  # unknown names fail here, before any work
        for s in sparsities:
            sparsity, pat = resolve_target(s, None)
            out.append((method, sparsity, str(pat)))
        if pattern and pattern != "unstructured":
            sparsity, pat = resolve_target(None, pattern)
            out.append((method, sparsity, str(pat)))
    if not out:
        raise SettingsError("no sweep points: give sparsities, an N:M pattern, or both")
    return out


def point_key(method: str, sparsity: float, pattern: str) -> str:
    return f"{method}|{pattern}" if pattern != "unstructured" else f"{method}|{sparsity:g}"


def open_run(directory: Path, spec: SweepSpec) -> dict:
    """The stored run to resume (or a fresh one); refuse a directory holding anything else."""
    path = directory / JSON_FILE
    if path.is_file():
        try:
            run = json.loads(path.read_text(encoding="utf-8"))
            stored = run["spec"]
            points = run.get("points")
            if not (isinstance(stored, dict) and isinstance(points, dict) and isinstance(run.get("commands"), list)):
                raise TypeError("its spec, points or commands are not what a sweep writes")
            if not all(isinstance(p, dict) and {"method", "sparsity", "pattern", "eval"} <= set(p) for p in points.values()):
                raise TypeError("a point lacks its method, sparsity, pattern or eval")
        except (ValueError, KeyError, TypeError, RecursionError) as err:  # not UTF-8, not JSON, or not a sweep's JSON
            raise SweepDirError(f"{path} is not a readable sweep record ({type(err).__name__}: {str(err)[:200]}); use another --output") from err
        ours = json.loads(json.dumps(spec.to_dict()))
        changed = sorted(k for k in set(stored) | set(ours) if stored.get(k) != ours.get(k))  # a key added since reads as None
        if changed:
            raise SweepDirError(
                f"{directory} holds another sweep (different {', '.join(changed)}); use another --output or the same settings"
            )
        return run
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise SweepDirError(f"{directory} exists and is not a sweep directory (no {JSON_FILE}); use another --output")
    return {"spec": json.loads(json.dumps(spec.to_dict())), "dense": None, "points": {}, "commands": []}


def _save(directory: Path, run: dict) -> None:
    tmp = directory / f".{JSON_FILE}.tmp"
    tmp.write_text(json.dumps(run, indent=2) + "\n")
    os.replace(tmp, directory / JSON_FILE)


def _metrics(row: dict) -> dict[str, tuple[float, bool]]:
    """``"task/metric" -> (value, higher_is_better)`` of one stored ModelEval dict."""
    out = {}
    if row.get("ppl"):
        out["perplexity"] = (row["ppl"]["ppl"], False)
    tasks = row.get("tasks") or {}
    for task, metrics in tasks.get("metrics", {}).items():
        for metric, value in metrics.items():
            out[f"{task}/{metric}"] = (value, tasks.get("higher_is_better", {}).get(task, {}).get(metric, True))
    return out


def markdown(run: dict) -> str:
    """The sweep table: one row per point, each metric with its recovery against dense."""
    dense = _metrics(run["dense"]["eval"]) if run.get("dense") else {}
    names = list(dense) or sorted({m for p in run["points"].values() for m in _metrics(p["eval"])})
    head = ["method", "pattern", "sparsity", "weights zero"] + names
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if dense:
        zero = run["dense"]["eval"].get("weight_sparsity") or 0.0
        lines.append("| " + " | ".join(["dense", "-", "0", f"{zero:.2%}"] + [f"{dense[n][0]:.4g}" for n in names]) + " |")
    rows = sorted(run["points"].values(), key=lambda p: (p["method"], p["pattern"] != "unstructured", p["sparsity"]))
    for p in rows:
        values = _metrics(p["eval"])
        cells = [p["method"], p["pattern"], f"{p['sparsity']:g}", f"{p['eval']['weight_sparsity']:.2%}"]
        for n in names:
            if n not in values:
                cells.append("-")
                continue
            rec = recovery(dense[n][0], values[n][0], values[n][1]) if n in dense else None
            cells.append(f"{values[n][0]:.4g}" + (f" ({rec:.0f}%)" if rec is not None else ""))
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n\nIn brackets: recovery against dense (sparse/dense where higher is better, dense/sparse where lower is).\n"
    if run["commands"]:
        text += "\nCommands (in order; re-running them resumes):\n\n" + "".join(f"    {c}\n" for c in run["commands"])
    return text


def plot(run: dict, path: Path) -> None:
    """One panel per metric: value vs sparsity, a line per method from the dense value at 0 (N:M points as stars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dense = _metrics(run["dense"]["eval"]) if run.get("dense") else {}
    names = list(dense) or sorted({m for p in run["points"].values() for m in _metrics(p["eval"])})
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    methods = sorted({p["method"] for p in run["points"].values()})
    colors = {m: f"C{i}" for i, m in enumerate(methods)}
    for ax, name in zip(axes.flat, names):
        for m in methods:
            mine = [p for p in run["points"].values() if p["method"] == m and name in _metrics(p["eval"])]
            line = sorted((p["sparsity"], _metrics(p["eval"])[name][0]) for p in mine if p["pattern"] == "unstructured")
            if line and name in dense:
                line.insert(0, (0.0, dense[name][0]))  # every method starts from the dense model
            if line:
                ax.plot(*zip(*line), "-o", color=colors[m], label=m)
            for p in mine:
                if p["pattern"] != "unstructured":
                    ax.plot(p["sparsity"], _metrics(p["eval"])[name][0], "*", markersize=12, color=colors[m], label=f"{m} {p['pattern']}")
        if name in dense:
            ax.axhline(dense[name][0], color="black", linewidth=0.8, linestyle="--", label="dense")
            if not dense[name][1]:
                ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("sparsity")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.suptitle(f"{Path(run['spec']['model']).name}: metric vs sparsity", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluated(model, tokenizer, label: str, spec: SweepSpec) -> dict:
    """``{"eval": ...}`` of ``model``; with ``spec.load_in``, of its bitsandbytes copy (saved to a temporary directory and
    loaded back, so exactly what ``load_model(saved, load_in=...)`` gives), plus ``"bitsandbytes"``: what that did to its zeros."""
    if not spec.load_in:
        return {"eval": evaluate_model(model, tokenizer, label, spec.evaluation).to_dict()}
    with tempfile.TemporaryDirectory(prefix="llmsparse-bnb-") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        quantized, _ = load_model(tmp, load_in=spec.load_in)
        row: ModelEval = evaluate_model(quantized, tokenizer, label, spec.evaluation)
    return {"eval": row.to_dict(), "bitsandbytes": asdict(getattr(quantized, bnb.REPORT_ATTR))}


def sweep(
    spec: SweepSpec,
    methods: list[str],
    sparsities: list[float],
    output: str | Path,
    pattern: str | None = None,
    device=None,
    command: str | None = None,
) -> dict:
    """Run (or resume) a sweep into ``output``; returns the run record (also in ``sweep.json``)."""
    spec.evaluation.check()
    todo = points(methods, sparsities, pattern)
    calibrated = [m for m in methods if get_method(m).needs_calibration]
    if calibrated or spec.layer_budget == "owl":
        check_calib(spec.calib, f"method {calibrated[0]!r}" if calibrated else "the OWL layer budget")
    check_source(spec.model)
    if spec.load_in:
        bnb.require()
    if spec.evaluation.tasks:
        check_tasks(spec.evaluation.tasks, task_manager(spec.evaluation.include_path or None, spec.evaluation.tasks))
    directory = Path(output)
    run = open_run(directory, spec)
    directory.mkdir(parents=True, exist_ok=True)
    if command and command not in run["commands"]:
        run["commands"].append(command)
    todo = [p for p in todo if point_key(*p) not in run["points"]]

    if run["dense"] is None or todo:
        model, tokenizer = load_model(spec.model, dtype=spec.dtype)
        device = resolve_device(device)
        model.to(device)
        dense_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        if run["dense"] is None:
            run["dense"] = evaluated(model, tokenizer, "dense", spec)
            _save(directory, run)
        for method, sparsity, pat in tqdm(todo, desc="sweep points"):
            model.load_state_dict(dense_state)
            started = time.perf_counter()
            prune(
                model,
                tokenizer,
                method,
                sparsity if pat == "unstructured" else None,
                pattern=pat,
                calib=spec.calib,
                nsamples=spec.nsamples,
                seqlen=spec.seqlen,
                seed=spec.seed,
                method_options=spec.method_options.get(method),
                device=device,
                text_field=spec.calib_field,
                layer_budget=spec.layer_budget,
            )
            seconds = time.perf_counter() - started
            label = f"{method} {pat if pat != 'unstructured' else sparsity}"
            run["points"][point_key(method, sparsity, pat)] = {
                "method": method, "sparsity": sparsity, "pattern": pat, "prune_seconds": seconds, **evaluated(model.to(device), tokenizer, label, spec),
            }
            _save(directory, run)
        del model, dense_state
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    _save(directory, run)
    (directory / MARKDOWN_FILE).write_text(markdown(run), encoding="utf-8")
    plot(run, directory / PLOT_FILE)
    return run
