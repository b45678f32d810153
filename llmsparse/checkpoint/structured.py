"""Saving a structurally pruned model: an ordinary dense Hugging Face directory, smaller, plus what was removed.

The weights are the edited model's own (narrower FFN matrices, fewer blocks, zeroed attention
modules) and ``config.json`` says so (width field, ``num_hidden_layers``, ``layer_types``,
``llmsparse_structured``), so stock ``transformers`` loads it as the same function. The directory
is claimed, staged and published like every llmsparse output (:mod:`llmsparse.checkpoint.outdir`):
nothing is written when the run fails. ``structured_report.json``, ``recipe.yaml``, a model card
and ``llmsparse.json`` (written last: it marks a complete output) go with it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from ..structured.base import StructuredReport
from .outdir import claim, publish, staging
from .ownership import METADATA_FILE, follow_umask, output_files
from .save import versions, write_errors

REPORT_FILE = "structured_report.json"
RECIPE_FILE = "recipe.yaml"
CARD_FILE = "README.md"


def model_card(report: StructuredReport, recipe: dict[str, Any] | None, base_model: str | None) -> str:
    """The README.md: what was removed, the exact parameter counts, how to load it, the recipe."""
    front = {"tags": ["llmsparse", "structured-pruning", report.method], "library_name": "transformers", "pipeline_tag": "text-generation"}
    if base_model:
        front["base_model"] = base_model
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "", f"# {base_model or 'model'} pruned structurally with llmsparse ({report.method})", ""]
    lines += [
        f"{report.decoder_before - report.decoder_after:,} of {report.decoder_before:,} decoder-block parameters removed "
        f"({report.achieved:.2%}, target {report.sparsity:g}); the whole model went from {report.total_before:,} to {report.total_after:,} parameters.",
        "",
        f"* FFN width: {report.width_before} -> {report.width_after} neurons in every block.",
        f"* Decoder blocks removed (original indices): {report.removed_blocks or 'none'}.",
        f"* Attention modules removed (block indices of this model): {report.removed_attention or 'none'}. Stock transformers has no "
        "per-layer switch to drop attention, so these modules are stored with all-zero weights: their output is exactly 0, the "
        "function of a removed attention, at their dense size on disk. `llmsparse.load_model` skips computing them when no KV cache is used.",
        "",
    ]
    cal = report.calibration
    lines += [f"Calibration: {cal['nsamples']} x {cal['seqlen']} tokens from `{cal['source']}` (seed {cal['seed']})." if cal else "Calibration: none.", ""]
    lines += ["```python", "from transformers import AutoModelForCausalLM", 'model = AutoModelForCausalLM.from_pretrained("THIS_DIRECTORY")', "```", ""]
    ppl = report.evaluation.get("perplexity")
    if ppl:
        lines += ["| | perplexity |", "|---|---|", f"| dense | {ppl['dense']['ppl']:.3f} |", f"| pruned | {ppl['sparse']['ppl']:.3f} |", ""]
    if recipe:
        lines += ["## Recipe", "", "Repeat the run with `llmsparse prune BASE_MODEL --recipe recipe.yaml`:", "", "```yaml", yaml.safe_dump(recipe, sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)


def save_structured(
    model,
    tokenizer,
    output_dir: str | Path,
    report: StructuredReport,
    recipe: dict[str, Any] | None = None,
    base_model: str | None = None,
    overwrite: bool = False,
    inputs: Iterable[str | Path | None] = (),
) -> Path:
    """Write the pruned model, tokenizer, report, recipe, card and ``llmsparse.json`` into ``output_dir`` (all or nothing)."""
    inputs = [*inputs, getattr(model, "name_or_path", None) or None]
    with claim(output_dir, overwrite, inputs) as out, staging(out) as tmp, write_errors(out):
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        report.save_json(tmp / REPORT_FILE)
        if recipe:
            (tmp / RECIPE_FILE).write_text(yaml.safe_dump(recipe, sort_keys=False))
        (tmp / CARD_FILE).write_text(model_card(report, recipe, base_model), encoding="utf-8")
        metadata = {"format": "dense", "base_model": base_model, "versions": versions(), "structured": report.to_dict(), "recipe": recipe, "recipe_kind": "prune"}
        metadata["files"] = [*output_files(tmp), METADATA_FILE]  # what --overwrite may replace later
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=str) + "\n")  # last: marks a complete output
        follow_umask(tmp)
        publish(tmp, out, overwrite, inputs)
    return Path(output_dir)
