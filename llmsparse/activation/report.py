"""What an activation sparsifier did: targets per layer and role, the paper's figure, and the measured one."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.text import eval_text
from ..errors import EvaluationError, SettingsError
from .hooks import counting, settings_of, sites_of
from .sites import Block, find_blocks


def skipped_fractions(block: Block, zeros: dict[str, float]) -> dict[str, float]:
    """Fraction of each block Linear's weight that a token does not need, from zero fractions per site role.

    A Linear skips the rows of its zero inputs; CHESS's ``up`` also skips the outputs whose
    activation was dropped (they are multiplied by zero).
    """
    out = {}
    for role in block.linears:
        if role in zeros:
            out[role] = zeros[role]
        elif role == "up" and "act" in zeros:
            out[role] = zeros["act"]
        else:
            out[role] = 0.0
    return out


def common_sparsity(blocks: list[Block], per_block: list[dict[str, float]]) -> float:
    """The common figure: parameter-weighted fraction of all block Linears' weights skipped per token."""
    total = sum(size for b in blocks for size in b.sizes.values())
    return sum(frac[role] * b.sizes[role] for b, frac in zip(blocks, per_block) for role in b.sizes) / total


@dataclass
class ActivationReport:
    method: str
    sparsity: float  # the requested target
    allocation: str  # uniform, greedy, or explicit (one dict of role sparsities per layer)
    prefill: str
    options: dict[str, Any]
    calibration: dict[str, Any] | None
    layers: list[dict[str, float]]  # per layer: role -> calibrated target
    paper_sparsity: float
    paper_definition: str
    measured: dict[str, Any] | None = None  # from measure_activation_sparsity on evaluation data
    greedy_paths: list[list[tuple[str, float]]] | None = None  # per layer: the greedy search's (role, increase) steps
    greedy_error: str | None = None  # the block error the greedy search minimised
    evaluation: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def table(self) -> str:
        roles = sorted(
            {r for layer in self.layers for r in layer}, key=lambda r: list(self.layers[0]).index(r) if r in self.layers[0] else 99
        )
        lines = [
            f"{self.method} activation sparsity {self.sparsity:g} ({self.allocation} allocation"
            + (f" on {self.greedy_error} block error" if self.greedy_error else "")
            + f", prefill: {self.prefill})",
            f"paper figure ({self.paper_definition}): {self.paper_sparsity:.2%}",
        ]
        if self.measured:
            m = self.measured
            lines.append(
                f"measured common figure (weights skipped per token, {m['tokens']} tokens of {Path(m['source']).name}): {m['overall']:.2%}"
            )
        lines.append("layer  " + "  ".join(f"{r:>6}" for r in roles))
        for i, layer in enumerate(self.layers):
            lines.append(f"{i:>5}  " + "  ".join(f"{layer[r]:>6.3f}" if r in layer else f"{'-':>6}" for r in roles))
        return "\n".join(lines)

    def summary(self) -> str:
        """The table is already one line per layer: the summary is the table."""
        return self.table()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


@torch.no_grad()
def measure_activation_sparsity(model: nn.Module, tokenizer, source: str, seqlen: int = 1024, windows: int = 4) -> dict:
    """The common figure on evaluation text: parameter-weighted fraction of block-Linear weights skipped per token.

    Runs ``windows`` windows of ``seqlen`` tokens from ``source`` through the model as it is
    configured (including its prefill convention) and counts the zeroed entries at every site.
    """
    if settings_of(model) is None:
        raise SettingsError("the model has no activation sparsity attached (run sparsify_activations or load a sparsified model)")
    ids = tokenizer(eval_text(source), return_tensors="pt").input_ids[0]
    count = min(windows, ids.numel() // seqlen)
    if count < 1:
        raise EvaluationError(f"{source} has {ids.numel()} tokens, fewer than one window of {seqlen}")
    device = next(model.parameters()).device
    names = {name: site.role for name, site in sites_of(model).items()}
    with counting(model) as counts:
        for w in tqdm(range(count), desc="measuring activation sparsity", leave=False):
            model(ids[w * seqlen : (w + 1) * seqlen].unsqueeze(0).to(device), use_cache=False)
    blocks = find_blocks(model)
    per_block, by_role = [], {}
    for block in blocks:
        members = {block.names.get(r) or block.act_name: r for r in [*block.linears, "act"]}
        zeros = {names[n]: counts[n][0] / counts[n][1] for n in members if n in counts and counts[n][1]}
        per_block.append(skipped_fractions(block, zeros))
        for role, frac in zeros.items():
            by_role.setdefault(role, []).append(frac)
    return {
        "overall": common_sparsity(blocks, per_block),
        "by_role": {role: sum(v) / len(v) for role, v in by_role.items()},
        "source": str(source),
        "seqlen": seqlen,
        "windows": count,
        "tokens": count * seqlen,
    }
