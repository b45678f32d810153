"""Loading with bitsandbytes (``load_in='4bit'|'8bit'``) and what its quantization does to a pruned model's zeros.

4-bit is NF4 with bfloat16 compute (bitsandbytes' recommended setting), 8-bit is LLM.int8 (per-row
absmax). Exact zeros survive both (0.0 is on their grids), but NF4 also rounds small kept weights
(``|w|/absmax`` below about 0.04 of their 64-weight block) to zero. :func:`sparsity_after` measures
both against the checkpoint's own zeros, read from its safetensors (the pruning mask), not after
quantization: ``pruned_still_zero`` (must be 1.0) and ``kept_became_zero``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from ..errors import ModelError

LOAD_IN = ("4bit", "8bit")
INSTALL = 'pip install "llmsparse[bnb]"'
#: The model attribute that holds the :class:`BnbSparsity` measured at load.
REPORT_ATTR = "llmsparse_bnb_sparsity"


def require() -> None:
    """Raise a :class:`ModelError` naming the extra to install when bitsandbytes is missing."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise ModelError(f"load_in needs bitsandbytes, which is not installed: {INSTALL}") from err


def config(load_in: str):
    """transformers' ``BitsAndBytesConfig`` for ``load_in`` (NF4 + bfloat16 compute, or LLM.int8)."""
    require()
    from transformers import BitsAndBytesConfig

    if load_in == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    return BitsAndBytesConfig(load_in_8bit=True)


def dequantized(module: nn.Module) -> torch.Tensor | None:
    """The float weight a bitsandbytes Linear computes with (None for other modules)."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    if isinstance(module, bnb.nn.Linear4bit):
        return F.dequantize_4bit(module.weight.data, module.weight.quant_state)
    if isinstance(module, bnb.nn.Linear8bitLt):
        w = module.weight
        return F.int8_vectorwise_dequant(w.data, w.SCB) if w.SCB is not None else w.data.float()
    return None


def float_weight(module: nn.Module) -> torch.Tensor:
    """A Linear's weight as floats: the parameter itself, or what a bitsandbytes Linear dequantizes to."""
    if module.weight.is_floating_point():
        return module.weight
    weight = dequantized(module)
    if weight is None:
        raise ModelError(f"{type(module).__name__} stores a {module.weight.dtype} weight that llmsparse cannot read as floats")
    return weight


def quantized_in(config) -> str | None:
    """``4bit``/``8bit`` when ``config`` says the model is quantized by bitsandbytes (loaded with ``load_in``, or saved so), else None."""
    quant = getattr(config, "quantization_config", None)
    quant = quant if isinstance(quant, dict) else quant.to_dict() if quant is not None else {}
    if quant.get("quant_method") != "bitsandbytes":
        return None
    return "4bit" if quant.get("load_in_4bit") else "8bit"


@dataclass
class BnbSparsity:
    """Zeros before (the checkpoint's) and after bitsandbytes quantization, over the quantized matrices."""

    load_in: str
    matrices: int
    pruned: int  # weights that were exactly zero in the checkpoint
    pruned_still_zero: float  # fraction of those still exactly zero after dequantization
    kept: int
    kept_became_zero: float  # fraction of the non-zero weights that dequantize to exactly zero

    def summary(self) -> str:
        return (
            f"bitsandbytes {self.load_in}: {self.matrices} matrices; pruned weights still zero {self.pruned_still_zero:.4%} "
            f"of {self.pruned:,}; kept weights turned zero {self.kept_became_zero:.4%} of {self.kept:,}"
        )


def sparsity_after(model: nn.Module, shards: list[Path], load_in: str) -> BnbSparsity:
    """Compare every quantized matrix of ``model`` with its weight in the checkpoint ``shards`` (read one tensor at a time)."""
    modules = {f"{name}.weight": m for name, m in model.named_modules()}
    pruned = pruned_zero = kept = kept_zero = matrices = 0
    for shard in shards:
        with safe_open(shard, "pt") as f:
            for key in f.keys():
                after = dequantized(modules[key]) if key in modules else None
                if after is None:
                    continue
                before = f.get_tensor(key)
                zero, now_zero = before == 0, after.reshape(before.shape) == 0
                matrices += 1
                pruned += int(zero.sum())
                pruned_zero += int((zero & now_zero).sum())
                kept += int((~zero).sum())
                kept_zero += int((~zero & now_zero).sum())
    return BnbSparsity(load_in, matrices, pruned, pruned_zero / pruned if pruned else 1.0, kept, kept_zero / kept if kept else 0.0)

