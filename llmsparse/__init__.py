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
"""

__version__ = "0.1.0"

from . import activation
from .activation import ActivationReport, enable_sparse_decode, measure_activation_sparsity, sparsify_activations
from .calibration import CalibrationDataError, calibration_ids
from .export import OutputDirError, save_pruned
from .masks import Pattern, SparsityError
from .methods import METHODS, UnknownMethodError, get_method, register
from .models import ModelError, find_layers, load_model
from .evaluation.ppl import EvaluationError, perplexity
from .pruning import prune, select_targets
from .recipe import RecipeError, load_recipe
from .report import PruneReport

__all__ = [
    "METHODS",
    "ActivationReport",
    "CalibrationDataError",
    "EvaluationError",
    "ModelError",
    "OutputDirError",
    "Pattern",
    "PruneReport",
    "RecipeError",
    "SparsityError",
    "UnknownMethodError",
    "activation",
    "calibration_ids",
    "enable_sparse_decode",
    "find_layers",
    "get_method",
    "load_model",
    "load_recipe",
    "measure_activation_sparsity",
    "perplexity",
    "prune",
    "register",
    "save_pruned",
    "select_targets",
    "sparsify_activations",
]
