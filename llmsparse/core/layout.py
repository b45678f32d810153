"""Model structure, the ground floor: where a causal LM keeps its decoder blocks and prunable matrices.

Everything that knows how a Hugging Face causal LM is laid out lives here: the repeated decoder
blocks, the prunable matrices inside them, reading a matrix as ``[out_features, in_features]``
whatever its storage (``nn.Linear`` or GPT-2's transposed ``Conv1D``), choosing matrices by name,
and the compute device. It imports nothing of the package but its errors, so every other module
can import it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ModelError


@dataclass
class DecoderLayout:
    """Where a causal LM keeps its repeated decoder blocks."""

    base: nn.Module  # the model without its LM head (embeddings, blocks, final norm)
    layers: nn.ModuleList
    layers_name: str  # qualified name inside the full model, e.g. "model.layers"

    def layer_name(self, index: int) -> str:
        return f"{self.layers_name}.{index}"


def is_matrix_module(module: nn.Module) -> bool:
    """True for modules whose weight is one prunable matrix: ``nn.Linear`` and GPT-2's ``Conv1D``."""
    if isinstance(module, nn.Linear):
        return True
    return type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None and module.weight.dim() == 2


def architecture(model: nn.Module) -> str:
    """The model's architecture name for messages (``LlamaForCausalLM``), else its class name."""
    return (getattr(getattr(model, "config", None), "architectures", None) or [type(model).__name__])[0]


def find_layers(model: nn.Module) -> DecoderLayout:
    """Find the decoder blocks: the largest ``ModuleList`` of identical blocks that contain matrices.

    Generic over Llama, Mistral, Qwen2/3, Gemma2/3, Phi3, OPT, GPT-2 and most other decoder-only
    models; raises :class:`ModelError` naming the architecture when nothing fits.
    """
    best = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        kinds = {type(child) for child in module}
        if len(kinds) != 1 or not any(is_matrix_module(m) for m in module[0].modules()):
            continue
        size = sum(p.numel() for p in module.parameters())
        if best is None or size > best[2]:
            best = (name, module, size)
    if best is None:
        raise ModelError(f"unsupported architecture {architecture(model)}: no list of repeated decoder blocks with Linear layers found")
    base = getattr(model, "base_model", model)
    return DecoderLayout(base=base, layers=best[1], layers_name=best[0])


def matrix_modules(module: nn.Module, prefix: str = "") -> dict[str, nn.Module]:
    """All prunable matrices inside ``module`` by qualified name (``prefix.sub.name``), in definition order."""
    return {f"{prefix}.{name}" if prefix else name: m for name, m in module.named_modules() if name and is_matrix_module(m)}


def get_weight(module: nn.Module, tensor: torch.Tensor | None = None) -> torch.Tensor:
    """The weight (or ``tensor`` stored like it) as an ``[out_features, in_features]`` view.

    ``nn.Linear`` stores ``[out, in]``; GPT-2's ``Conv1D`` stores the transpose.
    """
    data = module.weight.data if tensor is None else tensor
    return data if isinstance(module, nn.Linear) else data.t()


def select_targets(
    model: nn.Module, targets: Sequence[str] | None = None, ignore: Sequence[str] | None = None
) -> dict[int, dict[str, nn.Module]]:
    """Matrices to prune per decoder layer: all Linear/Conv1D inside the blocks, filtered by name regexes.

    ``targets`` keeps names matching any regex (``re.search``), ``ignore`` drops names matching any.
    Embeddings and ``lm_head`` sit outside the decoder blocks and are never selected.
    """
    layout = find_layers(model)
    chosen: dict[int, dict[str, nn.Module]] = {}
    for i, layer in enumerate(layout.layers):
        for name, module in matrix_modules(layer, layout.layer_name(i)).items():
            if targets and not any(re.search(p, name) for p in targets):
                continue
            if ignore and any(re.search(p, name) for p in ignore):
                continue
            chosen.setdefault(i, {})[name] = module
    if not chosen:
        raise ModelError(f"no matrices selected for pruning (targets={list(targets or [])}, ignore={list(ignore or [])})")
    return chosen


def target_weights(model: nn.Module) -> dict[str, nn.Module]:
    """Every prunable matrix of the decoder blocks by qualified name (what pruning may change)."""
    return {name: module for matrices in select_targets(model).values() for name, module in matrices.items()}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a torch device; ``None`` means cuda when available, else cpu."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
