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
low-rank factor pair with an elementwise mask is not low rank), as the reference's MaskLoRALayer does;
:class:`MaskedUpdate` forms it again in the backward pass instead of keeping it (and its mask) for
every wrapped matrix: with autograd's default, those ``out x in`` tensors (5 bytes per weight) stay
alive from the forward to the backward pass, as much memory as the float32 decoder itself. Its
gradients, with ``G = scale * (dY^T X) * M``: ``dA = B^T G``, ``dB = G A^T``, ``dX = dY ((B @ A) * scale * M)``.
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


def masked_delta(a: torch.Tensor, b: torch.Tensor, scale: float, weight: torch.Tensor) -> torch.Tensor:
    """``scale * (B @ A) * (W != 0)`` in the adapters' dtype (float32)."""
    return (b @ a).mul_(scale).mul_(weight != 0)


class MaskedUpdate(torch.autograd.Function):
    """``h @ (scale * (B @ A) * M)^T`` that keeps only ``h``, ``A``, ``B`` (and a reference to ``W``) for backward."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(h, a, b, weight)
        ctx.scale = scale
        return F.linear(h.to(a.dtype), masked_delta(a, b, scale, weight))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        h, a, b, weight = ctx.saved_tensors
        grad = grad.to(a.dtype)
        grad_h = (grad @ masked_delta(a, b, ctx.scale, weight)).to(h.dtype) if ctx.needs_input_grad[0] else None
        g = grad.reshape(-1, grad.shape[-1]).T @ h.reshape(-1, h.shape[-1]).to(a.dtype)
        g.mul_(ctx.scale).mul_(weight != 0)
        return grad_h, b.T @ g, g @ a.T, None, None


class MaskedLoraLinear(LoraLinear):
    """peft's LoRA ``Linear`` with the update multiplied by the base weight's non-zero mask."""

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """``scale * (B @ A) * M`` in float32 (peft's ``merge`` adds it to the base weight in the weight's dtype)."""
        return masked_delta(self.lora_A[adapter].weight.float(), self.lora_B[adapter].weight.float(), self.scaling[adapter], self.get_base_layer().weight)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``base(x) + dropout(x) @ (scale * (B @ A) * M)^T``; merged or disabled: the base layer alone."""
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters or self.merged:
            return result
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            a, b = self.lora_A[name].weight, self.lora_B[name].weight
            update = MaskedUpdate.apply(self.lora_dropout[name](x), a, b, self.get_base_layer().weight, self.scaling[name])
            result = result + update.to(result.dtype)
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
