"""accelerate device maps with disk offload: pruning onloads each layer and writes the pruned weights back."""

from __future__ import annotations

import pytest
import torch
import transformers
from conftest import tiny_model
from test_stream import assert_same_tensors

import llmsparse
from llmsparse.pruning.offload import dispatched

DEVICE_MAPS = {
    "llama": {"model.embed_tokens": "disk", "model.layers.0": "cpu", "model.layers.1": "disk", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "disk"},
    "gemma3": {"model.embed_tokens": "cpu", "model.layers.0": "disk", "model.layers.1": "cpu", "model.layers.2": "disk", "model.norm": "cpu", "model.rotary_emb": "cpu", "model.rotary_emb_local": "cpu", "lm_head": "cpu"},
}


@pytest.mark.parametrize(
    ("arch", "settings"),
    [
        ("llama", dict(method="wanda", sparsity=0.5)),
        ("llama", dict(method="sparsegpt", pattern="2:4")),
        ("gemma3", dict(method="wanda", sparsity=0.6, layer_budget="owl", owl_lambda=0.05, reconstruct="pcg", reconstruct_iters=3)),
    ],
)
def test_disk_offloaded_model_prunes_to_the_in_memory_tensors(tmp_path, tokenizer, calib_ids, arch, settings):
    source = tmp_path / "ckpt"
    tiny_model(arch).save_pretrained(source)
    tokenizer.save_pretrained(source)
    memory, _ = llmsparse.load_model(source)
    ref = llmsparse.prune(memory, calib=calib_ids, **settings)
    device_map = DEVICE_MAPS[arch]
    if arch == "gemma3" and not hasattr(memory.model, "rotary_emb_local"):
        device_map = {k: v for k, v in device_map.items() if k != "model.rotary_emb_local"}
    model = transformers.AutoModelForCausalLM.from_pretrained(source, device_map=device_map, offload_folder=tmp_path / "offload")
    assert dispatched(model)
    before = {p.stat().st_mtime_ns for p in source.glob("*.safetensors")}
    got = llmsparse.prune(model, calib=calib_ids, **settings)
    assert [(m.name, m.zeros, m.error) for m in got.matrices] == [(m.name, m.zeros, m.error) for m in ref.matrices]
    assert {p.stat().st_mtime_ns for p in source.glob("*.safetensors")} == before  # the source shards are never written
    assert any((tmp_path / "offload").glob("model.layers.*.dat"))  # pruned weights went to the offload folder
    ids = calib_ids[:2]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, memory(ids).logits)  # the dispatched model runs the pruned weights
    model.save_pretrained(tmp_path / "dispatched")
    memory.save_pretrained(tmp_path / "memory")
    assert_same_tensors(tmp_path / "memory", tmp_path / "dispatched")
