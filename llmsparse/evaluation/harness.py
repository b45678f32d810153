"""lm-evaluation-harness on an in-memory model: pruned weights and activation-sparsity hooks
are evaluated exactly as they run, without saving first.

``evaluate(model, tok, tasks=[...])`` wraps the model in lm-eval's ``HFLM`` and runs
``simple_evaluate``. Task names are checked before anything runs; local tasks (see
:mod:`llmsparse.evaluation.tasks`) are found through ``include_path``. For rolling log-likelihood
tasks it adds ``token_perplexity`` = exp(-sum of log-likelihoods / predicted tokens), the unit the
pruning papers report, next to lm-eval's word and byte perplexities.
"""

from __future__ import annotations

import difflib
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import EvaluationError, UnknownTaskError


@dataclass
class TaskResults:
    """Metrics per task (``{"acc": 0.41, ...}``), their standard errors, and how they were obtained."""

    metrics: dict[str, dict[str, float]]
    stderr: dict[str, dict[str, float]] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)  # documents evaluated per task
    higher_is_better: dict[str, dict[str, bool]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        lines = [f"{'task':<28} {'metric':<18} {'value':>10} {'stderr':>9} {'n':>6}"]
        for task, metrics in self.metrics.items():
            for metric, value in metrics.items():
                err = self.stderr.get(task, {}).get(metric)
                err_s = f"{err:9.4f}" if isinstance(err, float) and math.isfinite(err) else f"{'-':>9}"
                lines.append(f"{task:<28} {metric:<18} {value:10.4f} {err_s} {self.samples.get(task, 0):>6}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": self.metrics,
            "stderr": self.stderr,
            "samples": self.samples,
            "higher_is_better": self.higher_is_better,
            "settings": self.settings,
        }


def task_manager(include_path: str | Path | list | None = None, tasks: list[str] | None = None):
    """lm-eval's TaskManager with these include paths (which must exist).

    Indexing lm-eval's own few thousand task YAMLs takes seconds, so when every name in ``tasks``
    is found in the include paths alone, only those are indexed. Managers are cached per paths.
    """
    paths = [] if include_path is None else [include_path] if isinstance(include_path, (str, Path)) else list(include_path)
    for p in paths:
        if not Path(p).is_dir():
            raise UnknownTaskError(f"task include path {str(p)!r} is not a directory")
    key = tuple(str(Path(p).resolve()) for p in paths)
    if key and tasks and set(tasks) <= set(_manager(key, False).all_tasks):
        return _manager(key, False)
    return _manager(key, True)


@functools.lru_cache(maxsize=8)
def _manager(paths: tuple[str, ...], defaults: bool):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(paths) or None, include_defaults=defaults)


def check_tasks(tasks: list[str], manager) -> None:
    """Raise :class:`UnknownTaskError` naming close matches for any task lm-eval does not know."""
    if not tasks:
        raise UnknownTaskError("no tasks given")
    known = set(manager.all_tasks)
    for name in tasks:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UnknownTaskError(
                f"unknown lm-eval task {name!r}{hint} (local tasks need --include-path DIR, written by eval/build_tasks.py)"
            )
    _check_task_data(tasks, manager)


def _check_task_data(tasks: list[str], manager) -> None:
    """Refuse a local task (``dataset_path: json``, as ``eval/build_tasks.py`` writes) whose data file is gone, before any model loads.

    Tags are followed to their tasks; tasks that read a Hub dataset are left to lm-eval.
    """
    index = getattr(manager, "task_index", {})
    todo, seen = list(tasks), set()
    while todo:
        name = todo.pop()
        entry = index.get(name) if name not in seen else None
        seen.add(name)
        if entry is None:
            continue
        if getattr(getattr(entry, "kind", None), "name", "") == "TAG":
            todo.extend(getattr(entry, "tags", None) or ())
            continue
        cfg = getattr(entry, "cfg", None) or {}
        files = (cfg.get("dataset_kwargs") or {}).get("data_files") if cfg.get("dataset_path") in ("json", "csv", "text", "parquet") else None
        files = list(files.values()) if isinstance(files, dict) else [files] if isinstance(files, str) else list(files or [])
        for file in (f for group in files for f in ([group] if isinstance(group, str) else group)):
            if not Path(file).exists():
                raise EvaluationError(f"task {name!r} reads {file!r}, which does not exist: rebuild the tasks (eval/build_tasks.py) or fix --include-path")


def _token_perplexity(samples: list[dict], lm) -> tuple[float, int]:
    """exp(-sum ll / tokens) over rolling log-likelihood samples, tokens counted as lm-eval encodes them."""
    total, tokens = 0.0, 0
    for s in samples:
        ll = s["filtered_resps"][0] if isinstance(s["filtered_resps"], list) else s["filtered_resps"]
        total += float(ll[0] if isinstance(ll, (list, tuple)) else ll)
        tokens += len(lm.tok_encode(s["arguments"][0][0]))
    return math.exp(-total / tokens), tokens


def evaluate(
    model: nn.Module,
    tokenizer,
    tasks: str | list[str],
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    batch_size: int | str = 1,
    include_path: str | Path | list | None = None,
    max_length: int | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    bootstrap_iters: int = 1000,
) -> TaskResults:
    """Run lm-eval ``tasks`` on ``model`` as it is in memory (hooks included).

    ``limit`` caps the documents per task (a fraction when < 1); ``max_length`` is the context
    window (default: lm-eval's choice from the config, often far longer than needed on CPU);
    ``include_path`` adds directories of task YAMLs. Standard errors of non-mean metrics use
    ``bootstrap_iters`` resamples.
    """
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    manager = task_manager(include_path, names)
    check_tasks(names, manager)
    if device is not None:
        model.to(device)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
    was_training = model.training
    model.eval()
    try:
        out = simple_evaluate(
            model=lm,
            tasks=names,
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=manager,
            log_samples=True,
            bootstrap_iters=bootstrap_iters,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    finally:
        model.train(was_training)
    results = TaskResults(
        metrics={},
        settings={"limit": limit, "num_fewshot": num_fewshot, "max_length": lm.max_length, "batch_size": batch_size, "seed": seed},
    )
    for task, values in out["results"].items():
        metrics, errors = {}, {}
        for key, value in values.items():
            if "," not in key or not isinstance(value, (int, float)):
                continue
            metric = key.split(",")[0]
            if metric.endswith("_stderr"):
                errors[metric[: -len("_stderr")]] = float(value)
            else:
                metrics[metric] = float(value)
        samples = out.get("samples", {}).get(task)
        if samples and out["configs"].get(task, {}).get("output_type") == "loglikelihood_rolling":
            metrics["token_perplexity"], _ = _token_perplexity(samples, lm)
        if not metrics:
            continue  # a group's header row
        results.metrics[task] = metrics
        results.stderr[task] = errors
        results.samples[task] = int(out.get("n-samples", {}).get(task, {}).get("effective", len(samples or [])))
        hib = dict(out.get("higher_is_better", {}).get(task, {}))
        hib.setdefault("token_perplexity", False)
        results.higher_is_better[task] = {m: bool(hib.get(m, True)) for m in metrics}
    return results
