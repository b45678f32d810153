"""``dense``: ordinary safetensors, the pruned weights stored as exact zeros (what every tool loads)."""

from __future__ import annotations

from .base import Format, register


@register
class Dense(Format):
    name = "dense"
    compact = False
    note = "ordinary safetensors with the pruned weights stored as zeros; loads with plain `transformers`"
