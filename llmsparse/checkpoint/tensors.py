"""A checkpoint's tensors against the model its config describes: every tensor present, none extra, every shape right.

transformers initialises a missing tensor randomly (with a log line), drops an unexpected one, and
re-initialises a mis-shaped one when asked to ignore sizes; a pruned model saved from any of those is
silently wrong. llmsparse refuses them instead, naming the first tensor, before anything is pruned: in
memory from transformers' own loading report (:func:`check_loading_info`, which knows its key renames
and tied weights), when streaming from the safetensors headers against the model built on the meta
device (:func:`check_headers`). A config whose ``hidden_size`` disagrees with the weights shows up as
mis-shaped tensors.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from ..errors import CheckpointError


def _refuse(source: str, model: str, missing: Sequence[str], unexpected: Sequence[str], mismatched: Sequence[tuple[str, list, list]]) -> None:
    """Raise :class:`CheckpointError` for the first problem (missing, then mis-shaped, then unexpected); nothing when all agree."""
    if missing:
        raise CheckpointError(
            f"{source}: the checkpoint has no tensor {sorted(missing)[0]!r}, which {model} needs ({len(missing)} missing): "
            "the weights file is incomplete or belongs to another model"
        )
    if mismatched:
        key, stored, expected = sorted(mismatched)[0]
        raise CheckpointError(
            f"{source}: tensor {key!r} has shape {stored} in the checkpoint, but config.json gives {model} {expected} "
            f"({len(mismatched)} tensors disagree): config.json and the weights are not of the same model"
        )
    if unexpected:
        raise CheckpointError(
            f"{source}: the checkpoint holds tensor {sorted(unexpected)[0]!r}, which is not part of {model} ({len(unexpected)} unexpected): "
            "config.json and the weights are not of the same model"
        )


def check_loading_info(source: str, model, info: Mapping[str, Iterable]) -> None:
    """Refuse what ``from_pretrained(..., output_loading_info=True, ignore_mismatched_sizes=True)`` reported."""
    mismatched = [(key, list(stored), list(expected)) for key, stored, expected in info.get("mismatched_keys", ())]
    _refuse(source, type(model).__name__, list(info.get("missing_keys", ())), list(info.get("unexpected_keys", ())), mismatched)


def check_headers(source: str, model, stored: Mapping[str, Sequence[int]]) -> None:
    """Refuse a checkpoint whose tensors (``stored``: key -> shape, from the headers) differ from ``model``'s (built on the meta device).

    Every parameter must be stored, under its own key or that of a tensor it is tied to (``lm_head.weight`` is
    stored as ``model.embed_tokens.weight``); persistent buffers may be absent (they are computed), but a stored
    one must have the right shape.
    """
    state = model.state_dict(keep_vars=True)
    params = {id(p) for p in model.parameters()}
    names: dict[int, list[str]] = {}
    for key, tensor in state.items():
        names.setdefault(id(tensor), []).append(key)
    missing = [keys[0] for t, keys in names.items() if t in params and not any(k in stored for k in keys)]
    mismatched = [(k, list(stored[k]), list(v.shape)) for k, v in state.items() if k in stored and list(stored[k]) != list(v.shape)]
    unexpected = [k for k in stored if k not in state]
    _refuse(source, type(model).__name__, missing, unexpected, mismatched)
