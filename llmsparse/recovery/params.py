"""Which parameters recovery trains: normalisation weights, biases and masked low-rank adapters (PERP's groups).

Everything else stays frozen in its own dtype. Norms and biases of a half-precision model are
optimised through float32 master copies (the optimizer steps the copy, the parameter gets it
rounded), so small updates are not lost to bf16 rounding; adapters are float32 throughout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.layout import find_layers, matrix_modules
from ..errors import SettingsError
from . import masklora


def is_norm(module: nn.Module) -> bool:
    """LayerNorm, RMSNorm and the models' own norm classes (``GemmaRMSNorm``, ``LlamaRMSNorm``...)."""
    return isinstance(module, nn.LayerNorm) or "norm" in type(module).__name__.lower()


def lora_names(model: nn.Module, targets: list[str] | None) -> list[str]:
    """The decoder matrices that get adapters: every one, or those whose full name matches a regex of ``targets``."""
    layout = find_layers(model)
    names = []
    for i, layer in enumerate(layout.layers):
        names += list(matrix_modules(layer, layout.layer_name(i)))
    if targets:
        names = [n for n in names if any(re.search(t, n) for t in targets)]
        if not names:
            raise SettingsError(f"--lora-targets {' '.join(targets)} match no decoder matrix")
    return names


@dataclass
class Trainable:
    """The trained parameters: adapters (wrapped modules) and plain parameters with their float32 masters."""

    adapters: dict[str, masklora.MaskedLoraLinear] = field(default_factory=dict)
    plain: dict[str, nn.Parameter] = field(default_factory=dict)
    masters: dict[str, torch.Tensor] = field(default_factory=dict)

    def optimized(self) -> dict[str, torch.Tensor]:
        """What the optimizer steps, by name: adapter weights and the float32 masters of norms/biases."""
        out = {}
        for name, module in self.adapters.items():
            out[f"{name}.lora_A"] = module.lora_A[masklora.ADAPTER].weight
            out[f"{name}.lora_B"] = module.lora_B[masklora.ADAPTER].weight
        return out | self.masters

    def count(self) -> int:
        return sum(t.numel() for t in self.optimized().values())

    def pull_grads(self) -> None:
        """Give each master the gradient of its parameter (in float32)."""
        for name, master in self.masters.items():
            grad = self.plain[name].grad
            master.grad = None if grad is None else grad.float()

    def push(self) -> None:
        """Copy each master into its parameter (rounded to the parameter's dtype)."""
        with torch.no_grad():
            for name, master in self.masters.items():
                self.plain[name].copy_(master)

    def zero_grad(self) -> None:
        for t in [*self.optimized().values(), *self.plain.values()]:
            t.grad = None


def select(model: nn.Module, groups: list[str], rank: int, alpha: float, dropout: float, targets: list[str] | None) -> Trainable:
    """Freeze ``model``, then make the chosen ``groups`` trainable; refuse a choice that trains nothing."""
    plain: dict[str, nn.Parameter] = {}
    for module_name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            name = f"{module_name}.{pname}" if module_name else pname
            if ("norms" in groups and is_norm(module)) or ("biases" in groups and pname == "bias" and not is_norm(module)):
                plain[name] = p
    names = lora_names(model, targets) if "lora" in groups else []
    if not plain and not names:
        raise SettingsError(f"--train {','.join(groups)} selects no parameter of this model (it has no such norms or biases); add lora")
    modules = dict(model.named_modules())
    for name in names:  # before anything changes
        masklora.check_rank(name, modules[name], rank)
    for p in model.parameters():
        p.requires_grad_(False)
    adapters = masklora.attach(model, names, rank, alpha, dropout) if names else {}
    for module in adapters.values():
        for p in (module.lora_A[masklora.ADAPTER].weight, module.lora_B[masklora.ADAPTER].weight):
            p.requires_grad_(True)
    for p in plain.values():
        p.requires_grad_(True)
    masters = {n: p.detach().float().clone().requires_grad_(True) for n, p in plain.items()}
    return Trainable(adapters, plain, masters)
