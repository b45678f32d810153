"""Evaluation: perplexity with the papers' protocol, lm-eval tasks (local ones too), comparisons and sweeps.

Imports every layer below it: comparisons load checkpoints (:mod:`llmsparse.checkpoint`), sweeps prune.
"""

from ..errors import EvaluationError, TaskBuildError, UnknownTaskError
from .harness import TaskResults, evaluate
from .ppl import PerplexityResult, perplexity
from .tasks import ClozeConfig, build_local_tasks, make_cloze

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
