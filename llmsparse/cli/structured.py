"""``llmsparse prune --method 2ssp|shortgpt|width``: the structured methods, reached through ``prune``.

``prune``'s ``--method`` also accepts the names in :data:`~llmsparse.structured.STRUCTURED`; such a run
takes its settings from :class:`~llmsparse.structured.StructuredSettings` (same flag names:
``--sparsity``, ``--calib``, ``--nsamples``, ``--seqlen``, ``--seed``, ``--device``, plus
``--<method>-<option>``), refuses the flags of unstructured pruning, and saves with
:func:`~llmsparse.checkpoint.structured.save_structured`. Unstructured or N:M pruning and quantization
compose by a second ``llmsparse prune`` on the output.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import yaml

from ..checkpoint.structured import save_structured
from ..errors import RecipeError, SettingsError
from ..evaluation.ppl import perplexity
from ..pruning.api import PruneSettings
from ..settings import check_values
from ..structured import STRUCTURED, StructuredSettings, prune_structured
from ..structured.surgery import removed_attention_names
from . import finish as tail
from . import flags


def accept_structured(parser: argparse.ArgumentParser) -> None:
    """Add the structured settings and ``--<method>-<option>`` flags (``prune`` adds :data:`STRUCTURED` to ``--method``'s choices)."""
    seen = {a.dest for a in parser._actions}  # the flags prune already has (--sparsity, --calib, ...) serve both
    flags.add_settings(parser, StructuredSettings, seen, "structured pruning (--method 2ssp|shortgpt|width)")
    flags.add_option_flags(parser, STRUCTURED, "structured method options")


def _recipe(path: str | None) -> dict:
    if not path:
        return {}
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise RecipeError(f"recipe {path}: cannot read it ({str(err).splitlines()[0]})") from None
    except RecursionError:
        raise RecipeError(f"recipe {path} is nested too deeply to be a recipe") from None
    return data if isinstance(data, dict) else {}


def wanted(args: argparse.Namespace) -> bool:
    """True when the run asks for a structured method (on the command line or in its recipe); structured-only flags otherwise are refused."""
    if (args.method or _recipe(args.recipe).get("method")) in STRUCTURED:
        return True
    own = sorted(set(flags.given(StructuredSettings, args)) - {f.name for f in dataclasses.fields(PruneSettings)})
    if own:
        raise SettingsError(f"--{own[0].replace('_', '-')} applies to structured methods ({', '.join(sorted(STRUCTURED))}) only")
    return False


def leave_removed_attention(settings: PruneSettings, model) -> None:
    """An unstructured run on a structured output skips the removed (all-zero, not computed) attention modules."""
    names = removed_attention_names(model)
    if names:
        ignore = [settings.ignore] if isinstance(settings.ignore, str) else list(settings.ignore or [])
        settings.ignore = ignore + [f"^{re.escape(n)}\\." for n in names]
        print(f"attention modules removed by structured pruning are left alone: {', '.join(names)}")


def run(args: argparse.Namespace) -> int:
    recipe = _recipe(args.recipe)
    unknown = sorted(set(recipe) - set(StructuredSettings.recipe_keys()))
    if unknown:
        raise RecipeError(f"recipe {args.recipe}: keys {', '.join(unknown)} do not apply to structured methods; allowed: {', '.join(StructuredSettings.recipe_keys())}")
    check_values(StructuredSettings, recipe, where=f"recipe {args.recipe}: ")
    own = {f.name for f in dataclasses.fields(StructuredSettings)}
    foreign = sorted(set(flags.given(PruneSettings, args)) - own)
    if foreign:
        raise SettingsError(f"--{foreign[0].replace('_', '-')} does not apply to structured methods; prune the output again for unstructured, N:M or quantization")
    values = {**recipe, **flags.given(StructuredSettings, args)}
    chosen = values.get("method", "2ssp")
    values["method_options"] = dict(values.get("method_options") or {}) | flags.option_values(args, chosen)
    settings = StructuredSettings(**values)
    STRUCTURED.create(chosen, **settings.method_options)  # option names and ranges, before the model loads
    if tail.given(tail.OutputSettings, args).get("format", "dense") != "dense":
        raise SettingsError("a structured run saves a smaller dense model: --format dense (compact formats apply to a second, unstructured run)")
    with tail.claimed_output(args, settings) as out:
        model, tokenizer = flags.load(args)
        check = tail.PplCheck(**tail.given(tail.PplCheck, args))
        if check.eval_ppl:
            dense = perplexity(model, tokenizer, check.eval_ppl, check.ppl_seqlen, check.ppl_windows)
        report = prune_structured(model, tokenizer, **vars(settings))
        if check.eval_ppl:
            pruned = perplexity(model, tokenizer, check.eval_ppl, check.ppl_seqlen, check.ppl_windows)
            report.evaluation["perplexity"] = {"dense": dataclasses.asdict(dense), "sparse": dataclasses.asdict(pruned)}
            print(f"dense  {dense}\npruned {pruned}")
        print(report.summary())
        if out.output:
            recipe_out = {k: v for k, v in settings.recipe().items() if v not in (None, {})}
            if not isinstance(recipe_out.get("calib"), (str, type(None))):
                recipe_out["calib"] = "tensor"
            saved = save_structured(model.to("cpu"), tokenizer, out.output, report, recipe_out, args.model, out.overwrite, tail.run_inputs(args, settings))
            print(f"saved to {saved}")
    return 0
