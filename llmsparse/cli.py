"""Command line: ``llmsparse prune|sparsify|generate|eval|compare|sweep|push|methods`` (thin over the Python API)."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import logging
import shlex
import sys
from pathlib import Path

from . import __version__
from .activation import (
    ACTIVATION_METHODS,
    ALLOCATIONS,
    PREFILL,
    check_request,
    enable_sparse_decode,
    measure_activation_sparsity,
    settings_of,
    sparsify_activations,
)
from .activation.decode import timed_generate
from .activation.teal import GREEDY_ERRORS
from .budgets import BUDGETS, OWLConfig
from .calibration import HUB_DATASETS, SELF, check_calib
from .engine import CalibrationError
from .export import METADATA_FILE, check_output_dir, save_pruned
from .formats import CheckpointError, parse_format
from .hub import push
from .masks import resolve_target
from .methods import METHODS, get_method
from .methods.sparsegpt import HessianError
from .models import check_source, load_model
from .card import update_card
from .evaluation.compare import EvalSettings, compare, evaluate_model
from .evaluation.harness import check_tasks, task_manager
from .evaluation.ppl import perplexity
from .evaluation.sweep import SweepSpec, markdown, sweep
from .pruning import prune, resolve_device
from .recipe import RECIPE_KINDS, load_recipe

# Defaults of `prune` options when neither the command line nor a recipe sets them (the papers' values).
PRUNE_DEFAULTS = {"method": "wanda", "nsamples": 128, "seqlen": 2048, "seed": 0, "true_sequential": False}
# Those of `sparsify`: sparsify_activations()'s own, except the sparsity, which must be given.
SPARSIFY_DEFAULTS = {
    name: param.default
    for name, param in inspect.signature(sparsify_activations).parameters.items()
    if name in RECIPE_KINDS["sparsify"] and name != "sparsity" and param.default is not inspect.Parameter.empty
}


def _method_option_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per method option, generated from each method's config dataclass: ``--<method>-<option>``."""
    group = parser.add_argument_group("method options (defaults follow the papers)")
    for name, cls in sorted(METHODS.items()):
        for f in dataclasses.fields(cls.Config):
            default = f.default if f.default is not dataclasses.MISSING else None
            flag, dest, text = f"--{name}-{f.name.replace('_', '-')}", f"opt:{name}:{f.name}", f"{name}: {f.metadata.get('help', '')}"
            if isinstance(default, bool):
                group.add_argument(flag, dest=dest, action="store_const", const=True, default=None, help=text)
            else:
                kind = type(default) if default is not None else str
                group.add_argument(flag, dest=dest, type=kind, default=None, metavar=f.name.upper(), help=f"{text} (default {default})")


def _help(config: type, name: str) -> str:
    return next(f.metadata.get("help", "") for f in dataclasses.fields(config) if f.name == name)


def _push_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--private", action="store_true", help="create the Hub repo as private")
    p.add_argument("--revision", help="Hub branch to upload to (created if missing; default main)")


def _common_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="Hub id, local HF directory, .gguf file, or 'gemma-3-270m' (bundled Gemma 3 270M)")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "float16", "bfloat16"],
        help="weight dtype to load (default: the checkpoint's)",
    )
    p.add_argument("--device", default=None, help="compute device, e.g. cpu or cuda (default: cuda if available)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the Hub to run (off by default)")


def _eval_flags(p: argparse.ArgumentParser, ppl_aliases: bool = False) -> None:
    """Flags of what to evaluate, shared by eval, compare and sweep (an EvalSettings each)."""
    g = p.add_argument_group("evaluation (perplexity and/or lm-eval tasks)")
    g.add_argument("--ppl", metavar="TEXT", help="perplexity on a text file (non-empty lines are documents) or 'wikitext2'")
    seqlen = ["--ppl-seqlen", "--seqlen"] if ppl_aliases else ["--ppl-seqlen"]
    windows = ["--ppl-windows", "--windows"] if ppl_aliases else ["--ppl-windows"]
    g.add_argument(*seqlen, dest="ppl_seqlen", type=int, default=1024, help="perplexity window length (default 1024)")
    g.add_argument(*windows, dest="ppl_windows", type=int, help="perplexity windows from the start (default: all)")
    g.add_argument("--tasks", help="comma-separated lm-eval tasks, e.g. hellaswag,arc_easy or local ones (see --include-path)")
    g.add_argument("--include-path", action="append", default=[], metavar="DIR", help="directory of extra task YAMLs (repeatable), e.g. from eval/build_tasks.py")
    g.add_argument("--limit", type=_limit, help="documents per task (an integer, or a fraction below 1)")
    g.add_argument("--num-fewshot", type=int, help="few-shot examples (default: the task's)")
    g.add_argument("--batch-size", default=1, help="lm-eval batch size, or 'auto' (default 1)")
    g.add_argument("--max-length", type=int, help="lm-eval context window in tokens (default: lm-eval's choice from the model config)")


