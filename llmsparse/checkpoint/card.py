"""The model card (``README.md``) written next to a pruned checkpoint, with Hub front matter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..formats import Format, get_format
from ..pruning.report import PruneReport
from .load import GEMMA_270M
from .recipe import dump_recipe

# Hub ids of the aliases load_model() knows, for the card's base_model field.
HUB_IDS = {GEMMA_270M: "google/gemma-3-270m"}
KNOWN_LICENSES = {"google/gemma-3-270m": "gemma"}
# The comparison table sits between these markers, so re-running a comparison replaces it.
COMPARISON_START, COMPARISON_END = "<!-- llmsparse:comparison -->", "<!-- /llmsparse:comparison -->"


def hub_id(base_model: str | None) -> str | None:
    """``base_model`` as a Hub id when it is one (``owner/name``, not a local path), else None."""
    if not base_model:
        return None
    base_model = HUB_IDS.get(base_model, base_model)
    if Path(base_model).exists() or base_model.startswith((".", "/", "~")) or base_model.count("/") != 1:
        return None
    return base_model


def base_license(base_model: str | None) -> str | None:
    """The base model's license: from its local README front matter, or for a known Hub id."""
    if base_model and (Path(base_model) / "README.md").is_file():
        text = (Path(base_model) / "README.md").read_text(encoding="utf-8")
        if text.startswith("---"):
            front = yaml.safe_load(text.split("---", 2)[1]) or {}
            if isinstance(front, dict) and front.get("license"):
                return str(front["license"])
    return KNOWN_LICENSES.get(hub_id(base_model) or "")


def _evaluation_table(evaluation: dict[str, Any]) -> list[str]:
    ppl = evaluation.get("perplexity")
    if not ppl:
        return []
    dense, sparse = ppl["dense"], ppl["sparse"]
    return [
        "## Evaluation",
        "",
        f"Perplexity on `{Path(sparse['source']).name}`, seqlen {sparse['seqlen']}, {sparse['windows']} windows:",
        "",
        "| model | perplexity |",
        "|---|---|",
        f"| dense (base) | {dense['ppl']:.2f} |",
        f"| sparse (this) | {sparse['ppl']:.2f} |",
        "",
    ]


def _activation_section(act) -> list[str]:
    lines = [
        "## Activation sparsity",
        "",
        f"{act.method.upper()} ({act.allocation} allocation), target {act.sparsity:g}; the paper's figure "
        f"({act.paper_definition}) is {act.paper_sparsity:.2%}.",
    ]
    if act.measured:
        m = act.measured
        lines.append(
            f"Measured: {m['overall']:.2%} of the block Linears' weights are skipped per token "
            f"({m['tokens']} tokens of `{Path(m['source']).name}`)."
        )
    cal = act.calibration
    if cal:
        lines.append(f"Thresholds calibrated on {cal['nsamples']} x {cal['seqlen']} tokens from `{cal['source']}` (seed {cal['seed']}).")
    lines += [
        f"Prompt tokens are sparsified: `{act.prefill}` (decoding always is).",
        "",
        "Activations are zeroed at inference by thresholds stored in `activation_sparsity.safetensors`; "
        "`llmsparse.load_model` restores them. Plain `transformers` ignores that file and runs the model densely.",
        "",
    ]
    return lines + _evaluation_table(act.evaluation)


def comparison_section(table: str) -> str:
    """The card section holding a dense-vs-sparse table (:meth:`llmsparse.evaluation.Comparison.markdown`)."""
    return f"{COMPARISON_START}\n## Dense vs sparse\n\n{table.rstrip()}\n{COMPARISON_END}\n"


def update_card(directory: str | Path, table: str) -> Path:
    """Put ``table`` into the model card of a saved model, replacing an earlier comparison."""
    path = Path(directory) / "README.md"
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no model card (README.md) to update")
    text = path.read_text(encoding="utf-8")
    section = comparison_section(table)
    if COMPARISON_START in text and COMPARISON_END in text:
        head, rest = text.split(COMPARISON_START, 1)
        text = head + section + rest.split(COMPARISON_END, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text, encoding="utf-8")
    return path


