"""Optimal weights on a fixed mask (the math; the pass is :class:`llmsparse.pruning.passes.Reconstruction`): the layer least-squares problem restricted to the kept weights.

For one ``[out, in]`` matrix with pruned-model inputs ``X_p`` and target ``X_d Wᵀ`` (``X_d = X_p``
for ``target='pruned'``; the dense model's inputs for ``target='dense'``), each row ``w`` solves

    min over ŵ (zero off the mask)   ||X_p ŵ − X_d w||² + λ ||D^½ (ŵ − w)||²,    D = diag(H),

whose normal equations on the row's support S are ``A_SS ŵ_S = b_S`` with ``A = H + λD`` and
``b = G w + λ D w`` (``H = X_pᵀX_p``, ``G = X_pᵀX_d``; rows stacked: ``B = W Gᵀ + λ W D``). The small
ridge toward the dense weights keeps the problem well posed where the calibration data span too
few directions; a kept weight of a dead input (``H_jj = 0``, no signal at all) keeps its dense value. Both solvers first rescale input columns by ``n_j = sqrt(H_jj)`` so ``H`` has a
unit diagonal (``|W_ij|·n_j`` is then Wanda's score), as the ADMM and ALPS references do:

* :func:`pcg`: conjugate gradients on every row at once, each on its own support, with the
  diagonal preconditioner. Started from the method's weights, each step lowers the objective.
* :func:`admm`: the ADMM iteration of Boža (2024) with one factorisation per matrix and fixed ρ:
  ``W = (B + ρ(Z − U))(A + ρI)⁻¹; Z = (W + U)⊙M; U += W − Z``, then a few PCG steps on the support.

ADMM alone need not decrease the objective monotonically; :func:`solve` therefore keeps the better
of the warm start and ADMM's result before the PCG polish, so no solver ever returns weights worse
than the ones it was given. All math is in float32 by default (float64 on request).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SOLVERS = ("admm", "pcg")
#: Solver iterations when none are given: the ADMM reference's 20 (plus the PCG polish), and PCG's.
DEFAULT_ITERS = {"admm": 20, "pcg": 30}


@dataclass
class Problem:
    """The scaled least-squares problem of one matrix: ``A`` ``[in, in]``, ``B`` ``[out, in]``, ``keep`` mask, scale ``n``."""

    A: torch.Tensor
    B: torch.Tensor
    keep: torch.Tensor
    n: torch.Tensor

    def objective(self, W: torch.Tensor) -> torch.Tensor:
        """``½ tr(W A Wᵀ) − tr(B Wᵀ)`` per row, for scaled weights (the constant part of the loss dropped)."""
        return 0.5 * ((W @ self.A) * W).sum(1) - (self.B * W).sum(1)


def problem(weight: torch.Tensor, keep: torch.Tensor, H: torch.Tensor, G: torch.Tensor | None, damp: float, dtype=torch.float32) -> Problem:
    """Set up the scaled problem for ``weight`` (``[out, in]``, dense target weights), ``keep`` (True = kept),
    input Hessian ``H``, cross term ``G`` (None: the target is the pruned model's own inputs) and ridge ``damp`` (λ)."""
    H = H.to(dtype)
    W = weight.to(dtype)
    diag = torch.diagonal(H).clamp_min(0)
    n = diag.sqrt() + 1e-8  # dead inputs (H_jj = 0) keep scale ~0: their weights get no data and follow the ridge
    Hs = H / n.unsqueeze(0) / n.unsqueeze(1)
    Gs = Hs if G is None else G.to(dtype) / n.unsqueeze(1) / n.unsqueeze(0)
    eye = torch.eye(H.shape[0], dtype=dtype, device=H.device)
    A = Hs + damp * eye
    Ws = W * n.unsqueeze(0)
    B = Ws @ Gs.t() + damp * Ws
    return Problem(A, B, keep.to(H.device), n)


def pcg(p: Problem, start: torch.Tensor, iters: int, tol: float | None = None) -> torch.Tensor:
    """Preconditioned conjugate gradients on each row's support, from ``start`` (scaled, zero off the mask).

    Stops early once every row's residual is below ``tol`` (default: 10 ulp of the dtype) times its right-hand side.
    """
    tol = 10 * torch.finfo(start.dtype).eps if tol is None else tol
    M = p.keep.to(start.dtype)
    d = torch.diagonal(p.A).unsqueeze(0)
    x = start * M
    r = (p.B - x @ p.A) * M
    z = r / d
    q = z.clone()
    rz = (r * z).sum(1)
    scale = (p.B * M).norm(dim=1).clamp_min(1e-30)
    tiny = torch.finfo(start.dtype).tiny
    for _ in range(iters):
        if bool((r.norm(dim=1) <= tol * scale).all()):
            break
        Aq = (q @ p.A) * M
        curvature = (q * Aq).sum(1)
        alpha = torch.where(curvature > tiny, rz / curvature.clamp_min(tiny), torch.zeros_like(rz))
        x = x + alpha.unsqueeze(1) * q
        r = r - alpha.unsqueeze(1) * Aq
        z = r / d
        rz_new = (r * z).sum(1)
        beta = torch.where(rz > tiny, rz_new / rz.clamp_min(tiny), torch.zeros_like(rz))
        q = z + beta.unsqueeze(1) * q
        rz = rz_new
    return x


def admm(p: Problem, start: torch.Tensor, iters: int, rho: float = 1.0) -> torch.Tensor:
    """Boža's fixed-ρ ADMM from ``start`` (scaled); returns ``Z``, exactly zero off the mask."""
    M = p.keep.to(start.dtype)
    eye = torch.eye(p.A.shape[0], dtype=p.A.dtype, device=p.A.device)
    inverse = torch.linalg.inv(p.A + rho * eye)
    W, U = start.clone(), torch.zeros_like(start)
    Z = W * M
    for _ in range(iters):
        W = (p.B + rho * (Z - U)) @ inverse
        Z = (W + U) * M
        U = U + W - Z
    return Z


def solve(p: Problem, start: torch.Tensor, solver: str = "pcg", iters: int = 30, polish: int = 10) -> torch.Tensor:
    """Weights on the mask of :func:`problem` ``p`` that minimise the layer objective (float32, zero off the mask).

    ``start`` is the method's pruned weights (the warm start, unscaled); ``iters`` are the solver's
    iterations (for ADMM, followed by ``polish`` PCG steps). No row ends with a higher objective than its warm start.
    """
    x0 = start.to(p.A.dtype) * p.n.unsqueeze(0) * p.keep
    before = p.objective(x0)
    if solver == "admm":
        z = admm(p, x0, iters)
        x = pcg(p, torch.where((p.objective(z) < before).unsqueeze(1), z, x0), polish)
    else:
        x = pcg(p, x0, iters)
    x = torch.where((p.objective(x) > before).unsqueeze(1), x0, x)  # rounding can undo a step that gains nothing
    return (x / p.n.unsqueeze(0)).masked_fill(~p.keep, 0).float()