def _limit(value: str) -> int | float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"--limit must be positive, not {value}")
    return number if number < 1 else int(number)


def _eval_settings(args: argparse.Namespace) -> EvalSettings:
    tasks = [t.strip() for t in (args.tasks or "").split(",") if t.strip()]
    batch = int(args.batch_size) if str(args.batch_size).isdigit() else args.batch_size
    settings = EvalSettings(
        tasks, args.limit, args.num_fewshot, batch, list(args.include_path), args.max_length, args.ppl, args.ppl_seqlen, args.ppl_windows
    )
    settings.check()
    return settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmsparse", description="Post-training sparsity for causal language models.")
    parser.add_argument("--version", action="version", version=f"llmsparse {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and results")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prune", help="one-shot, layer-by-layer pruning", description="Prune the decoder Linear layers of a causal LM.")
    _common_model_flags(p)
    p.add_argument("--recipe", help="YAML recipe with prune() arguments; flags given on the command line override it")
    p.add_argument("--method", choices=sorted(METHODS), help="pruning method (default wanda)")
    p.add_argument("--sparsity", type=float, help="fraction of weights set to zero, in [0, 1) (implied by an N:M pattern)")
    p.add_argument("--pattern", help="'unstructured' (default) or N:M, e.g. 2:4 = 2 zeros in every 4 consecutive inputs")
    p.add_argument(
        "--calib",
        help=f"calibration data: a .txt/.jsonl/.parquet file, a Hub dataset ({', '.join(HUB_DATASETS)}), or '{SELF}' (text the model generates)",
    )
    p.add_argument("--calib-field", default="text", help="text field of .jsonl/.parquet calibration files (default text)")
    p.add_argument("--nsamples", type=int, help="calibration sequences (default 128)")
    p.add_argument("--seqlen", type=int, help="tokens per calibration sequence (default 2048)")
    p.add_argument("--seed", type=int, help="seed for the calibration windows (default 0)")
    p.add_argument("--targets", nargs="+", metavar="REGEX", help="prune only matrices whose name matches one of these regexes")
    p.add_argument("--ignore", nargs="+", metavar="REGEX", help="skip matrices whose name matches one of these regexes")
    p.add_argument(
        "--true-sequential",
        action="store_true",
        default=None,
        help="re-collect inputs after each group of matrices inside a layer ([q,k,v] -> o -> [gate,up] -> down)",
    )
    p.add_argument(
        "--layer-budget", choices=BUDGETS, help="how sparsity is spread over decoder layers: uniform (default) or owl (outlier-weighted)"
    )
    p.add_argument("--owl-m", type=float, help=f"OWL: {_help(OWLConfig, 'm')} (default {OWLConfig.m:g})")
    p.add_argument("--owl-lambda", type=float, help=f"OWL: {_help(OWLConfig, 'lam')} (default {OWLConfig.lam:g})")
    p.add_argument("--init", dest="opt:dsnot:init", help="dsnot: the method whose scores give the initial mask (same as --dsnot-init)")
    p.add_argument(
        "--compute-dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        default="auto",
        help="dtype of the calibration forward passes (default: the model's; statistics and pruning math are float32 either way)",
    )
    p.add_argument("--output", help="directory for the pruned model (safetensors, tokenizer, recipe.yaml, sparsity_report.json)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output directory")
    p.add_argument(
        "--format",
        default="dense",
        help="weights on disk: dense (default; plain transformers loads it), bitmask (compact, any sparsity) or N:M such as 2:4 (compact, needs that pattern); compact ones load with llmsparse",
    )
    p.add_argument(
        "--push-to-hub",
        metavar="REPO_ID",
        help="after saving, upload --output to this Hub repo (token from HF_TOKEN or huggingface-cli login)",
    )
    _push_flags(p)
    p.add_argument("--eval-ppl", metavar="TEXT", help="also measure perplexity before and after pruning on a text file or 'wikitext2'")
    p.add_argument("--ppl-seqlen", type=int, default=1024, help="perplexity window length (default 1024)")
    p.add_argument("--ppl-windows", type=int, help="perplexity windows to use (default: all)")
    _method_option_flags(p)

    e = sub.add_parser(
        "eval",
        help="perplexity and lm-eval tasks of a model (optionally against a baseline)",
        description="Evaluate a model as llmsparse runs it (pruned weights, activation sparsity): perplexity with the papers' protocol and/or lm-eval tasks.",
    )
    _common_model_flags(e)
    _eval_flags(e, ppl_aliases=True)
    e.add_argument("--compare", metavar="BASE", help="also evaluate BASE (e.g. the dense model) and print one table with relative recovery")
    e.add_argument("--output", help="directory for the results (evaluation.json, or comparison.json/.md with --compare)")

    c = sub.add_parser(
        "compare",
        help="dense vs sparse: several models on the same tasks, one table",
        description="Evaluate several models on the same tasks and perplexity; the first is the baseline. Saves comparison.json and comparison.md.",
    )
    c.add_argument("models", nargs="+", metavar="MODEL", help="baseline first, then the models to compare with it")
    c.add_argument("--labels", help="comma-separated row labels, one per model (default: the paths)")
    c.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"], help="weight dtype to load")
    c.add_argument("--device", default=None, help="compute device (default: cuda if available)")
    c.add_argument("--trust-remote-code", action="store_true", help="allow model code from the Hub to run (off by default)")
    _eval_flags(c)
    c.add_argument("--output", help="directory for comparison.json and comparison.md")
    c.add_argument("--update-card", action="store_true", help="put the table into the model card (README.md) of every compared llmsparse directory")

    w = sub.add_parser(
        "sweep",
        help="prune at several sparsities with several methods, evaluate and plot",
        description="Prune MODEL with each method at each sparsity, evaluate every point, and write sweep.json, sweep.md and sweep.png. Re-running resumes.",
    )
    _common_model_flags(w)
    w.add_argument("--methods", default="wanda", help="comma-separated pruning methods (default wanda)")
    w.add_argument("--sparsities", default="", help="comma-separated unstructured sparsities, e.g. 0.3,0.5,0.6,0.7")
    w.add_argument("--pattern", help="also prune each method with this N:M pattern, e.g. 2:4")
    w.add_argument("--calib", help="calibration data (a file, a Hub dataset or 'self')")
    w.add_argument("--calib-field", default="text", help="text field of .jsonl/.parquet calibration files")
    w.add_argument("--nsamples", type=int, default=PRUNE_DEFAULTS["nsamples"], help="calibration sequences (default 128)")
    w.add_argument("--seqlen", type=int, default=PRUNE_DEFAULTS["seqlen"], help="tokens per calibration sequence (default 2048)")
    w.add_argument("--seed", type=int, default=0, help="seed for the calibration windows (default 0)")
    w.add_argument("--layer-budget", choices=BUDGETS, default="uniform", help="uniform (default) or owl")
    _eval_flags(w)
    w.add_argument("--output", required=True, help="sweep directory (sweep.json, sweep.md, sweep.png); re-run to resume")

    h = sub.add_parser(
        "push",
        help="upload a saved sparse model to the Hugging Face Hub",
        description="Upload a directory written by llmsparse to the Hub.",
    )
    h.add_argument("directory", help="a directory written by llmsparse prune --output")
    h.add_argument("repo_id", help="Hub repository, e.g. you/model-wanda-50")
    _push_flags(h)

    a = sub.add_parser(
        "sparsify",
        help="training-free activation sparsity (TEAL, WINA, CHESS)",
        description="Calibrate activation thresholds and save them with the model.",
    )
    _common_model_flags(a)
    a.add_argument("--recipe", help="YAML recipe with sparsify_activations() arguments; flags given on the command line override it")
    a.add_argument("--method", choices=sorted(ACTIVATION_METHODS), help="activation sparsity method (default teal)")
    a.add_argument("--sparsity", type=float, help="fraction of activations zeroed, in [0, 1) (required, here or in the recipe)")
    a.add_argument(
        "--calib",
        help=f"calibration data: a file, a Hub dataset ({', '.join(HUB_DATASETS)}) or '{SELF}'; not needed by wina top-k with uniform allocation",
    )
    a.add_argument("--calib-field", default="text", help="text field of .jsonl/.parquet calibration files (default text)")
    a.add_argument("--nsamples", type=int, help="calibration sequences (default 16)")
    a.add_argument("--seqlen", type=int, help="tokens per calibration sequence (default 512)")
    a.add_argument("--seed", type=int, help="seed for the calibration windows (default 0)")
    a.add_argument(
        "--allocation",
        choices=ALLOCATIONS,
        help="uniform (default): every projection at --sparsity; greedy: TEAL's block-wise search (teal, wina)",
    )
    a.add_argument("--greedy-step", type=float, help="greedy: sparsity step of a q-sized projection (default 0.05)")
    a.add_argument("--greedy-samples", type=int, help="greedy: calibration sequences used to measure block error (default 4)")
    a.add_argument(
        "--greedy-error",
        choices=GREEDY_ERRORS,
        help="greedy: block-output error to minimise: relative (each token's squared error over its squared norm, default), "
        "mse (plain squared error), or reference (the TEAL reference's: channel L2 norms over the last quarter of positions)",
    )
    a.add_argument(
        "--sparsify-prefill",
        dest="prefill",
        choices=PREFILL,
        help="which prompt tokens are sparsified: all (default), none, or last-half; decoding always is",
    )
    a.add_argument("--wina-mode", choices=["topk", "threshold"], help="wina: top-k per token (default) or calibrated thresholds")
    a.add_argument("--output", help="directory for the model with its thresholds (activation_sparsity.safetensors)")
    a.add_argument("--overwrite", action="store_true", help="replace a non-empty --output directory")
    a.add_argument("--push-to-hub", metavar="REPO_ID", help="after saving, upload --output to this Hub repo")
    _push_flags(a)
    a.add_argument(
        "--eval-ppl",
        metavar="TEXT",
        help="also measure perplexity (dense and sparse) and the skipped-weight fraction on a text file or 'wikitext2'",
    )
    a.add_argument("--ppl-seqlen", type=int, default=1024, help="perplexity window length (default 1024)")
    a.add_argument("--ppl-windows", type=int, help="perplexity windows to use (default: all)")

    g = sub.add_parser(
        "generate",
        help="greedy generation at batch size 1, with tokens/s",
        description="Greedy decoding with timing; --sparse-decode uses the sparse kernel of activation-sparse models.",
    )
    _common_model_flags(g)
    g.add_argument("--prompt", required=True, help="prompt text")
    g.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate (default 64; EOS does not stop it)")
    g.add_argument(
        "--sparse-decode", action="store_true", help="skip the weight rows of zeroed inputs when decoding (activation-sparse models)"
    )

    sub.add_parser("methods", help="list pruning and activation sparsity methods and their options")
    return parser


