"""What a pruning run did: per-matrix sparsity and reconstruction error, global sparsity, timings."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class MatrixReport:
    name: str
    layer: int
    shape: list[int]  # [out_features, in_features]
    target: float  # sparsity asked of this matrix
    zeros: int  # exact zeros in the stored weight after pruning
    error: float | None = None  # relative reconstruction error on calibration inputs, where the method has one
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel


@dataclass
class PruneReport:
    method: str
    options: dict[str, Any]
    pattern: str
    sparsity: float
    matrices: list[MatrixReport]
    calibration: dict[str, Any] | None = None
    layer_budget: dict[str, Any] | None = None  # non-uniform budgets: kind, options, per-layer targets (and OWL outlier ratios)
    seconds: dict[str, float] = field(default_factory=dict)
    storage: dict[str, Any] = field(default_factory=dict)  # compact saves: format, bytes_dense, bytes_compressed of the pruned matrices
    evaluation: dict[str, Any] = field(default_factory=dict)  # e.g. {"perplexity": {"dense": ..., "sparse": ...}}
    peak_memory: int | None = None  # peak resident memory of the process (bytes) when pruning ended
    compute_dtype: str | None = None  # the dtype the calibration forwards ran in (``auto`` resolved on this machine)

    @property
    def global_sparsity(self) -> float:
        """Fraction of exact zeros over all pruned matrices, weighted by size."""
        total = sum(m.numel for m in self.matrices)
        return sum(m.zeros for m in self.matrices) / total if total else 0.0

    def layer_sparsity(self) -> dict[int, float]:
        """Realised sparsity of each decoder layer's pruned matrices."""
        zeros: dict[int, int] = {}
        numel: dict[int, int] = {}
        for m in self.matrices:
            zeros[m.layer] = zeros.get(m.layer, 0) + m.zeros
            numel[m.layer] = numel.get(m.layer, 0) + m.numel
        return {layer: zeros[layer] / numel[layer] for layer in sorted(zeros)}

    def table(self) -> str:
        """A plain-text table: one row per matrix, then the global sparsity."""
        width = max([len(m.name) for m in self.matrices] + [6])
        lines = [f"{'matrix':<{width}}  {'shape':>11}  {'target':>6}  {'sparsity':>8}  {'rel.err':>8}  notes"]
        for m in self.matrices:
            err = f"{m.error:8.4f}" if m.error is not None else f"{'-':>8}"
            notes = ", ".join(f"{k}={v}" for k, v in m.notes.items())
            lines.append(
                f"{m.name:<{width}}  {m.shape[0]:>5}x{m.shape[1]:<5}  {m.target:6.3f}  {m.sparsity:8.4f}  {err}  {notes}".rstrip()
            )
        if self.layer_budget:
            lines.append(self.budget_table())
        lines.append(
            f"{self.method} {self.pattern}: global sparsity {self.global_sparsity:.4f} over {len(self.matrices)} matrices "
            f"(target {self.sparsity:g}); {self.seconds.get('prune', 0):.1f} s"
        )
        return "\n".join(lines)

    def summary(self) -> str:
        """A few lines: the global figure, the realised sparsity per decoder layer (one line, or one line per
        layer with a non-uniform budget), the calibration error, and where the full table is."""
        layers = self.layer_sparsity()
        lines = [
            f"{self.method} {self.pattern}: global sparsity {self.global_sparsity:.4f} over {len(self.matrices)} matrices "
            f"in {len(layers)} layers (target {self.sparsity:g}); {self.seconds.get('prune', 0):.1f} s"
        ]
        if self.layer_budget:
            lines.append(self.budget_table())
        else:
            lines.append("sparsity per layer: " + " ".join(f"{v:.3f}" for v in layers.values()))
        errors = [m for m in self.matrices if m.error is not None]
        if errors:
            worst = max(errors, key=lambda m: m.error)
            mean = sum(m.error for m in errors) / len(errors)
            lines.append(f"relative reconstruction error: mean {mean:.4f}, max {worst.error:.4f} ({worst.name})")
        notes = sorted({k for m in self.matrices for k in m.notes})
        if self.compute_dtype:
            lines.append(f"calibration forwards in {self.compute_dtype}")
        if self.peak_memory is not None:
            lines.append(f"peak resident memory: {self.peak_memory / 2**30:.2f} GiB")
        lines.append("per-matrix table: sparsity_report.json, or --verbose" + (f" (notes: {', '.join(notes)})" if notes else ""))
        return "\n".join(lines)

    def budget_table(self) -> str:
        """Per decoder layer: the budget's target, the realised sparsity (and OWL's outlier ratio)."""
        budget = self.layer_budget or {}
        ratios = budget.get("outlier_ratio", {})
        lines = [f"layer budget {budget.get('budget')}: {'layer':>5}  {'outliers%':>9}  {'target':>6}  {'sparsity':>8}"]
        for layer, realised in self.layer_sparsity().items():
            ratio = f"{ratios[layer]:9.3f}" if layer in ratios else f"{'-':>9}"
            target = budget.get("sparsity", {}).get(layer, self.sparsity)
            lines.append(f"{'':>{len('layer budget ' + str(budget.get('budget')) + ':')}} {layer:>5}  {ratio}  {target:6.3f}  {realised:8.4f}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["global_sparsity"] = self.global_sparsity
        data["layer_sparsity"] = self.layer_sparsity()
        for m, row in zip(self.matrices, data["matrices"]):
            row["sparsity"] = m.sparsity
        return data

    def save_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
