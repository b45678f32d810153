"""TEAL's greedy block-wise allocation (Liu et al. 2024), for any activation method that supports it.

:func:`greedy_allocation` raises, one step at a time, the sparsity of the one projection whose
increase adds the least block-output error (:func:`block_error`) until the block's
parameter-weighted sparsity reaches the target; :func:`replay` reuses a recorded search.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import SparsityError, check_choice
from .base import check_sparsity

#: Block-output errors the greedy search can minimise (see :func:`block_error`).
GREEDY_ERRORS = ("relative", "mse", "reference")
#: The TEAL reference measures its error on the last quarter of each sequence's positions only.
REFERENCE_LAST_FRACTION = 0.25


def check_greedy_error(kind: str) -> None:
    """Refuse an unknown block-error name before any work."""
    check_choice("greedy error", kind, GREEDY_ERRORS)


def block_error(out: torch.Tensor, dense: torch.Tensor, kind: str = "relative") -> float:
    """How far a block's output ``out`` is from its dense output ``dense`` (``[..., seq, hidden]``).

    ``mse``: the squared error summed over tokens. ``relative`` (default): each token's squared
    error divided by the squared norm of its dense output, summed over tokens. The next block and
    the final norm RMS-normalise every token, so what propagates is a token's error relative to its
    own norm; the plain squared error is instead dominated by the few tokens with massive
    activations (``bench/greedy_error_gemma.py`` shows it on Gemma 3 270M), and a search on it
    trades every other token for them. ``reference``: the TEAL reference's error, each channel's L2
    norm over the last quarter of the sequence's positions, averaged over channels (and summed
    over sequences); leaving out the first positions also leaves out the attention-sink tokens.
    """
    check_greedy_error(kind)
    if kind == "reference":
        start = int(out.shape[-2] * (1 - REFERENCE_LAST_FRACTION))
        per_channel = (out[..., start:, :] - dense[..., start:, :]).float().norm(dim=-2)
        return per_channel.mean(-1).sum().item()
    diff = (out - dense).float().pow(2).sum(-1)
    if kind == "mse":
        return diff.sum().item()
    return (diff / dense.float().pow(2).sum(-1).clamp_min(torch.finfo(torch.float32).tiny)).sum().item()


def greedy_allocation(
    weights: dict[str, float],
    target: float,
    error: Callable[[dict[str, float]], float],
    step: float = 0.05,
    max_sparsity: float = 0.99,
    path: list[tuple[str, float]] | None = None,
) -> dict[str, float]:
    """Per-role sparsities whose parameter-weighted mean is exactly ``target``, found greedily.

    Starting from all zeros, each step tries raising every role's sparsity by ``step / weight``
    (so every candidate skips the same number of parameters) and keeps the one with the lowest
    ``error``; the chosen increase is shortened on the last step to land on the target exactly.
    The choices do not depend on the target, so the steps appended to ``path`` let
    :func:`replay` give the allocation for any lower target without new error evaluations.
    """
    check_sparsity(target)
    if target > max_sparsity:
        raise SparsityError(f"target {target} is above the per-projection cap {max_sparsity}")
    total = sum(weights.values())
    current = {role: 0.0 for role in weights}
    skipped = 0.0  # sum of weight * sparsity
    while skipped < target * total - 1e-9:
        best = None
        for role, w in weights.items():
            increase = min(step / w, max_sparsity - current[role])
            if increase <= 1e-12:
                continue
            e = error(dict(current, **{role: current[role] + increase}))
            if best is None or e < best[0]:
                best = (e, role, increase)
        if best is None:
            raise SparsityError(f"no projection can be sparsified further to reach {target}")
        _, role, increase = best
        increase = min(increase, (target * total - skipped) / weights[role])
        current[role] += increase
        skipped += weights[role] * increase
        if path is not None:
            path.append((role, increase))
    return current


def replay(path: list[tuple[str, float]], weights: dict[str, float], target: float) -> dict[str, float]:
    """The greedy allocation for ``target`` from the steps of a search that went at least as far."""
    total = sum(weights.values())
    current = {role: 0.0 for role in weights}
    skipped = 0.0
    for role, increase in path:
        if skipped >= target * total - 1e-9:
            break
        increase = min(increase, (target * total - skipped) / weights[role])
        current[role] += increase
        skipped += weights[role] * increase
    if skipped < target * total - 1e-9:
        raise SparsityError(f"the recorded search stops at {skipped / total:.4f}, below the target {target}")
    return current
