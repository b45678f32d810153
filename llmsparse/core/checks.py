"""Finite numbers in, or a clear error: weights and calibration statistics are checked for NaN and inf.

One NaN weight makes every score that reads it NaN, and sorting NaN scores gives masks that look
valid but are not (a matrix left dense, a global sparsity far below the target, saved with exit 0);
a NaN input makes a Hessian that cannot be factored, which would be blamed on dampening. These
checks stop such runs before they change anything, or as soon as the bad statistic appears, and
name the tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import CalibrationError, NonFiniteError


def nonfinite(tensor: torch.Tensor) -> str | None:
    """``"2 NaN and 1 inf values"`` for a floating tensor with non-finite entries, else None."""
    if not tensor.is_floating_point() or tensor.device.type == "meta":
        return None
    if all(bool(torch.isfinite(part).all()) for part in tensor.detach().reshape(-1).split(1 << 22)):  # in slices: isfinite's temporaries are full-size
        return None
    nan = int(torch.isnan(tensor).sum())
    return f"{nan} NaN and {tensor.numel() - nan - int(torch.isfinite(tensor).sum())} inf values"


def check_weights(model: nn.Module, within: str = "") -> None:
    """Refuse a model with a non-finite parameter, naming the first one (before any weight changes).

    ``within``: check only parameters under this qualified name (the decoder layers, whose weights
    make the masks; a NaN elsewhere either reaches the calibration statistics, which are checked too, or
    does not affect any mask).
    Reading a weight pages it in: skipping the 262k-row embedding of a memory-mapped Gemma 3
    keeps ~0.6 GiB of it out of the resident set while pruning.
    """
    prefix = f"{within}." if within else ""
    for name, param in model.named_parameters():
        bad = nonfinite(param.detach()) if name.startswith(prefix) else None
        if bad:
            raise NonFiniteError(f"weight {name} has {bad}; llmsparse needs finite weights (is the checkpoint corrupt?)")


def check_inputs(where: str, inputs: Mapping[str, torch.Tensor | None]) -> None:
    """Refuse non-finite calibration activations of a block (``role -> tokens x channels``; None is skipped)."""
    for role, x in inputs.items():
        bad = None if x is None else nonfinite(x)
        if bad:
            raise NonFiniteError(f"calibration inputs of {where} ({role}) have {bad}: the activations overflowed (with a float16/bfloat16 model, try --dtype float32)")


def _tensors(obj: Any, path: str, depth: int = 3):
    """``(path, tensor)`` for the tensors a statistics object holds, in nested statistics objects too."""
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif depth > 0 and isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            yield from _tensors(item, f"{path}[{i}]", depth - 1)
    elif depth > 0 and hasattr(obj, "__dict__") and not isinstance(obj, (nn.Module, type)):
        for attr, value in vars(obj).items():
            yield from _tensors(value, f"{path}.{attr.lstrip('_')}" if path else attr.lstrip("_"), depth - 1)


def check_statistics(name: str, stats: Any) -> None:
    """Refuse calibration statistics of matrix ``name`` (the tensors of its stats object) that are not finite, or all zero.

    All-zero statistics mean every calibration input of the matrix was zero (an all-zero embedding, a dead
    layer): every score ties, so a mask would be chosen by position and SparseGPT's update would zero the
    whole matrix. That is an error, not a result.
    """
    found = [(path, tensor) for path, tensor in _tensors(stats, "") if tensor.is_floating_point() and tensor.numel()]
    if found and not any(bool(tensor.any()) for _, tensor in found):
        raise CalibrationError(
            f"calibration inputs of {name} are all zero ({type(stats).__name__} holds only zeros): the weights cannot be ranked; "
            "is the embedding or an earlier layer all zero?"
        )
    for path, tensor in found:
        bad = nonfinite(tensor)
        if bad:
            raise NonFiniteError(
                f"calibration statistics of {name} ({type(stats).__name__} {path}) have {bad}: "
                "its inputs are not finite (with float16/bfloat16 compute, try --compute-dtype float32)"
            )
