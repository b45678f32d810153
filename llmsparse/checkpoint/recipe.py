"""YAML recipes: the arguments of :func:`llmsparse.prune` or :func:`llmsparse.sparsify_activations` written down, so a run can be repeated.

A recipe of a kind holds the recipe keys of that kind's settings (:class:`~llmsparse.checkpoint.jobs.PruneJob`
for ``prune``, :class:`~llmsparse.activation.SparsifySettings` for ``sparsify``): every field not
marked ``recipe=False``. ``llmsparse.prune(model, tok, **load_recipe(path))`` runs a prune recipe,
``llmsparse.sparsify_activations(model, tok, **load_recipe(path, "sparsify"))`` a sparsify one.
Keys and value types are checked when the file is read, naming the key and the file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from ..activation.calibrate import SparsifySettings
from ..errors import LlmsparseError, RecipeError, check_choice
from ..recovery.api import RecoverSettings
from ..settings import Settings, check_values
from .jobs import PruneJob

#: Recipe kinds: the command (and Python function) that runs them, and their settings.
RECIPE_KINDS: dict[str, type[Settings]] = {"prune": PruneJob, "sparsify": SparsifySettings, "recover": RecoverSettings}


def recipe_keys(kind: str) -> tuple[str, ...]:
    """The keys a ``kind`` recipe may hold."""
    check_choice("recipe kind", kind, RECIPE_KINDS)
    return RECIPE_KINDS[kind].recipe_keys()


def load_recipe(path: str | Path, kind: str = "prune") -> dict[str, Any]:
    """The keyword arguments a ``kind`` recipe file holds, checked against that kind's keys and value types."""
    keys = recipe_keys(kind)
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe {str(path)!r} {'is a directory' if path.is_dir() else 'does not exist'}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise RecipeError(f"recipe {path} is not valid YAML: {str(err).splitlines()[0]}") from err
    except RecursionError:
        raise RecipeError(f"recipe {path} is nested too deeply to be a recipe (a recipe is a flat mapping of arguments)") from None
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {path} must be a mapping of {kind} arguments")
    unknown = sorted(set(data) - set(keys))
    if unknown:
        other = [k for k in RECIPE_KINDS if k != kind and set(data) <= set(recipe_keys(k))]
        hint = f" (it looks like a {other[0]} recipe: run it with llmsparse {other[0]} --recipe)" if other else ""
        raise RecipeError(f"recipe {path}: unknown keys {', '.join(unknown)} for a {kind} recipe{hint}; allowed: {', '.join(keys)}")
    try:
        check_values(RECIPE_KINDS[kind], data, where=f"recipe {path}: ")
    except LlmsparseError as err:
        raise RecipeError(str(err)) from None
    if data.get("method_options"):
        method = next(f for f in dataclasses.fields(RECIPE_KINDS[kind]) if f.name == "method")
        try:  # option names and value types of the recipe's method, checked now rather than at run time
            method.metadata["choices"].create(data.get("method", method.default), **data["method_options"])
        except LlmsparseError as err:
            raise RecipeError(f"recipe {path}: method_options: {err}") from None
    return data


def dump_recipe(recipe: dict[str, Any], kind: str = "prune") -> str:
    return yaml.safe_dump({k: recipe[k] for k in recipe_keys(kind) if recipe.get(k) is not None}, sort_keys=False)


def run_recipe(settings: Settings, report) -> dict[str, Any]:
    """The recipe to save with a run: its settings, with the calibration source the run resolved."""
    recipe = settings.recipe()
    if "calib" not in recipe:  # a recover recipe: its data is a path already
        return recipe
    calib = recipe.get("calib")
    recipe["calib"] = report.calibration["source"] if report.calibration else (calib if calib is None or isinstance(calib, str) else "tensor")
    return recipe
