"""ALPS (Meng et al., NeurIPS 2024): mask and weights together by ADMM with a growing penalty, then PCG.

Per matrix, ``min ||X Ŵᵀ − X Wᵀ||² + λ₂||Ŵ − W||²`` subject to the sparsity pattern, with
``λ₂ = lambda2 · mean(diag H)`` (the reference code's choice) and input columns rescaled so ``H``
has a unit diagonal. With ``H = Q diag(L) Qᵀ`` factored once per input (:func:`factor`), ADMM runs from ``V = 0``,
``D = P(W)``:

    B = (H W − V + ρD)(H + ρI)⁻¹,   D = P(B + V/ρ),   V += ρ(B − D)

where ``P`` keeps the largest magnitudes: the requested count over the whole matrix
(unstructured; ALPS's "k per matrix"), or M−N of every M consecutive inputs (N:M; this package
counts *pruned* weights, the reference counts kept ones). Every 3 iterations ρ grows by 1.3, 1.2
or 1.1 when more than 10%, 0.5% or any of the k kept positions changed, and the loop stops once
ρ has grown and the support no longer moves (at most ``max_iter`` iterations, ρ ≤ 1e6). Then the
weights on the final support are re-solved by preconditioned conjugate gradients
(:func:`llmsparse.core.solvers.pcg`). The reference's ignored ``--rho`` flag and never-firing CG
stopping test are not reproduced.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core import masks
from ..core.hessian import reconstruction_error
from ..core.masks import Pattern
from ..core.solvers import Problem, pcg
from ..core.stats import Hessian
from ..settings import Settings, at_least, in_range, setting
from .base import Method, PruneResult, register


def projection(x: torch.Tensor, sparsity: float, pattern: Pattern) -> torch.Tensor:
    """Pruned-entry mask of ``P``: the smallest magnitudes over the matrix, or N of every M per row."""
    return masks.select(x.abs(), sparsity, pattern, per_row=False)


@dataclass
class Factors:
    """The scaled, ridged Hessian of one input and its eigendecomposition (float32), shared by the matrices that read it."""

    Hs: torch.Tensor
    L: torch.Tensor
    Q: torch.Tensor
    n: torch.Tensor


def factor(H: torch.Tensor, lambda2: float) -> Factors:
    """``H + λ₂ mean(diag H) I`` rescaled to a unit diagonal and its ``eigh``, in float64 as the reference does (a
    float32 ``eigh`` was tried: faster alone, but ADMM then ran more iterations and the result was worse), kept in float32."""
    H = H.double()
    H = H + lambda2 * torch.diagonal(H).mean() * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    n = torch.diagonal(H).sqrt()
    Hs = H / n.unsqueeze(0) / n.unsqueeze(1)
    L, Q = torch.linalg.eigh(Hs)
    return Factors(Hs.float(), L.float(), Q.float(), n.float())


def alps_prune(
    weight: torch.Tensor,
    H: torch.Tensor | Factors,
    sparsity: float,
    pattern: Pattern,
    rho0: float = 0.1,
    max_iter: int = 300,
    pcg_iters: int = 10,
    lambda2: float = 0.01,
) -> tuple[torch.Tensor, int]:
    """ALPS on one ``[out, in]`` matrix (``H``: the input Hessian, or its :func:`factor`); returns ``(pruned weight, ADMM iterations run)``."""
    f = H if isinstance(H, Factors) else factor(H, lambda2)
    Hs, L, Q, n = f.Hs, f.L, f.Q, f.n
    W = weight.float() * n.unsqueeze(0)
    target = W @ Hs  # rows of H W
    pruned = projection(W, sparsity, pattern)
    D = W.masked_fill(pruned, 0)
    V = torch.zeros_like(W)
    kept = int((~pruned).sum())
    rho, last, iterations = rho0, pruned, 0
    B = W
    for it in range(1, max_iter + 1):
        iterations = it
        B = ((target - V + rho * D) @ Q) / (L + rho).unsqueeze(0) @ Q.t()
        pruned = projection(B + V / rho, sparsity, pattern)
        D = (B + V / rho).masked_fill(pruned, 0)
        V = V + rho * (B - D)
        if it % 3 == 0:
            changes = int((pruned != last).sum())  # positions that entered or left the support
            last = pruned
            if changes == 0 and rho > rho0:
                break
            rho = min(1e6, rho * (1.3 if changes > 0.1 * kept else 1.2 if changes > 0.005 * kept else 1.1 if changes >= 1 else 1.0))
    support = ~projection(B, sparsity, pattern)
    x = pcg(Problem(Hs, target, support, n), (B * support), pcg_iters)
    return (x / n.unsqueeze(0)).masked_fill(~support, 0), iterations


@dataclass
class ALPSConfig(Settings):
    rho0: float = setting(0.1, "initial ADMM penalty (grows on the schedule, which stops at 1e6)", check=in_range(0, 1e6, low_open=True))
    max_iter: int = setting(300, "most ADMM iterations", check=at_least(1))
    pcg_iters: int = setting(10, "conjugate-gradient steps on the final support", check=at_least(0))
    lambda2: float = setting(0.01, "ridge toward the dense weights, times mean(diag H)", check=at_least(0))


@register
class ALPS(Method):
    name = "alps"
    Config = ALPSConfig

    def new_stats(self, columns, device):
        return Hessian(columns, device)

    def prune(self, weight, stats, sparsity, pattern, name=""):
        c = self.config
        if getattr(self, "_factored", (None,))[0] is not stats:  # q/k/v (and gate/up) read one input: factor it once
            self._factored = (stats, factor(stats.H, c.lambda2))
        new, iterations = alps_prune(weight, self._factored[1], sparsity, pattern, c.rho0, c.max_iter, c.pcg_iters, c.lambda2)
        return PruneResult(new, error=reconstruction_error(weight.float(), new, stats.H), notes={"admm_iters": iterations})
