"""Quantized exports: pack-quantized reloads through plain transformers + compressed-tensors 0.20 (no llmsparse import)
with the dequantized weights llmsparse holds in memory; the bitmask export of a quantized model reloads bit-exactly."""

import json
import os
import subprocess

import pytest
import torch
from conftest import tiny_model
from safetensors.torch import load_file

import llmsparse
from llmsparse.cli import main
from llmsparse.core.layout import target_weights
from llmsparse.errors import CheckpointError
from llmsparse.formats.packquant import pack_int32, unpack_int32

STOCK_DUMP = """
import sys
from safetensors.torch import save_file
import torch
from transformers import AutoModelForCausalLM
from transformers.utils.quantization_config import CompressedTensorsConfig
packed = AutoModelForCausalLM.from_pretrained(sys.argv[1])  # runs from the packed codes
dense = AutoModelForCausalLM.from_pretrained(sys.argv[1], quantization_config=CompressedTensorsConfig(run_compressed=False))
assert "llmsparse" not in sys.modules
ids = torch.arange(16).unsqueeze(0)
with torch.no_grad():
    same = torch.allclose(packed(ids).logits.float(), dense(ids).logits.float(), atol=1e-2)
weights = {n + ".weight": m.weight.data.contiguous() for n, m in dense.named_modules() if isinstance(m, torch.nn.Linear)}
save_file(weights, sys.argv[2])
print("LOADED", len(weights), "packed == decompressed:", same)
"""

CASES = {
    "sparsegpt-int4-g32-sym-fp32": (dict(method="sparsegpt", sparsity=0.5, quantize="int4", group_size=32), torch.float32),
    "wanda-2:4-int8-channel-sym-bf16": (dict(method="wanda", pattern="2:4", quantize="int8", group_size=-1), torch.bfloat16),
    "magnitude-int4-g16-sym-rtn-bf16": (dict(method="magnitude", sparsity=0.5, quantize="int4", group_size=16, quantize_method="rtn"), torch.bfloat16),
}


@pytest.mark.parametrize("bits", [4, 8])
def test_int32_packing_round_trips_and_matches_the_documented_bit_order(bits):
    codes = torch.randint(-(1 << (bits - 1)), 1 << (bits - 1), (3, 64), dtype=torch.int8, generator=torch.Generator().manual_seed(0))
    packed = pack_int32(codes, bits)
    assert packed.dtype == torch.int32 and list(packed.shape) == [3, 64 * bits // 32]
    assert torch.equal(unpack_int32(packed, bits, 64), codes)
    word = int(packed[0, 0]) & 0xFFFFFFFF
    per = 32 // bits
    assert [(word >> (bits * k)) & ((1 << bits) - 1) for k in range(per)] == [int(c) + (1 << (bits - 1)) for c in codes[0, :per]]


@pytest.mark.parametrize("case", list(CASES))
def test_pack_quantized_reloads_in_stock_transformers_with_identical_weights(case, ct_python, tokenizer, calib_ids, tmp_path):
    kwargs, dtype = CASES[case]
    model = tiny_model("llama", dtype=dtype)
    report = llmsparse.prune(model, calib=calib_ids, device="cpu", **kwargs)
    out = llmsparse.save_pruned(model, tokenizer, tmp_path / "packed", report=report, format="pack-quantized")
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["format"] == "pack-quantized" and "sparsity_config" not in config and config["ignore"] == ["lm_head"]
    assert report.storage["bytes_compressed"] < report.storage["bytes_dense"] / (3 if kwargs["quantize"] == "int4" else 1.5)
    stored = load_file(out / "model.safetensors")
    assert not any(k.endswith("proj.weight") for k in stored) and any(k.endswith("weight_packed") for k in stored)

    dump = tmp_path / "stock.safetensors"
    result = subprocess.run(
        [ct_python, "-c", STOCK_DUMP, str(out), str(dump)], capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"}
    )
    assert result.returncode == 0 and "packed == decompressed: True" in result.stdout, result.stdout + result.stderr[-3000:]
    theirs = load_file(dump)
    for name, module in target_weights(model).items():
        ours = module.weight.data
        assert theirs[name + ".weight"].dtype == ours.dtype
        assert torch.equal(theirs[name + ".weight"], ours), name  # bit for bit, pruned zeros included


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_quantized_bitmask_export_stores_codes_and_reloads_bit_exactly(tokenizer, calib_ids, tmp_path, symmetric):
    model = tiny_model("llama", dtype=torch.bfloat16)
    plain = llmsparse.prune(tiny_model("llama", dtype=torch.bfloat16), method="wanda", sparsity=0.5, calib=calib_ids)
    plain_out = llmsparse.save_pruned(tiny_model("llama", dtype=torch.bfloat16), tokenizer, tmp_path / "plain", report=plain, format="bitmask")
    report = llmsparse.prune(model, method="wanda", sparsity=0.5, calib=calib_ids, quantize="int4", group_size=32, symmetric=symmetric)
    out = llmsparse.save_pruned(model, tokenizer, tmp_path / "bitmask", report=report, format="bitmask")
    stored = load_file(out / "llmsparse.safetensors")
    assert "model.layers.0.mlp.up_proj.codes" in stored and "model.layers.0.mlp.up_proj.compressed" not in stored
    assert ("model.layers.0.mlp.up_proj.zero_point" in stored) != symmetric
    assert report.storage["bytes_compressed"] < 0.6 * plain.storage["bytes_compressed"] and plain_out.exists()
    loaded, _ = llmsparse.load_model(out)
    theirs = loaded.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(theirs[key], value), key
    sparse, _ = llmsparse.load_model(out, runtime="sparse")  # the runtime reads the same values from the codes
    ids = torch.arange(12).unsqueeze(0)
    with torch.no_grad():
        assert torch.allclose(sparse(ids).logits.float(), model(ids).logits.float(), atol=2e-2)


def test_pack_quantized_without_quantization_is_refused_before_anything_is_written(model_dir, tokenizer, tmp_path, capsys):
    model = tiny_model("llama")
    report = llmsparse.prune(model, method="magnitude", sparsity=0.5)
    with pytest.raises(CheckpointError, match="not quantized"):
        llmsparse.save_pruned(model, tokenizer, tmp_path / "api", report=report, format="pack-quantized")
    assert not (tmp_path / "api").exists()
    out = tmp_path / "cli"
    assert main(["prune", str(model_dir), "--method", "magnitude", "--sparsity", "0.5", "--format", "pack-quantized", "--output", str(out)]) == 2
    assert "add --quantize" in capsys.readouterr().err and not out.exists()


def test_cli_quantize_saves_pack_quantized_by_default_and_refuses_it_for_an_asymmetric_grid(model_dir, tmp_path, capsys):
    out = tmp_path / "q"
    args = ["prune", str(model_dir), "--method", "magnitude", "--sparsity", "0.5", "--quantize", "int8", "--quantize-method", "rtn", "--group-size", "32"]
    assert main([*args, "--output", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    weights = config["config_groups"]["group_0"]["weights"]
    assert config["format"] == "pack-quantized" and weights["symmetric"] is True and weights["num_bits"] == 8 and weights["group_size"] == 32
    assert "bytes pack-quantized" in capsys.readouterr().out
    asym = tmp_path / "asym"
    assert main([*args, "--asymmetric", "--output", str(asym)]) == 2
    assert "symmetric grids only" in capsys.readouterr().err and not asym.exists()
    assert main([*args, "--asymmetric", "--format", "bitmask", "--output", str(asym)]) == 0
    assert "symmetric: false" in (asym / "recipe.yaml").read_text()
