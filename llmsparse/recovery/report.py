"""What a recovery run did: trained share, steps, losses, zeros before and after, time and memory."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RecoverReport:
    groups: list[str]
    trainable: int  # parameters the optimizer stepped (adapters + norms/biases)
    parameters: int  # parameters of the model (before adapters)
    steps: int  # optimizer steps taken
    tokens: int  # training tokens seen
    best_step: int  # the step whose adapters were kept (lowest validation loss; 0 = the model as given)
    stopped_early: bool
    train_loss: list[tuple[int, float]]  # (step, training loss of that step)
    val_loss: list[tuple[int, float]]  # (step, held-out validation loss)
    zeros_before: int  # exact zeros in the decoder matrices before training
    zeros_after: int  # ... after merging
    matrices: int  # decoder matrices
    settings: dict[str, Any]
    seconds: float
    peak_memory: int
    evaluation: dict[str, Any] = field(default_factory=dict)

    @property
    def calibration(self) -> None:
        """No calibration set: the recipe's ``data`` names the training text (what saving a run reads)."""
        return None

    @property
    def share(self) -> float:
        return self.trainable / self.parameters

    def summary(self) -> str:
        first, best = self.val_loss[0][1], dict(self.val_loss)[self.best_step]
        return (
            f"recovery: trained {','.join(self.groups)}: {self.trainable:,} parameters ({self.share:.3%} of {self.parameters:,}); "
            f"{self.steps} steps, {self.tokens:,} tokens in {self.seconds:.0f} s{' (stopped early)' if self.stopped_early else ''}\n"
            f"validation loss {first:.4f} -> {best:.4f} (kept step {self.best_step}); "
            f"zeros in {self.matrices} decoder matrices: {self.zeros_before:,} before, {self.zeros_after:,} after; "
            f"peak resident memory {self.peak_memory / 2**30:.2f} GiB"
        )

    def table(self) -> str:
        train = dict(self.train_loss)
        lines = ["step  train_loss  val_loss"]
        lines += [f"{s:5d}  {train.get(s, float('nan')):10.4f}  {v:8.4f}" for s, v in self.val_loss]
        return self.summary() + "\n" + "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"share": self.share}

    def save_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def card_section(self) -> str:
        """Markdown for the model card."""
        return (
            "\n## Recovery (PERP)\n\n"
            f"After pruning, {','.join(self.groups)} were trained ({self.trainable:,} parameters, {self.share:.3%} of the model) "
            f"for {self.steps} steps ({self.tokens:,} tokens of `{self.settings.get('data')}`); the low-rank update was "
            "multiplied by each weight's mask, so every pruned weight is still exactly zero "
            f"({self.zeros_before:,} zeros before, {self.zeros_after:,} after). "
            f"Held-out validation loss {self.val_loss[0][1]:.4f} -> {dict(self.val_loss)[self.best_step]:.4f}.\n"
        )
