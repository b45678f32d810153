"""Where a decoder block keeps its attention module and its FFN, and how many parameters each holds.

Structured pruning removes whole FFN neurons (rows of the input projections, columns of the output
projection) and whole attention modules, so it needs to know a block's parts by role, not just its
matrices. The supported layouts (others get a :class:`ModelError` naming the architecture):

* gated FFN ``mlp.{gate_proj, up_proj, down_proj}``: Llama, Mistral, Qwen2/3, Gemma 2/3;
* fused gated FFN ``mlp.{gate_up_proj, down_proj}``: Phi-3 (rows ``[gate; up]``, neuron ``j`` is rows ``j`` and ``I + j``);
* ``mlp.{c_fc, c_proj}`` (GPT-2, ``Conv1D`` stores ``[in, out]``) and ``{fc1, fc2}`` on the block itself (OPT).

Attention is ``self_attn`` (or GPT-2's ``attn``); its output projection is ``o_proj``, ``out_proj``
or ``c_proj``. The FFN width lives in the config as ``intermediate_size``, ``n_inner`` (GPT-2) or ``ffn_dim`` (OPT).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..core.layout import DecoderLayout, architecture, find_layers, get_weight, is_matrix_module
from ..errors import ModelError

ATTENTION = ("self_attn", "attn")
ATTENTION_OUT = ("o_proj", "out_proj", "c_proj")
#: (input projections, output projection) of the FFN layouts, tried in order.
FFN_LAYOUTS = ((("gate_up_proj",), "down_proj"), (("gate_proj", "up_proj"), "down_proj"), (("c_fc",), "c_proj"), (("fc1",), "fc2"))
#: Config fields that hold the FFN width.
WIDTH_FIELDS = ("intermediate_size", "n_inner", "ffn_dim")


@dataclass
class Block:
    """One decoder block by role."""

    module: nn.Module
    attention: nn.Module
    attention_out: nn.Module  # the output projection of attention: zeroing it removes attention's contribution
    ffn: nn.Module  # the module holding the FFN projections (the block itself for OPT)
    ffn_in: list[nn.Module]  # rows are neurons (for a fused gate_up: rows j and width + j)
    ffn_out: nn.Module  # columns are neurons
    fused: bool  # Phi-3's gate_up_proj

    @property
    def width(self) -> int:
        """The number of FFN neurons (the input dimension of the output projection)."""
        return get_weight(self.ffn_out).shape[1]

    def attention_params(self) -> int:
        return sum(p.numel() for p in self.attention.parameters())

    def ffn_params(self) -> int:
        return sum(p.numel() for m in [*self.ffn_in, self.ffn_out] for p in m.parameters())

    def params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def neuron_params(self) -> int:
        """Parameters one FFN neuron holds: its row (and bias) in every input projection plus its column of the output one."""
        per = sum(get_weight(m).shape[1] + (1 if getattr(m, "bias", None) is not None else 0) for m in self.ffn_in)
        return per * (2 if self.fused else 1) + get_weight(self.ffn_out).shape[0]


def _attention(block: nn.Module, name: str) -> tuple[nn.Module, nn.Module]:
    for attr in ATTENTION:
        attention = getattr(block, attr, None)
        if isinstance(attention, nn.Module):
            for out in ATTENTION_OUT:
                proj = getattr(attention, out, None)
                if proj is not None and is_matrix_module(proj):
                    return attention, proj
    raise ModelError(f"structured pruning does not support {name}: no attention module with an output projection ({'/'.join(ATTENTION_OUT)}) in its decoder blocks")


def _ffn(block: nn.Module, name: str) -> tuple[nn.Module, list[nn.Module], nn.Module, bool]:
    for holder in (getattr(block, "mlp", None), block):
        if not isinstance(holder, nn.Module):
            continue
        for inputs, output in FFN_LAYOUTS:
            found = [getattr(holder, n, None) for n in (*inputs, output)]
            if all(m is not None and is_matrix_module(m) for m in found):
                return holder, found[:-1], found[-1], inputs == ("gate_up_proj",)
    raise ModelError(f"structured pruning does not support {name}: its FFN is not one of gate/up/down, gate_up/down, c_fc/c_proj or fc1/fc2")


def blocks(model: nn.Module) -> tuple[DecoderLayout, list[Block]]:
    """The decoder layout and every block by role; :class:`ModelError` for layouts structured pruning cannot edit."""
    layout = find_layers(model)
    name = architecture(model)
    found = []
    for block in layout.layers:
        attention, attention_out = _attention(block, name)
        ffn, ffn_in, ffn_out, fused = _ffn(block, name)
        found.append(Block(block, attention, attention_out, ffn, ffn_in, ffn_out, fused))
    width_field(model.config, name)
    return layout, found


def width_field(config, name: str = "model") -> str:
    """The config field that holds the FFN width (GPT-2's ``n_inner`` may be None, meaning 4 x hidden)."""
    for field in WIDTH_FIELDS:
        if field in config.to_dict():
            return field
    raise ModelError(f"structured pruning does not support {name}: its config has none of {', '.join(WIDTH_FIELDS)}")


def decoder_params(model: nn.Module) -> int:
    """Parameters of the decoder blocks (embeddings, final norm and LM head excluded): what ``sparsity`` is a fraction of."""
    return sum(p.numel() for p in find_layers(model).layers.parameters())