def _recipe_settings(args: argparse.Namespace, kind: str, defaults: dict) -> dict:
    """Merge defaults < recipe < command-line flags into the keyword arguments of a ``kind`` recipe."""
    settings = dict(defaults)
    if args.recipe:
        settings.update(load_recipe(args.recipe, kind))
    for key in RECIPE_KINDS[kind]:
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    settings["method_options"] = dict(settings.get("method_options") or {})
    return settings


def _prune_settings(args: argparse.Namespace) -> dict:
    """prune() keyword arguments: defaults < recipe < flags, with the generated method-option flags."""
    settings = _recipe_settings(args, "prune", PRUNE_DEFAULTS)
    for dest, value in vars(args).items():
        if dest.startswith("opt:") and value is not None:
            _, method, option = dest.split(":")
            if method != settings["method"]:
                raise ValueError(f"--{method}-{option.replace('_', '-')} is an option of {method}, not of {settings['method']}")
            settings["method_options"][option] = value
    return settings


def _sparsify_settings(args: argparse.Namespace) -> dict:
    """sparsify_activations() keyword arguments: its defaults < recipe < flags; the sparsity must be given."""
    settings = _recipe_settings(args, "sparsify", SPARSIFY_DEFAULTS)
    if settings.get("sparsity") is None:
        raise ValueError("give the activation sparsity with --sparsity or in the recipe")
    if args.wina_mode:
        if settings["method"] != "wina":
            raise ValueError(f"--wina-mode is an option of wina, not of {settings['method']}")
        settings["method_options"]["mode"] = args.wina_mode
    return settings


