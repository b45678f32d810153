"""Evaluation: perplexity with the papers' protocol, lm-eval tasks (local ones too), comparisons and sweeps."""

from .harness import TaskResults, UnknownTaskError, evaluate
from .ppl import EvaluationError, PerplexityResult, perplexity
from .tasks import ClozeConfig, TaskBuildError, build_local_tasks, make_cloze

__all__ = [
    "ClozeConfig",
    "EvaluationError",
    "PerplexityResult",
    "TaskBuildError",
    "TaskResults",
    "UnknownTaskError",
    "build_local_tasks",
    "evaluate",
    "make_cloze",
    "perplexity",
]
