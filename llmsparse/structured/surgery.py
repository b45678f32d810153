"""Model surgery: narrower FFNs, fewer decoder blocks, removed attention modules, with a config that says so.

Every edit leaves a model that stock ``transformers`` saves, reloads and runs as the same function:

* **FFN neurons**: the kept rows of the input projections (both halves of Phi-3's ``gate_up_proj``)
  and the kept columns of the output projection are copied into smaller matrices, and the config's
  width field (``intermediate_size``, ``n_inner``, ``ffn_dim``) becomes the new width. All blocks
  keep the same count, since one config field gives every block's width.
* **Blocks**: dropped from the block list; ``num_hidden_layers`` and ``layer_types`` (Gemma 2/3,
  Qwen's sliding/global pattern) keep the surviving blocks' own entries, and every ``layer_idx``
  (the KV-cache slot) is renumbered.
* **Attention modules**: stock transformers has no per-layer "no attention" switch for these
  architectures, so the module stays, with *every* parameter set to zero. The output projection's
  zero weight and bias make its contribution exactly 0 (Gemma's post-attention norm of 0 is 0), so
  the function is the reference's "attention removed". It costs its dense bytes on disk; the indices are
  recorded in ``config.llmsparse_structured`` and :func:`skip_removed_attention` (called by
  :func:`llmsparse.load_model`) returns zeros without computing anything when no KV cache is in use.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from types import MethodType

import torch
from torch import nn

from ..core.layout import architecture
from ..errors import ModelError
from .anatomy import blocks, width_field

#: config.json key recording what structured pruning removed.
CONFIG_KEY = "llmsparse_structured"
#: Keyword names under which attention modules receive a KV cache.
CACHE_KWARGS = ("cache", "past_key_values", "past_key_value", "layer_past")


def record(model: nn.Module) -> dict:
    """The ``config.llmsparse_structured`` record of ``model`` (created empty)."""
    rec = getattr(model.config, CONFIG_KEY, None)
    if not isinstance(rec, dict):
        rec = {"removed_attention": [], "removed_blocks": []}
        setattr(model.config, CONFIG_KEY, rec)
    return rec


def _select(module: nn.Module, index: torch.Tensor, dim_out: bool) -> None:
    """Keep ``index`` along the output (``dim_out``) or input dimension of a Linear/Conv1D, in place."""
    linear = isinstance(module, nn.Linear)
    axis = (0 if linear else 1) if dim_out else (1 if linear else 0)
    module.weight = nn.Parameter(module.weight.data.index_select(axis, index).clone(), requires_grad=False)
    if dim_out and getattr(module, "bias", None) is not None:
        module.bias = nn.Parameter(module.bias.data.index_select(0, index).clone(), requires_grad=False)
    if linear:
        module.out_features, module.in_features = module.weight.shape
    elif dim_out:
        module.nf = module.weight.shape[1]  # GPT-2 Conv1D's output count


def narrow_ffn(model: nn.Module, keep: Sequence[torch.Tensor]) -> None:
    """Keep the neurons ``keep[i]`` (sorted, same count in every block) of block ``i``'s FFN and set the config width."""
    _, found = blocks(model)
    counts = {int(k.numel()) for k in keep}
    if len(keep) != len(found) or len(counts) != 1:
        raise ModelError(f"narrow_ffn needs one index set per block ({len(found)}), all of one size; got sizes {sorted(counts)}")
    for block, index in zip(found, keep):
        index = index.sort().values.to(block.ffn_out.weight.device)
        if block.fused:
            index_in = torch.cat([index, index + block.width])
        else:
            index_in = index
        for module in block.ffn_in:
            _select(module, index_in, dim_out=True)
        _select(block.ffn_out, index, dim_out=False)
    setattr(model.config, width_field(model.config), counts.pop())


def remove_attention(model: nn.Module, indices: Iterable[int]) -> None:
    """Zero every parameter of the attention modules of blocks ``indices`` and record them (see the module docstring)."""
    _, found = blocks(model)
    rec = record(model)
    for i in indices:
        with torch.no_grad():
            for p in found[i].attention.parameters():
                p.zero_()
        if i not in rec["removed_attention"]:
            rec["removed_attention"] = sorted([*rec["removed_attention"], i])


def remove_blocks(model: nn.Module, indices: Iterable[int]) -> None:
    """Drop decoder blocks ``indices``; renumber ``layer_idx`` and keep the survivors' ``layer_types`` entries."""
    layout, found = blocks(model)
    drop = sorted(set(indices))
    count = len(found)
    if any(i < 0 or i >= count for i in drop) or len(drop) >= count:
        raise ModelError(f"cannot remove blocks {drop} of {count}: indices must be in [0, {count}) and one block must stay")
    if drop and getattr(model.config, "scale_attn_by_inverse_layer_idx", False):
        raise ModelError(f"{architecture(model)} scales attention by 1/(layer index + 1): removing blocks would change the function of every later block")
    keep = [i for i in range(count) if i not in drop]
    rec = record(model)
    old_removed = rec["removed_attention"]
    parent, _, attr = layout.layers_name.rpartition(".")
    layers = nn.ModuleList([layout.layers[i] for i in keep])
    setattr(model.get_submodule(parent), attr, layers)
    for new, block in enumerate(layers):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new
    config = model.config
    types = getattr(config, "layer_types", None)
    if isinstance(types, list) and len(types) == count:
        config.layer_types = [types[i] for i in keep]
    config.num_hidden_layers = len(keep)
    originals = rec.get("original_blocks", list(range(count)))
    rec["removed_blocks"] = sorted([*rec["removed_blocks"], *(originals[i] for i in drop)])
    rec["original_blocks"] = [originals[i] for i in keep]
    rec["removed_attention"] = [keep.index(i) for i in old_removed if i in keep]


def _zero_attention(self, *args, **kwargs):
    """Forward of a removed attention module: zeros shaped like its input, the same as its zeroed weights give.

    With a KV cache the zeroed module runs as stored, so the cache keeps one entry per block."""
    if any(kwargs.get(k) is not None for k in CACHE_KWARGS):
        return type(self).forward(self, *args, **kwargs)
    hidden = args[0] if args else kwargs["hidden_states"]
    return torch.zeros_like(hidden), None


def skip_removed_attention(model: nn.Module) -> list[int]:
    """Make the recorded removed attention modules return zeros without computing (llmsparse's loader calls this)."""
    rec = getattr(model.config, CONFIG_KEY, None)
    removed = list(rec.get("removed_attention", [])) if isinstance(rec, dict) else []
    if removed:
        _, found = blocks(model)
        for i in removed:
            found[i].attention.forward = MethodType(_zero_attention, found[i].attention)
    return removed



def removed_attention_names(model: nn.Module) -> list[str]:
    """Qualified names of the recorded removed attention modules (a later unstructured run leaves them alone)."""
    rec = getattr(model.config, CONFIG_KEY, None)
    if not isinstance(rec, dict) or not rec.get("removed_attention"):
        return []
    _, found = blocks(model)
    names = {id(m): n for n, m in model.named_modules()}
    return [names[id(found[i].attention)] for i in rec["removed_attention"]]
