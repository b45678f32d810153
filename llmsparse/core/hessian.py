"""The input Hessian's algebra shared by OBS-style methods, GPTQ and the solvers.

``H = sum_x x x^T`` over a matrix's calibration inputs (:class:`llmsparse.core.stats.Hessian`). SparseGPT,
GPTQ and the mask-keeping quantization pass need the upper Cholesky factor of the damped inverse
(:func:`inverse_hessian_factor`, with dead inputs set to ``H_jj = 1`` first by :func:`prepare_hessian`,
as the reference does); every method reports its layer error through :func:`reconstruction_error`.
"""

from __future__ import annotations

import logging

import torch

from ..errors import HessianError

log = logging.getLogger(__name__)


def inverse_hessian_factor(H: torch.Tensor, percdamp: float, tries: int = 6, growth: float = 10.0):
    """Upper Cholesky factor of ``(H + damp*I)^-1``, with ``damp = percdamp * mean(diag H)``.

    If the factorisation fails, dampening grows by ``growth`` up to ``tries`` times (each retry is
    logged); it never falls back to the identity. Returns ``(U, percdamp actually used)``.
    """
    mean_diag = torch.diagonal(H).mean()
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    damp = percdamp
    for attempt in range(tries):
        L, info = torch.linalg.cholesky_ex(H + damp * mean_diag * eye)
        if info == 0:
            U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
            if info == 0:
                return U, damp
        if attempt + 1 < tries:
            grown = damp * growth if damp > 0 else 0.01
            log.warning("Hessian not positive definite with percdamp=%g; retrying with %g", damp, grown)
            damp = grown
    raise HessianError(f"Hessian could not be factored even with percdamp={damp:g} (after {tries} tries)")


def reconstruction_error(original: torch.Tensor, pruned: torch.Tensor, H: torch.Tensor) -> float:
    """``||(W - W')X||^2 / ||WX||^2`` computed from ``H ∝ X X^T`` (the scale of H cancels)."""
    delta = original - pruned
    both = torch.cat([delta, original]) @ H
    rows = original.shape[0]
    return ((both[:rows] * delta).sum() / (both[rows:] * original).sum().clamp_min(1e-30)).item()


def prepare_hessian(H: torch.Tensor, percdamp: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(dead inputs, upper Cholesky factor of the damped H^-1, percdamp used)``; dead inputs get ``H_jj = 1``."""
    H = H.clone()
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1
    U, damp = inverse_hessian_factor(H, percdamp)
    return dead, U, damp
