"""MaskLoRA (PERP, Zimmer et al. 2023): low-rank adapters whose update keeps every pruned weight exactly zero.

Plain LoRA adds ``scale * B @ A`` to a weight; merged into a pruned matrix it refills every zero.
MaskLoRA multiplies the update by the weight's mask ``M = (W != 0)``, in the forward pass during
training and at merge:

    y = x (W + scale * (B @ A) * M)^T + b        merged: W' = W + (scale * B @ A) * M

so ``W'`` is zero exactly where ``W`` is (0 + 0 = 0 in every dtype) and an N:M pattern stays N:M.
Since ``W * M = W`` for a pruned matrix this is the paper's ``(W + B A s) * M``. The mask is read from
the frozen weight at each call (a compare, no stored copy). A dense (structured-pruned) matrix has
no zeros, so the mask is all ones and this is ordinary LoRA.

peft supplies the adapter machinery (A/B initialisation, scaling, dropout, injection by module
name); :class:`MaskedLoraLinear` overrides only its forward and ``get_delta_weight``, which peft's own
``merge`` calls. The masked forward has to form the full ``out x in`` update (the product of a
low-rank factor pair with an elementwise mask is not low rank), as the reference's MaskLoRALayer does.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn

from ..errors import SettingsError

ADAPTER = "default"


class MaskedLoraLinear(LoraLinear):
    """peft's LoRA ``Linear`` with the update multiplied by the base weight's non-zero mask."""

    def mask(self) -> torch.Tensor:
        """``W != 0`` of the frozen base weight (bool, the weight's shape)."""
        return self.get_base_layer().weight != 0

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """``scale * (B @ A) * M`` in float32 (peft's ``merge`` adds it to the base weight in the weight's dtype)."""
        a = self.lora_A[adapter].weight.float()
        b = self.lora_B[adapter].weight.float()
        return (b @ a) * self.scaling[adapter] * self.mask()

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``base(x) + dropout(x) @ (scale * (B @ A) * M)^T``; merged or disabled: the base layer alone."""
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters or self.merged:
            return result
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            delta = self.get_delta_weight(name)
            h = self.lora_dropout[name](x).to(delta.dtype)
            result = result + F.linear(h, delta).to(result.dtype)
        return result


def check_rank(name: str, module: nn.Module, rank: int) -> None:
    """Refuse a rank above ``min(out, in)`` of ``name``'s matrix (the product could not use it)."""
    if not isinstance(module, nn.Linear):
        raise SettingsError(f"{name} is a {type(module).__name__}, not nn.Linear: masked LoRA supports nn.Linear matrices only (drop it from --lora-targets)")
    out_features, in_features = module.weight.shape
    if rank > min(out_features, in_features):
        raise SettingsError(f"--lora-rank {rank} is larger than the {out_features}x{in_features} matrix {name} (at most {min(out_features, in_features)})")


def attach(model: nn.Module, names: list[str], rank: int, alpha: float, dropout: float = 0.0) -> dict[str, MaskedLoraLinear]:
    """Wrap the matrices ``names`` (full module names) in float32 :class:`MaskedLoraLinear` adapters, in place.

    peft initialises A (Kaiming uniform) and B (zeros), so the wrapped model computes exactly
    what it did before. The base weights keep their dtype and stay frozen.
    """
    modules = dict(model.named_modules())
    for name in names:
        check_rank(name, modules[name], rank)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=names, bias="none")
    config._register_custom_module({nn.Linear: MaskedLoraLinear})
    # peft accepts regexes or name suffixes; anchored full names select exactly these matrices
    config.target_modules = "|".join(f"^{n.replace('.', chr(92) + '.')}$" for n in names)
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    wrapped = {n: m for n, m in model.named_modules() if isinstance(m, MaskedLoraLinear)}
    if sorted(wrapped) != sorted(names):
        raise SettingsError(f"masked LoRA wrapped {len(wrapped)} matrices, expected {len(names)}")
    for module in wrapped.values():
        module.lora_A[ADAPTER].float()
        module.lora_B[ADAPTER].float()
    return wrapped


def merge(model: nn.Module) -> int:
    """Fold every :class:`MaskedLoraLinear` into its base weight (peft's merge with the masked delta) and unwrap it.

    Returns the number of matrices merged. Afterwards the model holds plain ``nn.Linear`` layers again.
    """
    count = 0
    for name, module in list(model.named_modules()):
        if not isinstance(module, MaskedLoraLinear):
            continue
        module.merge(adapter_names=[ADAPTER])
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer())
        count += 1
    return count


def adapter_state(wrapped: dict[str, MaskedLoraLinear]) -> dict[str, torch.Tensor]:
    """The adapters' tensors by name (``<matrix>.lora_A`` / ``.lora_B``), for checkpoints."""
    out = {}
    for name, module in wrapped.items():
        out[f"{name}.lora_A"] = module.lora_A[ADAPTER].weight.detach().clone()
        out[f"{name}.lora_B"] = module.lora_B[ADAPTER].weight.detach().clone()
    return out
