"""Dense vs sparse, side by side: the same tasks and perplexity for several models, one table.

The first model is the baseline. For every other model each metric gets a relative recovery:
``100 * sparse / base`` where higher is better (accuracy) and ``100 * base / sparse`` where lower
is better (perplexity), so 100% means nothing was lost either way. Saved as ``comparison.json``
and ``comparison.md``; :func:`llmsparse.checkpoint.card.update_card` puts the table into a model card.
"""

from __future__ import annotations

import argparse
import gc
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..checkpoint.load import check_source, load_model
from ..core.layout import get_weight, resolve_device, target_weights
from ..errors import EvaluationError
from ..settings import Settings, at_least, greater_than, setting
from .harness import TaskResults, check_tasks, evaluate, task_manager
from .ppl import PerplexityResult, perplexity, ppl_seqlen_setting, ppl_setting, ppl_windows_setting

JSON_FILE = "comparison.json"
MARKDOWN_FILE = "comparison.md"


def comma_list(text: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``."""
    return [t.strip() for t in text.split(",") if t.strip()]


def limit_value(text: str) -> int | float:
    """A document count, or a fraction below 1."""
    number = float(text)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"--limit must be positive, not {text}")
    return number if number < 1 else int(number)


def batch_size_value(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def batch_size_check(value: int | str) -> str | None:
    """A positive batch size, or lm-eval's ``auto`` / ``auto:N``."""
    ok = value >= 1 if isinstance(value, int) else value == "auto" or (value.startswith("auto:") and value[5:].isdigit())
    return None if ok else "must be a positive integer, 'auto' or 'auto:N'"


@dataclass
class EvalSettings(Settings):
    """What every compared model is evaluated on (one object, so all rows share it); also the evaluation flags."""

    tasks: list[str] = setting([], "comma-separated lm-eval tasks, e.g. hellaswag,arc_easy or local ones (see --include-path)", parse=comma_list)
    limit: int | float | None = setting(None, "documents per task (an integer, or a fraction below 1)", parse=limit_value, check=greater_than(0))
    num_fewshot: int | None = setting(None, "few-shot examples (default: the task's)", check=at_least(0))
    batch_size: int | str = setting(1, "lm-eval batch size, or 'auto'", parse=batch_size_value, check=batch_size_check)
    include_path: list[str] = setting(
        [], "directory of extra task YAMLs (repeatable), e.g. from eval/build_tasks.py", action="append", metavar="DIR"
    )
    max_length: int | None = setting(None, "lm-eval context window in tokens (default: lm-eval's choice from the model config)", check=at_least(1))
    ppl: str | None = ppl_setting()
    ppl_seqlen: int = ppl_seqlen_setting()
    ppl_windows: int | None = ppl_windows_setting()
    seed: int = setting(0, "seed of lm-eval's sampling and few-shot choice", cli=False)

    def check(self) -> None:
        if not self.tasks and not self.ppl:
            raise EvaluationError("nothing to evaluate: give tasks, a perplexity text, or both")


@dataclass
class ModelEval:
    """One model's results: lm-eval metrics, perplexity, and the measured weight sparsity."""

    label: str
    tasks: TaskResults | None = None
    ppl: PerplexityResult | None = None
    weight_sparsity: float | None = None  # exact zeros over the decoder matrices

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "tasks": self.tasks.to_dict() if self.tasks else None,
            "ppl": asdict(self.ppl) if self.ppl else None,
            "weight_sparsity": self.weight_sparsity,
        }

    def values(self) -> dict[tuple[str, str], tuple[float, bool]]:
        """``(task, metric) -> (value, higher_is_better)``, perplexity included as ``("ppl", source)``."""
        out = {}
        if self.tasks:
            for task, metrics in self.tasks.metrics.items():
                for metric, value in metrics.items():
                    out[(task, metric)] = (value, self.tasks.higher_is_better.get(task, {}).get(metric, True))
        if self.ppl:
            out[(f"ppl ({Path(self.ppl.source).name}, {self.ppl.seqlen}x{self.ppl.windows})", "perplexity")] = (self.ppl.ppl, False)
        return out


def recovery(base: float, value: float, higher_is_better: bool) -> float | None:
    """Relative recovery in percent (100 = as good as the baseline); None when undefined."""
    if higher_is_better:
        return 100.0 * value / base if base else None
    return 100.0 * base / value if value else None


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of exact zeros over the decoder blocks' matrices (what pruning changes)."""
    zeros = total = 0
    for module in target_weights(model).values():
        w = get_weight(module)
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / total


