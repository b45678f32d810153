"""The end of every run that changes a model (``prune``, ``sparsify``): perplexity before and after, summary, save, push.

Its flags come from :class:`OutputSettings` and :class:`PplCheck`. :func:`claimed_output` runs
before the model loads: it checks the format, the evaluation text and the output directory, and
holds the output (:func:`llmsparse.checkpoint.outdir.claim`) until the run ends, so a second run into the
same directory is refused at once; :func:`finish` runs after the work.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..checkpoint.hub import push
from ..checkpoint.outdir import claim
from ..checkpoint.recipe import run_recipe
from ..checkpoint.save import check_bnb_format, save_pruned
from ..core.layout import resolve_device
from ..core.masks import Pattern
from ..core.memory import peak_rss
from ..data.text import check_eval_source
from ..errors import SettingsError
from ..evaluation.ppl import perplexity, ppl_seqlen_setting, ppl_setting, ppl_windows_setting
from ..formats import FORMATS, get_format
from ..settings import Settings, setting
from .flags import given

#: The format a run with --quantize saves in when --format is not given.
QUANTIZED_FORMAT = "pack-quantized"


@dataclass
class OutputSettings(Settings):
    """Where a changed model goes: the output directory, its format, and the Hub."""

    output: str | None = setting(None, "directory for the model (safetensors, tokenizer, recipe.yaml, reports, model card)")
    overwrite: bool = setting(False, "replace a non-empty --output directory that holds a previous llmsparse output")
    format: str = setting(
        "dense",
        f"how the pruned matrices are stored: {', '.join(n for n in FORMATS if n != 'N:M')} or an N:M pattern such as 2:4; "
        "dense loads with plain transformers, the compact ones with llmsparse (see llmsparse methods); "
        f"with --quantize the default is {QUANTIZED_FORMAT}, which transformers + compressed-tensors and vLLM load",
    )
    push_to_hub: str | None = setting(None, "after saving, upload --output to this Hub repo (token from HF_TOKEN or huggingface-cli login)", metavar="REPO_ID")
    private: bool = setting(False, "create the Hub repo as private")
    revision: str | None = setting(None, "Hub branch to upload to (created if missing; default main)")


@dataclass
class PplCheck(Settings):
    """Perplexity of the model before and after the run."""

    eval_ppl: str | None = ppl_setting("also measure perplexity before and after the run on a text file or 'wikitext2'")
    ppl_seqlen: int = ppl_seqlen_setting()
    ppl_windows: int | None = ppl_windows_setting()


def check_output(args: argparse.Namespace, pattern: Pattern | None = None, quantize: str = "none", symmetric: bool = True) -> OutputSettings:
    """The output settings, with the format checked against ``pattern`` (what the run prunes) and ``quantize``, and the Hub upload against ``--output``.

    A run that quantizes saves as ``pack-quantized`` unless ``--format`` says otherwise.
    """
    values = given(OutputSettings, args)
    if quantize != "none":
        values.setdefault("format", QUANTIZED_FORMAT)
    out = OutputSettings(**values)
    if out.output is not None and not out.output.strip():
        raise SettingsError("--output: is empty; give a directory (or leave --output out to save nothing)")
    fmt = get_format(out.format)
    check_bnb_format(fmt, getattr(args, "load_in", None))
    if fmt.quantized and quantize == "none":
        raise SettingsError(f"--format {out.format} stores quantized weights: add --quantize int4 or int8")
    if fmt.label == QUANTIZED_FORMAT and not symmetric:
        raise SettingsError(
            f"--asymmetric: --format {QUANTIZED_FORMAT} (the default with --quantize) stores symmetric grids only "
            "(transformers + compressed-tensors refuse packed zero points); drop --asymmetric or add --format bitmask"
        )
    if pattern is not None:
        fmt.check(pattern)
    if out.push_to_hub and not out.output:
        raise SettingsError("--push-to-hub uploads the saved model: give --output DIR as well")
    return out


def run_inputs(args: argparse.Namespace, *settings: Settings | None) -> list[str]:
    """The files and directories a run reads (model, calibration or training text, recipes, evaluation text): the output may not hold them."""
    found = [args.model, getattr(args, "recipe", None), getattr(args, "eval_ppl", None)]
    found += [getattr(s, key, None) for s in settings for key in ("calib", "data", "recover")]
    return [str(x) for x in found if isinstance(x, (str, os.PathLike))]


@contextmanager
def claimed_output(args: argparse.Namespace, settings: Settings, pattern: Pattern | None = None, then: Settings | None = None) -> Iterator[OutputSettings]:
    """Everything about the output and the evaluation text checked before the model loads; the output is held until the run ends.

    ``then``: the settings of a second step of the same run (recovery after pruning), whose inputs the output may not hold either."""
    out = check_output(args, pattern, getattr(settings, "quantize", "none"), getattr(settings, "symmetric", True))
    check = PplCheck(**given(PplCheck, args))
    if check.eval_ppl:
        check_eval_source(check.eval_ppl)
    if not out.output:
        yield out
        return
    with claim(out.output, out.overwrite, run_inputs(args, settings, then)):
        yield out


def finish(
    args: argparse.Namespace,
    out: OutputSettings,
    model,
    tokenizer,
    work: Callable[[], Any],
    settings: Settings,
    report_arg: str,
    after_eval: Callable[[Any, PplCheck], None] | None = None,
    then: tuple[Callable[[], Any], Settings] | None = None,
    **save: Any,
) -> int:
    """Run ``work`` (returns a report) between the before/after perplexity, print, then save and push.

    The report goes to :func:`~llmsparse.save_pruned` as ``report_arg`` (``report`` or ``activation``),
    with the run's own arguments ``save``; ``after_eval(report, check)`` adds what a run measures on
    the evaluation text. ``out`` comes from :func:`claimed_output`, which holds the output directory.
    ``then``: a recovery step (its work and settings) run right after ``work``, before the "after"
    perplexity; its report is saved as ``recovery``.
    """
    check = PplCheck(**given(PplCheck, args))
    device = resolve_device(args.device)
    if check.eval_ppl:
        model.to(device)
        dense = perplexity(model, tokenizer, check.eval_ppl, check.ppl_seqlen, check.ppl_windows)
    report = work()
    if then is not None:
        print(report.summary())
        save["recovery"] = then[0]()
    if check.eval_ppl:
        model.to(device)
        sparse = perplexity(model, tokenizer, check.eval_ppl, check.ppl_seqlen, check.ppl_windows)
        report.evaluation["perplexity"] = {"dense": dataclasses.asdict(dense), "sparse": dataclasses.asdict(sparse)}
        if after_eval is not None:
            after_eval(report, check)
    last = save.get("recovery", report)
    print(last.table() if args.verbose else last.summary())
    if check.eval_ppl:
        print(f"dense  {dense}\nsparse {sparse}")
    if out.output:
        saved = save_pruned(
            model.to("cpu"),
            tokenizer,
            out.output,
            recipe=run_recipe(settings, report),
            base_model=args.model,
            format=out.format,
            overwrite=out.overwrite,
            inputs=run_inputs(args, settings, then[1] if then else None),
            **{report_arg: report},
            **save,
        )
        saved_summary(out, report, saved)
    return 0


def saved_summary(out: OutputSettings, report, saved) -> None:
    """What a saved run prints after saving (compact storage, the path, peak memory) and the Hub upload ``out`` asks for."""
    storage = getattr(report, "storage", None)
    if storage:
        ratio = storage["bytes_compressed"] / storage["bytes_dense"]
        print(f"pruned matrices: {storage['bytes_dense']:,} bytes dense -> {storage['bytes_compressed']:,} bytes {storage['format']} ({ratio:.3f}x)")
    print(f"saved to {saved}; peak resident memory {peak_rss() / 2**30:.2f} GiB")
    if out.push_to_hub:
        print(f"pushed: {push(saved, out.push_to_hub, private=out.private, revision=out.revision)}")
