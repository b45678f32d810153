"""YAML recipes: the arguments of :func:`llmsparse.prune` or :func:`llmsparse.sparsify_activations` written down, so a run can be repeated.

A ``prune`` recipe holds keys of ``prune()`` (``method``, ``sparsity``, ``pattern``, ``calib``,
``nsamples``, ``seqlen``, ``seed``, ``targets``, ``ignore``, ``true_sequential``,
``method_options``, ``layer_budget``, ``owl_m``, ``owl_lambda``); ``llmsparse.prune(model, tok,
**load_recipe(path))`` runs it. A ``sparsify`` recipe holds keys of ``sparsify_activations()``;
``llmsparse.sparsify_activations(model, tok, **load_recipe(path, "sparsify"))`` runs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

RECIPE_KEYS = (
    "method",
    "sparsity",
    "pattern",
    "calib",
    "nsamples",
    "seqlen",
    "seed",
    "targets",
    "ignore",
    "true_sequential",
    "method_options",
    "layer_budget",
    "owl_m",
    "owl_lambda",
)
SPARSIFY_RECIPE_KEYS = (
    "method",
    "sparsity",
    "calib",
    "nsamples",
    "seqlen",
    "seed",
    "allocation",
    "prefill",
    "method_options",
    "greedy_step",
    "greedy_samples",
    "greedy_error",
)
#: Recipe kinds: the command (and Python function) that runs them, and the keys they may hold.
RECIPE_KINDS = {"prune": RECIPE_KEYS, "sparsify": SPARSIFY_RECIPE_KEYS}


class RecipeError(ValueError):
    """A recipe file that cannot be read or has unknown keys."""


def _keys(kind: str) -> tuple[str, ...]:
    if kind not in RECIPE_KINDS:
        raise RecipeError(f"recipe kind must be one of {', '.join(RECIPE_KINDS)}, got {kind!r}")
    return RECIPE_KINDS[kind]


def load_recipe(path: str | Path, kind: str = "prune") -> dict[str, Any]:
    """The keyword arguments a ``kind`` recipe file holds, checked against that kind's keys."""
    keys = _keys(kind)
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"recipe {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {path} must be a mapping of {kind} arguments")
    unknown = sorted(set(data) - set(keys))
    if unknown:
        other = [k for k, allowed in RECIPE_KINDS.items() if k != kind and set(data) <= set(allowed)]
        hint = f" (it looks like a {other[0]} recipe: run it with llmsparse {other[0]} --recipe)" if other else ""
        raise RecipeError(f"recipe {path}: unknown keys {', '.join(unknown)} for a {kind} recipe{hint}; allowed: {', '.join(keys)}")
    return data


def dump_recipe(recipe: dict[str, Any], kind: str = "prune") -> str:
    return yaml.safe_dump({k: recipe[k] for k in _keys(kind) if recipe.get(k) is not None}, sort_keys=False)