def model_card(
    report: PruneReport | None,
    recipe: dict | None,
    base_model: str | None,
    fmt: Format | str,
    activation=None,
    comparison: str | None = None,
    recipe_kind: str = "prune",
    load_in: str | None = None,
) -> str:
    """The README.md of a saved model stored in format ``fmt``; ``activation`` is an
    :class:`~llmsparse.activation.ActivationReport`, ``comparison`` a dense-vs-sparse Markdown table,
    ``load_in`` the bitsandbytes quantization (``4bit``/``8bit``) the model was loaded and saved with."""
    front: dict[str, Any] = {}
    base = hub_id(base_model)
    if base:
        front["base_model"] = base
        # The Hub's relation vocabulary (adapter, merge, quantized, finetune) has no "pruned": a compressed
        # derivative is listed under quantized, which is where users look for smaller variants.
        front["base_model_relation"] = "quantized"
    license_ = base_license(base_model)
    if license_:
        front["license"] = license_
    tags = ["llmsparse", "sparsity"]
    if report is not None:
        tags += ["pruned", report.method, report.pattern if report.pattern != "unstructured" else "unstructured-sparsity"]
    if activation is not None:
        tags += ["activation-sparsity", activation.method]
    front["tags"] = tags
    front["library_name"] = "transformers"
    front["pipeline_tag"] = "text-generation"

    done = " and ".join(([] if report is None else ["pruned"]) + ([] if activation is None else ["activation-sparsified"])) or "saved"
    title = f"{base_model or 'model'} {done} with llmsparse"
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "", f"# {title}", ""]
    if report is not None:
        lines += [
            f"{report.method} ({report.pattern}), target sparsity {report.sparsity:g}: {report.global_sparsity:.2%} of the weights "
            f"of {len(report.matrices)} decoder matrices are exactly zero. Embeddings and the LM head are dense.",
            "",
        ]
        cal = report.calibration
        lines.append(
            f"Calibration: {cal['nsamples']} x {cal['seqlen']} tokens from `{cal['source']}` (seed {cal['seed']})."
            if cal
            else "Calibration: none (data-free method)."
        )
        lines.append("")
    fmt = get_format(fmt) if isinstance(fmt, str) else fmt
    if load_in:
        lines += [
            f"Weights: stored quantized by bitsandbytes ({load_in}), as the run loaded them (`--load-in {load_in}`); "
            'loading needs bitsandbytes (`pip install "llmsparse[bnb]"`).',
            "",
        ]
    else:
        lines += [f"Weights: {fmt.note}.", ""]
    if report is not None and report.storage:
        s = report.storage
        lines += [
            f"Pruned matrices take {s['bytes_compressed']:,} bytes instead of {s['bytes_dense']:,} ({s['bytes_compressed'] / s['bytes_dense']:.3f}x).",
            "",
        ]
    lines += ["```python", "import llmsparse", 'model, tokenizer = llmsparse.load_model("THIS_DIRECTORY_OR_REPO")', "```", ""]
    if report is not None:
        lines += _evaluation_table(report.evaluation)
        lines += ["## Sparsity per decoder layer", "", "| layer | sparsity |", "|---|---|"]
        lines += [f"| {layer} | {value:.4f} |" for layer, value in report.layer_sparsity().items()]
        lines.append("")
    if activation is not None:
        lines += _activation_section(activation)
    if comparison:
        lines.append(comparison_section(comparison))
    if recipe:
        lines += [
            "## Recipe",
            "",
            f"Repeat the run with `llmsparse {recipe_kind} BASE_MODEL --recipe recipe.yaml{f' --load-in {load_in}' if load_in else ''}`:",
            "",
            "```yaml",
            dump_recipe(recipe, recipe_kind).rstrip(),
            "```",
            "",
        ]
    return "\n".join(lines)