def _run_recipe(settings: dict, report) -> dict:
    """The recipe to save with a run: its settings, with the calibration source the run resolved."""
    return dict(settings, calib=report.calibration["source"] if report.calibration else settings.get("calib"))


def cmd_prune(args: argparse.Namespace) -> int:
    settings = _prune_settings(args)
    # Check everything that can be checked before the (slow) model load.
    method = get_method(settings["method"], **settings["method_options"])
    _, pattern = resolve_target(settings.get("sparsity"), settings.get("pattern"))
    calib = settings.get("calib")
    if method.needs_calibration:
        check_calib(calib, f"method {method.name!r}")
    _, stored_pattern = parse_format(args.format)
    if stored_pattern is not None and stored_pattern != pattern:
        raise CheckpointError(
            f"--format {args.format} stores {stored_pattern} sparse matrices, but this run prunes {pattern}: use --pattern {args.format} or --format bitmask"
        )
    if args.push_to_hub and not args.output:
        raise ValueError("--push-to-hub uploads the saved model: give --output DIR as well")
    if args.output:
        check_output_dir(args.output, args.overwrite)

    model, tokenizer = load_model(args.model, args.dtype, args.trust_remote_code)
    device = resolve_device(args.device)
    if args.eval_ppl:
        model.to(device)
        dense = perplexity(model, tokenizer, args.eval_ppl, args.ppl_seqlen, args.ppl_windows)
    report = prune(model, tokenizer, device=device, compute_dtype=args.compute_dtype, text_field=args.calib_field, **settings)
    print(report.table())
    if args.eval_ppl:
        model.to(device)
        sparse = perplexity(model, tokenizer, args.eval_ppl, args.ppl_seqlen, args.ppl_windows)
        report.evaluation["perplexity"] = {"dense": dataclasses.asdict(dense), "sparse": dataclasses.asdict(sparse)}
        print(f"dense  {dense}\nsparse {sparse}")
    if args.output:
        recipe = _run_recipe(settings, report)
        out = save_pruned(
            model.to("cpu"), tokenizer, args.output, report, recipe, base_model=args.model, format=args.format, overwrite=args.overwrite
        )
        if report.storage:
            s = report.storage
            print(
                f"pruned matrices: {s['bytes_dense']:,} bytes dense -> {s['bytes_compressed']:,} bytes {s['format']} ({s['bytes_compressed'] / s['bytes_dense']:.3f}x)"
            )
        print(f"saved to {out}")
        if args.push_to_hub:
            print(f"pushed: {push(out, args.push_to_hub, private=args.private, revision=args.revision)}")
    return 0


