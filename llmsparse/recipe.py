"""YAML recipes: the arguments of :func:`llmsparse.prune` written down, so a run can be repeated.

A recipe holds the keys of ``prune()`` (``method``, ``sparsity``, ``pattern``, ``calib``,
``nsamples``, ``seqlen``, ``seed``, ``targets``, ``ignore``, ``true_sequential``,
``method_options``, ``layer_budget``, ``owl_m``, ``owl_lambda``); ``llmsparse.prune(model, tok, **load_recipe(path))`` runs it.
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


class RecipeError(ValueError):
    """A recipe file that cannot be read or has unknown keys."""


def load_recipe(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"recipe {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {path} must be a mapping of prune() arguments")
    unknown = sorted(set(data) - set(RECIPE_KEYS))
    if unknown:
        raise RecipeError(f"recipe {path}: unknown keys {', '.join(unknown)}; allowed: {', '.join(RECIPE_KEYS)}")
    return data


def dump_recipe(recipe: dict[str, Any]) -> str:
    return yaml.safe_dump({k: recipe[k] for k in RECIPE_KEYS if recipe.get(k) is not None}, sort_keys=False)