def evaluate_model(model: nn.Module, tokenizer, label: str, settings: EvalSettings) -> ModelEval:
    """Everything ``settings`` asks for, on ``model`` as it is in memory."""
    settings.check()
    row = ModelEval(label, weight_sparsity=weight_sparsity(model))
    if settings.ppl:
        row.ppl = perplexity(model, tokenizer, settings.ppl, settings.ppl_seqlen, settings.ppl_windows)
    if settings.tasks:
        row.tasks = evaluate(
            model,
            tokenizer,
            settings.tasks,
            settings.limit,
            settings.num_fewshot,
            settings.batch_size,
            settings.include_path or None,
            settings.max_length,
            seed=settings.seed,
        )
    return row


@dataclass
class Comparison:
    """Rows of :class:`ModelEval`, the first being the baseline."""

    rows: list[ModelEval]
    settings: EvalSettings

    def markdown(self) -> str:
        base, others = self.rows[0], self.rows[1:]
        head = ["task", "metric", base.label] + [c for r in others for c in (r.label, "recovery")]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        if any(r.weight_sparsity is not None for r in self.rows):
            cells = ["weights", "sparsity"] + [f"{base.weight_sparsity:.2%}"] + [c for r in others for c in (f"{r.weight_sparsity:.2%}", "")]
            lines.append("| " + " | ".join(cells) + " |")
        base_values = base.values()
        for (task, metric), (value, hib) in base_values.items():
            cells = [task, f"{metric} {'↑' if hib else '↓'}", f"{value:.4g}"]
            for r in others:
                other = r.values().get((task, metric))
                if other is None:
                    cells += ["-", "-"]
                    continue
                rec = recovery(value, other[0], hib)
                cells += [f"{other[0]:.4g}", f"{rec:.1f}%" if rec is not None else "-"]
            lines.append("| " + " | ".join(cells) + " |")
        s = self.settings
        notes = [f"limit {s.limit}" if s.limit else "all documents", f"{s.num_fewshot or 0}-shot"]
        if s.max_length:
            notes.append(f"max length {s.max_length}")
        return "\n".join(lines) + f"\n\nlm-eval settings: {', '.join(notes)}; recovery = sparse/base (↑) or base/sparse (↓).\n"

    def to_dict(self) -> dict[str, Any]:
        return {"settings": asdict(self.settings), "rows": [r.to_dict() for r in self.rows], "markdown": self.markdown()}

    def save(self, directory: str | Path) -> tuple[Path, Path]:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / JSON_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        (directory / MARKDOWN_FILE).write_text(self.markdown(), encoding="utf-8")
        return directory / JSON_FILE, directory / MARKDOWN_FILE


def compare(
    models: list[str],
    settings: EvalSettings,
    labels: list[str] | None = None,
    dtype: str = "auto",
    device=None,
    trust_remote_code: bool = False,
    runtime: str = "dense",
    load_in: str | None = None,
) -> Comparison:
    """Load each model in turn (the first is the baseline), evaluate it with ``settings``, and return the table.

    ``runtime`` is :func:`~llmsparse.load_model`'s (``auto`` loads a dense baseline densely and sparse models compressed),
    and so is ``load_in`` (bitsandbytes ``4bit``/``8bit`` for every model).

    Every path is checked before the first (slow) load, so a typo fails at once.
    """
    settings.check()
    if len(models) < 2:
        raise EvaluationError("compare needs a baseline and at least one other model")
    labels = labels or models
    if len(labels) != len(models):
        raise EvaluationError(f"{len(labels)} labels for {len(models)} models")
    for source in models:
        check_source(source)
    if settings.tasks:
        check_tasks(settings.tasks, task_manager(settings.include_path or None, settings.tasks))
    rows = []
    for source, label in zip(models, labels):
        model, tokenizer = load_model(source, dtype=dtype, trust_remote_code=trust_remote_code, runtime=runtime, load_in=load_in)
        if not load_in:  # bitsandbytes places the model itself
            model.to(resolve_device(device))
        rows.append(evaluate_model(model, tokenizer, label, settings))
        del model
        gc.collect()
    return Comparison(rows, settings)