def cmd_sparsify(args: argparse.Namespace) -> int:
    settings = _sparsify_settings(args)
    # Check everything that can be checked before the (slow) model load.
    method = check_request(
        settings["method"], settings["sparsity"], settings["allocation"], settings["prefill"], settings["method_options"], settings["greedy_error"]
    )
    if method.needs_calibration(settings["allocation"]):
        check_calib(settings.get("calib"), f"{method.name} with {settings['allocation']} allocation")
    if args.push_to_hub and not args.output:
        raise ValueError("--push-to-hub uploads the saved model: give --output DIR as well")
    if args.output:
        check_output_dir(args.output, args.overwrite)

    model, tokenizer = load_model(args.model, args.dtype, args.trust_remote_code)
    device = resolve_device(args.device)
    model.to(device)
    if args.eval_ppl:
        dense = perplexity(model, tokenizer, args.eval_ppl, args.ppl_seqlen, args.ppl_windows)
    report = sparsify_activations(model, tokenizer, device=device, text_field=args.calib_field, **settings)
    if args.eval_ppl:
        sparse = perplexity(model, tokenizer, args.eval_ppl, args.ppl_seqlen, args.ppl_windows)
        report.evaluation["perplexity"] = {"dense": dataclasses.asdict(dense), "sparse": dataclasses.asdict(sparse)}
        report.measured = measure_activation_sparsity(model, tokenizer, args.eval_ppl, args.ppl_seqlen, min(args.ppl_windows or 4, 4))
    print(report.table())
    if args.eval_ppl:
        print(f"dense  {dense}\nsparse {sparse}")
    if args.output:
        recipe = _run_recipe(settings, report)
        out = save_pruned(
            model.to("cpu"), tokenizer, args.output, recipe=recipe, base_model=args.model, overwrite=args.overwrite, activation=report, recipe_kind="sparsify"
        )
        print(f"saved to {out}")
        if args.push_to_hub:
            print(f"pushed: {push(out, args.push_to_hub, private=args.private, revision=args.revision)}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    model, tokenizer = load_model(args.model, args.dtype, args.trust_remote_code)
    model.to(resolve_device(args.device))
    if args.sparse_decode:
        if settings_of(model) is None:
            raise ValueError("--sparse-decode needs an activation-sparse model (made by llmsparse sparsify)")
        enable_sparse_decode(model)
    t = timed_generate(model, tokenizer, args.prompt, args.max_new_tokens)
    print(t.text)
    print(
        f"{t.new_tokens} tokens in {t.decode_s:.2f} s: {t.tokens_per_s:.2f} tokens/s (prompt: {t.prompt_tokens} tokens in {t.prefill_s:.2f} s)",
        file=sys.stderr,
    )
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    print(f"pushed: {push(args.directory, args.repo_id, private=args.private, revision=args.revision)}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    settings = _eval_settings(args)
    if args.compare:
        return _run_compare([args.compare, args.model], None, settings, args)
    check_source(args.model)
    if settings.tasks:
        check_tasks(settings.tasks, task_manager(settings.include_path or None, settings.tasks))
    model, tokenizer = load_model(args.model, args.dtype, args.trust_remote_code)
    model.to(resolve_device(args.device))
    row = evaluate_model(model, tokenizer, args.model, settings)
    if row.ppl:
        print(row.ppl)
    if row.tasks:
        print(row.tasks.table())
    if settings_of(model) is not None and settings.ppl:
        m = measure_activation_sparsity(model, tokenizer, settings.ppl, settings.ppl_seqlen, min(settings.ppl_windows or 4, 4))
        print(
            f"activation sparsity ({settings_of(model)['method']}): {m['overall']:.2%} of block weights skipped per token ({m['tokens']} tokens)"
        )
    if args.output:
        Path(args.output).mkdir(parents=True, exist_ok=True)
        (Path(args.output) / "evaluation.json").write_text(json.dumps(row.to_dict(), indent=2) + "\n")
    return 0


def _run_compare(models: list[str], labels: list[str], settings: EvalSettings, args: argparse.Namespace) -> int:
    result = compare(models, settings, labels, args.dtype, args.device, args.trust_remote_code)
    print(result.markdown())
    if args.output:
        for path in result.save(args.output):
            print(f"wrote {path}")
    if getattr(args, "update_card", False):
        for source in models:
            if (Path(source) / METADATA_FILE).is_file():
                print(f"updated {update_card(source, result.markdown())}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    labels = [x.strip() for x in args.labels.split(",")] if args.labels else None
    return _run_compare(args.models, labels, _eval_settings(args), args)


def cmd_sweep(args: argparse.Namespace) -> int:
    spec = SweepSpec(
        args.model, args.calib, args.nsamples, args.seqlen, args.seed, args.calib_field, args.layer_budget, dtype=args.dtype, evaluation=_eval_settings(args)
    )
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    sparsities = [float(x) for x in args.sparsities.split(",") if x.strip()]
    command = "llmsparse " + shlex.join(args.argv)
    run = sweep(spec, methods, sparsities, args.output, args.pattern, args.device, command)
    print(markdown(run))
    print(f"wrote {Path(args.output) / 'sweep.json'}, sweep.md, sweep.png")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    for name, cls in sorted(METHODS.items()):
        opts = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls.Config)) or "no options"
        data = "calibration data" if cls.needs_calibration else "no data"
        print(f"{name:<10} ({data}): {opts}")
    for name, cls in sorted(ACTIVATION_METHODS.items()):
        opts = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls.Config)) or "no options"
        print(f"{name:<10} (activation, allocation {'/'.join(cls.allocations)}): {opts}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return {
            "prune": cmd_prune,
            "sparsify": cmd_sparsify,
            "generate": cmd_generate,
            "eval": cmd_eval,
            "compare": cmd_compare,
            "sweep": cmd_sweep,
            "push": cmd_push,
            "methods": cmd_methods,
        }[args.command](args)
    except (ValueError, OSError, CalibrationError, HessianError) as err:
        print(f"llmsparse: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
