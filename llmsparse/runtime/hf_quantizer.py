"""llmsparse's transformers quantization method: the config class and the quantizer that loads compact checkpoints as SparseLinear layers.

Registered under ``quant_method: "llmsparse"`` when this module is first imported (:func:`llmsparse.runtime.hf.register` imports it). Imports
only transformers modules that its quantizer registry has loaded already, so registering can run
while that registry is being imported.
"""

from __future__ import annotations

from typing import Any

from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from ..formats import QUANT_METHOD
from .convert import add_shells, check_loaded


class LlmsparseConfig(QuantizationConfigMixin):
    """The ``quantization_config`` of a compact checkpoint: which file holds the weights, and the ``sparsity_config`` block."""

    def __init__(self, sparsity_config: dict | None = None, weights: str | None = None, **kwargs: Any):
        self.quant_method = QUANT_METHOD
        self.weights = weights
        self.sparsity_config = dict(sparsity_config or {})


class LlmsparseQuantizer(HfQuantizer):
    """Loads each stored matrix of a compact checkpoint into a :class:`~llmsparse.runtime.SparseLinear` (never a dense weight)."""

    requires_calibration = True  # only checkpoints llmsparse wrote: it does not compress while loading

    def update_attn_implementation(self, config):
        # The one hook that sees the model config before transformers resolves the weights file:
        # the checkpoint's transformers_weights is the message stock transformers stops with.
        if self.quantization_config.weights:
            config.transformers_weights = self.quantization_config.weights
        elif "transformers_weights" in config.__dict__:
            del config.transformers_weights
        return config

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, dtype=None, **kwargs):
        add_shells(model, self.quantization_config.sparsity_config, checkpoint_files or [], dtype)
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        check_loaded(model, model.dtype)  # transformers passes no dtype to the hook above: the model's parameters have it
        return model

    def is_serializable(self) -> bool:
        return False  # save from a dense load: llmsparse.save_pruned writes the compact layout itself

    @property
    def is_trainable(self) -> bool:
        return False



def register() -> None:
    """Add the two classes to transformers' quantizer registry (unless they are there already)."""
    from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING, register_quantization_config, register_quantizer

    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantization_config(QUANT_METHOD)(LlmsparseConfig)
        register_quantizer(QUANT_METHOD)(LlmsparseQuantizer)


register()
