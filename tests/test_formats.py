"""Compact sparse checkpoints: round trips on several architectures, the documented layout, corrupt files."""

import json

import numpy as np
import pytest
import torch
from conftest import tiny_model
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import llmsparse
from llmsparse.core.masks import Pattern
from llmsparse.errors import CheckpointError, UnknownNameError
from llmsparse.formats import get_format
from llmsparse.formats.base import pack_bits, unpack_bits
from llmsparse.formats.bitmask import bitmask_compress, decompress
from llmsparse.formats.nm import nm_compress


def test_bit_packing_is_little_endian():
    mask = torch.tensor([[True, False, False, False, False, False, False, False, False, True]])
    packed = pack_bits(mask)
    assert packed.tolist() == [[1, 2]]  # bit 0 of byte 0 is column 0; column 9 is bit 1 of byte 1
    assert torch.equal(unpack_bits(packed, 10), mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_bitmask_and_nm_round_trip(dtype):
    w = torch.randn(6, 24).to(dtype)
    w[w.abs() < 0.7] = 0
    parts = bitmask_compress(w)
    assert parts["compressed"].dtype == dtype and parts["row_offsets"].tolist()[0] == 0
    assert torch.equal(decompress(parts), w)
    w24 = torch.randn(6, 24).to(dtype)
    w24.view(6, -1, 4)[..., :2] = 0
    w24[0, 4:8] = 0  # a group with more zeros than required keeps zeros
    parts = nm_compress(w24, Pattern(2, 4))
    assert list(parts["compressed"].shape) == [6, 12] and list(parts["shape"].shape) == [2, 1]
    assert torch.equal(decompress(parts), w24)
    with pytest.raises(CheckpointError, match="not 2:4 sparse"):
        nm_compress(torch.ones(2, 8), Pattern(2, 4), "x")


def test_format_names():
    assert get_format("bitmask").label == "bitmask" and not hasattr(get_format("bitmask"), "pattern")
    assert (get_format("4:8").label, get_format("4:8").pattern) == ("4:8", Pattern(4, 8))
    with pytest.raises(UnknownNameError, match="unknown format"):
        get_format("csr")


def pruned(arch, pattern, calib_ids, dtype=torch.float32):
    model = tiny_model(arch, dtype=dtype)
    report = llmsparse.prune(model, method="wanda", sparsity=None if pattern else 0.5, pattern=pattern, calib=calib_ids, device="cpu")
    return model, report


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "opt"])
@pytest.mark.parametrize("fmt", ["dense", "bitmask", "2:4"])
def test_saved_checkpoint_reloads_bit_exact(arch, fmt, tokenizer, tmp_path, calib_ids):
    model, report = pruned(arch, "2:4" if fmt == "2:4" else None, calib_ids, torch.bfloat16)
    out = llmsparse.save_pruned(model, tokenizer, tmp_path / "out", report=report, format=fmt)
    again, _ = llmsparse.load_model(out)
    expected = model.state_dict()
    for key, value in again.state_dict().items():
        assert value.dtype == expected[key].dtype and torch.equal(value, expected[key]), key
    with torch.no_grad():
        assert torch.equal(again(calib_ids[:2]).logits, model(calib_ids[:2]).logits)
    config = json.loads((out / "config.json").read_text())
    if fmt == "dense":
        assert "quantization_config" not in config
    else:
        sparsity = config["quantization_config"]["sparsity_config"]
        assert sparsity["format"] == {"bitmask": "sparse-bitmask", "2:4": "sparse-24-bitmask"}[fmt]
        assert sparsity["global_sparsity"] == pytest.approx(0.5)
        # half the values plus 1 bit per weight (2 bytes each); bitmask adds 8 bytes of row offset per 64-wide row here
        bound = 0.5 + 1 / 16 + (8 / 128 if fmt == "bitmask" else 0) + 0.005  # + shape tensors
        assert report.storage["bytes_compressed"] < bound * report.storage["bytes_dense"]


def test_bitmask_layout_is_readable_with_numpy(tokenizer, tmp_path, calib_ids):
    """Decode one matrix by hand from the layout in the docs: values, little-endian bits, row offsets."""
    model, report = pruned("llama", None, calib_ids)
    out = llmsparse.save_pruned(model, tokenizer, tmp_path / "out", report=report, format="bitmask")
    name = "model.layers.1.mlp.down_proj"
    with safe_open(out / "llmsparse.safetensors", "np") as f:
        shape = f.get_tensor(f"{name}.shape")
        values = f.get_tensor(f"{name}.compressed")
        bits = f.get_tensor(f"{name}.bitmask")
        offsets = f.get_tensor(f"{name}.row_offsets")
        assert f"{name}.weight" not in f.keys()
    rows, cols = shape.tolist()
    dense = np.zeros((rows, cols), dtype=values.dtype)
    for r in range(rows):
        columns = [c for c in range(cols) if bits[r, c // 8] >> (c % 8) & 1]
        dense[r, columns] = values[offsets[r] : offsets[r] + len(columns)]
    assert np.array_equal(dense, model.model.layers[1].mlp.down_proj.weight.detach().numpy())


def test_corrupt_and_partial_checkpoints_are_named(tokenizer, tmp_path, calib_ids):
    model, report = pruned("llama", None, calib_ids)
    out = llmsparse.save_pruned(model, tokenizer, tmp_path / "out", report=report, format="bitmask")
    weights = out / "llmsparse.safetensors"
    tensors = load_file(weights)
    name = "model.layers.0.self_attn.q_proj"

    def rewrite(**changes):
        save_file({**tensors, **changes}, weights, metadata={"format": "pt"})

    rewrite(**{f"{name}.compressed": tensors[f"{name}.compressed"][:-1]})
    with pytest.raises(CheckpointError, match="bitmask marks"):
        llmsparse.load_model(out)
    rewrite(**{f"{name}.row_offsets": tensors[f"{name}.row_offsets"] + 1})
    with pytest.raises(CheckpointError, match="row_offsets"):
        llmsparse.load_model(out)
    save_file({k: v for k, v in tensors.items() if not k.startswith("model.layers.1.")}, weights, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="partial checkpoint"):
        llmsparse.load_model(out)
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        llmsparse.load_model(out)


def test_bad_format_requests_write_nothing(tokenizer, tmp_path, calib_ids):
    model, report = pruned("llama", None, calib_ids)
    with pytest.raises(CheckpointError, match="not 2:4 sparse"):
        llmsparse.save_pruned(model, tokenizer, tmp_path / "a", report=report, format="2:4")
    with pytest.raises(UnknownNameError, match="unknown format"):
        llmsparse.save_pruned(model, tokenizer, tmp_path / "b", report=report, format="csr")
    gpt2, gpt2_report = pruned("gpt2", "2:4", calib_ids)
    with pytest.raises(CheckpointError, match="not one"):
        llmsparse.save_pruned(gpt2, tokenizer, tmp_path / "c", report=gpt2_report, format="2:4")
    assert list(tmp_path.iterdir()) == []
