"""Where activation sparsity applies: the projections of each decoder block, by role.

Roles follow the TEAL paper: ``q``/``k``/``v`` read the attention input, ``o`` the attention
output, ``gate``/``up`` the MLP input and ``down`` the MLP hidden state. Fused projections
(Phi-3's ``qkv_proj``, ``gate_up_proj``) are one role each. ``act`` is the MLP activation
function module (CHESS sparsifies its output).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..core.layout import architecture, find_layers
from ..errors import ModelError

#: Module-name suffixes of each role (Llama/Mistral/Qwen/Gemma/Phi-3 names first, then OPT's).
ROLE_NAMES = {
    "q": ("q_proj",),
    "k": ("k_proj",),
    "v": ("v_proj",),
    "qkv": ("qkv_proj",),
    "o": ("o_proj", "out_proj"),
    "gate": ("gate_proj",),
    "up": ("up_proj", "fc1"),
    "gate_up": ("gate_up_proj",),
    "down": ("down_proj", "fc2"),
}
ACT_NAMES = ("act_fn", "activation_fn")


@dataclass
class Block:
    """The projections (by role) and MLP activation of one decoder block."""

    index: int
    linears: dict[str, nn.Linear]  # role -> module
    names: dict[str, str]  # role -> qualified module name in the model
    act: nn.Module | None = None
    act_name: str | None = None
    sizes: dict[str, int] = field(default_factory=dict)  # role -> weight numel

    @property
    def gated(self) -> bool:
        """True for ``down(act(gate(x)) * up(x))`` MLPs with separate gate and up projections."""
        return "gate" in self.linears and "up" in self.linears and self.act is not None

    def weights(self) -> dict[str, float]:
        """Each role's parameter weight relative to the attention input projection(s).

        For Llama-style models this is TEAL's q=1, k=v=n_kv_heads/n_heads, o=1,
        gate=up=down=intermediate/hidden; in general it is the ratio of weight counts.
        """
        unit = self.sizes.get("q") or self.sizes["qkv"]
        return {role: size / unit for role, size in self.sizes.items()}


def _role(name: str) -> str | None:
    leaf = name.rsplit(".", 1)[-1]
    return next((role for role, leaves in ROLE_NAMES.items() if leaf in leaves), None)


def find_blocks(model: nn.Module) -> list[Block]:
    """One :class:`Block` per decoder layer; :class:`ModelError` when the attention or MLP projections are not found."""
    layout = find_layers(model)
    arch = architecture(model)
    blocks, acts = [], set()
    for i, layer in enumerate(layout.layers):
        prefix = layout.layer_name(i)
        block = Block(i, {}, {})
        for name, module in layer.named_modules():
            role = _role(name) if isinstance(module, nn.Linear) else None
            if role is not None:
                block.linears[role], block.names[role] = module, f"{prefix}.{name}"
                block.sizes[role] = module.in_features * module.out_features
            elif name.rsplit(".", 1)[-1] in ACT_NAMES and isinstance(module, nn.Module):
                block.act, block.act_name = module, f"{prefix}.{name}"
        if "down" not in block.linears or not ({"up", "gate_up"} & block.linears.keys()):
            raise ModelError(f"{arch}: the MLP of {prefix} was not found (expected gate_proj/up_proj/down_proj or fc1/fc2 Linear layers)")
        if not ({"q", "qkv"} & block.linears.keys()) or "o" not in block.linears:
            raise ModelError(
                f"{arch}: no attention projections (q_proj/k_proj/v_proj/o_proj) found in {prefix}; activation sparsity supports Llama-style and OPT-style blocks"
            )
        if block.act is not None:
            if id(block.act) in acts:  # one shared module would make per-layer thresholds impossible
                block.act, block.act_name = None, None
            else:
                acts.add(id(block.act))
        blocks.append(block)
    return blocks
