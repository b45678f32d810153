"""Calibration statistics of a matrix's inputs, accumulated in float32 while the engine runs.

The engine feeds every stats object the input ``x`` of its matrix (``[..., in_features]``)
once per calibration forward. Matrices that read the same tensor (q/k/v, gate/up) share one
object, so each statistic is computed once per input. Running averages follow the reference
implementations: with ``n`` sequences seen and a batch of ``b``, ``S = S * n/(n+b) + new/(n+b)``.
"""

from __future__ import annotations

import torch


def _tokens(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``x`` as float32 ``[tokens, in_features]`` and the number of sequences it holds."""
    sequences = x.shape[0] if x.dim() > 2 else 1
    return x.reshape(-1, x.shape[-1]).float(), sequences


class InputNorms:
    """Wanda's ``norm2_j``: running mean over sequences of ``sum over tokens x_j**2``."""

    def __init__(self, columns: int, device: torch.device | str = "cpu"):
        self.norm2 = torch.zeros(columns, dtype=torch.float32, device=device)
        self.sequences = 0

    def update(self, x: torch.Tensor) -> None:
        tokens, b = _tokens(x)
        n = self.sequences
        self.norm2.mul_(n / (n + b)).add_(tokens.pow(2).sum(0), alpha=1 / (n + b))
        self.sequences = n + b


class Hessian:
    """SparseGPT's ``H = (2/N) * sum over tokens x x^T`` (N = sequences seen), in float32.

    Only the block upper triangle is accumulated (``H`` is symmetric; torch has no SYRK), which
    saves up to half the multiply-adds for wide inputs; :attr:`H` mirrors it when read.
    """

    block = 256

    def __init__(self, columns: int, device: torch.device | str = "cpu"):
        self._upper = torch.zeros(columns, columns, dtype=torch.float32, device=device)
        self._full: torch.Tensor | None = None
        self.sequences = 0

    def update(self, x: torch.Tensor) -> None:
        tokens, b = _tokens(x)
        n = self.sequences
        for i in range(0, tokens.shape[1], self.block):
            rows = self._upper[i : i + self.block, i:]
            rows.mul_(n / (n + b)).addmm_(tokens[:, i : i + self.block].t(), tokens[:, i:], alpha=2 / (n + b))
        self.sequences = n + b
        self._full = None

    @property
    def H(self) -> torch.Tensor:
        if self._full is None:
            self._full = self._upper.triu() + self._upper.triu(1).t()
        return self._full
