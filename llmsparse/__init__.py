"""llmsparse: make large language models sparse after training, and measure what it costs.

Notebook use::

    import llmsparse
    model, tok = llmsparse.load_model("gemma-3-270m")
    report = llmsparse.prune(model, tok, method="sparsegpt", sparsity=0.5, calib="self", nsamples=32, seqlen=512)
    print(report.table())
    print(llmsparse.perplexity(model, tok, "wiki.test.raw", seqlen=1024, windows=8))
    llmsparse.save_pruned(model, tok, "out/gemma-sparsegpt-50", report=report)

    act = llmsparse.sparsify_activations(model, tok, method="teal", sparsity=0.5, calib="wiki.valid.tokens")
    llmsparse.enable_sparse_decode(model)  # batch-1 CPU decoding reads only the kept weight rows

    llmsparse.build_local_tasks("wiki.test.raw", "wt2", "eval/local")  # offline lm-eval tasks
    print(llmsparse.evaluate(model, tok, ["wt2_cloze"], include_path="eval/local", limit=200).table())
"""

from . import activation, errors, runtime
from .activation import ActivationReport, SparsifySettings, enable_sparse_decode, measure_activation_sparsity, sparsify_activations
from .checkpoint.load import load_model
from .checkpoint.recipe import load_recipe
from .checkpoint.save import save_pruned
from .checkpoint.stream import prune_checkpoint
from .checkpoint.structured import save_structured
from .core.layout import find_layers, select_targets
from .core.masks import Pattern
from .data.calibration import calibration_ids
from .errors import (
    CalibrationDataError,
    CheckpointError,
    EvaluationError,
    LlmsparseError,
    ModelError,
    OutputDirError,
    RecipeError,
    SettingsError,
    SparsityError,
    UnknownNameError,
    UnknownTaskError,
)
from .evaluation import TaskResults, build_local_tasks, evaluate
from .evaluation.compare import Comparison, EvalSettings, compare
from .evaluation.ppl import perplexity
from .evaluation.sweep import SweepSpec, sweep
from .formats import FORMATS, get_format
from .methods import METHODS, get_method, register
from .pruning.api import PruneSettings, prune
from .pruning.report import PruneReport
from .recovery import RecoverReport, RecoverSettings, recover
from .runtime import SparseLinear
from .structured import STRUCTURED, StructuredReport, prune_structured
from .version import __version__  # noqa: F401  (llmsparse.__version__)

__all__ = [
    "FORMATS",
    "METHODS",
    "ActivationReport",
    "CalibrationDataError",
    "CheckpointError",
    "Comparison",
    "EvalSettings",
    "EvaluationError",
    "LlmsparseError",
    "ModelError",
    "OutputDirError",
    "Pattern",
    "PruneReport",
    "PruneSettings",
    "RecipeError",
    "RecoverReport",
    "RecoverSettings",
    "SettingsError",
    "STRUCTURED",
    "SparseLinear",
    "SparsifySettings",
    "SparsityError",
    "StructuredReport",
    "SweepSpec",
    "TaskResults",
    "UnknownNameError",
    "UnknownTaskError",
    "activation",
    "build_local_tasks",
    "calibration_ids",
    "compare",
    "enable_sparse_decode",
    "errors",
    "evaluate",
    "find_layers",
    "get_format",
    "get_method",
    "load_model",
    "load_recipe",
    "measure_activation_sparsity",
    "perplexity",
    "prune",
    "prune_checkpoint",
    "prune_structured",
    "recover",
    "register",
    "runtime",
    "save_pruned",
    "save_structured",
    "select_targets",
    "sparsify_activations",
    "sweep",
]
