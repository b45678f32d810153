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


class InputMoments(InputNorms):
    """DSnoT's statistics: Wanda's ``norm2`` plus each input channel's mean and variance.

    ``seq_sum_j`` is the running mean over sequences of ``sum over tokens x_j`` (the reference's
    ``sum_metric_row``, which fixes the scale its ``update_threshold`` refers to); ``var_j`` is
    the variance of ``x_j`` over all calibration tokens (accumulated in float64).
    """

    def __init__(self, columns: int, device: torch.device | str = "cpu"):
        super().__init__(columns, device)
        self.seq_sum = torch.zeros(columns, dtype=torch.float32, device=device)
        self._sum = torch.zeros(columns, dtype=torch.float64, device=device)
        self._sumsq = torch.zeros(columns, dtype=torch.float64, device=device)
        self.tokens = 0

    def update(self, x: torch.Tensor) -> None:
        tokens, b = _tokens(x)
        n = self.sequences
        total = tokens.sum(0)
        self.seq_sum.mul_(n / (n + b)).add_(total, alpha=1 / (n + b))
        self._sum += total.double()
        self._sumsq += tokens.double().pow(2).sum(0)
        self.tokens += tokens.shape[0]
        super().update(x)

    @property
    def var(self) -> torch.Tensor:
        mean = self._sum / self.tokens
        return (self._sumsq / self.tokens - mean.pow(2)).clamp_min(0).float()


class CrossHessian(Hessian):
    """:class:`Hessian` of the pruned model's inputs ``x`` plus ``G = (2/N) * sum x x_dᵀ`` with the dense model's ``x_d``.

    Reconstruction toward the dense layer's outputs on the dense model's inputs needs both (see
    :mod:`llmsparse.core.solvers`); the engine feeds each token's two inputs together (``update(x, x_d)``).
    """

    paired = True

    def __init__(self, columns: int, device: torch.device | str = "cpu"):
        super().__init__(columns, device)
        self.G = torch.zeros(columns, columns, dtype=torch.float32, device=device)

    def update(self, x: torch.Tensor, dense: torch.Tensor | None = None) -> None:
        tokens, b = _tokens(x)
        dense_tokens, _ = _tokens(dense)
        n = self.sequences
        self.G.mul_(n / (n + b)).addmm_(tokens.t(), dense_tokens, alpha=2 / (n + b))
        super().update(x)


class Bundle:
    """The statistics of one matrix input for the method and for each pass after it (one object per shared input).

    ``method`` is the method's own statistics (or None), ``passes`` one object per pass; a pass may
    reuse the method's object (both need the same Hessian), which is then updated once.
    """

    def __init__(self, method, passes: list):
        self.method = method
        self.passes = passes
        unique = {id(s): s for s in [method, *passes] if s is not None}
        self._all = list(unique.values())
        self.paired = any(getattr(s, "paired", False) for s in self._all)

    def update(self, x: torch.Tensor, dense: torch.Tensor | None = None) -> None:
        for s in self._all:
            if getattr(s, "paired", False):
                s.update(x, dense)
            else:
                s.update(x)
