"""The sparse runtime on models: compact checkpoints load as SparseLinear layers (llmsparse and transformers entry points), dense ones convert, bad input is named."""

import json
import logging
import shutil

import pytest
import torch
from conftest import tiny_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

import llmsparse
from llmsparse.cli import main
from llmsparse.core.memory import FileMappings
from llmsparse.errors import CheckpointError, ModelError, UnknownNameError
from llmsparse.formats import FORMATS, Format, register
from llmsparse.formats import bitmask as bitmask_format
from llmsparse.runtime import SparseLinear, sparse_layers
from llmsparse.runtime import linear as linear_module


def pruned(arch, pattern=None, dtype=torch.float32, sparsity=0.6):
    model = tiny_model(arch, dtype=dtype)
    report = llmsparse.prune(model, method="magnitude", sparsity=None if pattern else sparsity, pattern=pattern)
    return model, report


def saved(tmp_path, tokenizer, arch="llama", fmt="bitmask", dtype=torch.float32, name="out"):
    model, report = pruned(arch, "2:4" if fmt == "2:4" else None, dtype)
    return model, llmsparse.save_pruned(model, tokenizer, tmp_path / name, report=report, format=fmt)


def assert_same_outputs(dense, sparse, ids, atol=1e-4):
    """Prefill logits (the decompress + GEMM path) and one decode step (the kernel path) agree with the dense model."""
    with torch.no_grad():
        a, b = dense(ids, use_cache=True), sparse(ids, use_cache=True)
        torch.testing.assert_close(b.logits, a.logits, atol=atol, rtol=1e-4)
        step = a.logits[:, -1:].argmax(-1)
        da = dense(step, past_key_values=a.past_key_values, use_cache=True).logits
        db = sparse(step, past_key_values=b.past_key_values, use_cache=True).logits
        torch.testing.assert_close(db, da, atol=atol, rtol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gemma3", "qwen3", "phi3", "opt", "gpt2"])
@pytest.mark.parametrize("fmt", ["bitmask", "2:4"])
def test_compact_checkpoints_run_sparse_with_the_dense_logits(arch, fmt, tokenizer, tmp_path, calib_ids):
    if fmt == "2:4" and arch == "gpt2":
        pytest.skip("N:M formats store nn.Linear weights only")
    model, out = saved(tmp_path, tokenizer, arch, fmt)
    sparse, _ = llmsparse.load_model(out, runtime="sparse")
    layers = sparse_layers(sparse)
    assert layers and len(layers) == len(json.loads((out / "config.json").read_text())["quantization_config"]["sparsity_config"]["targets"])
    assert not any(p.shape == m.weight.shape for m in layers.values() for p in m.parts.values())  # no dense matrix in memory
    assert_same_outputs(model, sparse, calib_ids[:2, :12])


@pytest.mark.parametrize("fmt", ["bitmask", "2:4"])
def test_a_dtype_given_at_load_casts_the_stored_values_as_a_dense_load_casts_weights(fmt, tokenizer, tmp_path, calib_ids):
    """float32 values loaded with dtype=bfloat16: the sparse layers hold bf16 values (half the bytes) and compute the dense bf16 load's logits."""
    _, out = saved(tmp_path, tokenizer, "llama", fmt)
    dense, _ = llmsparse.load_model(out, dtype="bfloat16")
    sparse, _ = llmsparse.load_model(out, runtime="sparse", dtype="bfloat16")
    layers = sparse_layers(sparse)
    assert layers and all(m.parts["compressed"].dtype == torch.bfloat16 for m in layers.values())
    as_stored, _ = llmsparse.load_model(out, runtime="sparse")
    assert all(m.parts["compressed"].dtype == torch.float32 for m in sparse_layers(as_stored).values())
    # the cast load copied every dense tensor: the parts were copied out of the file's map too, so it can be unmapped;
    # the load as stored keeps the zero-copy views (its dense weights read from the map anyway)
    mapped = FileMappings()
    assert not any(mapped.holds(t) for t in [*sparse.parameters(), *sparse.buffers()])
    assert any(mapped.holds(t) for m in sparse_layers(as_stored).values() for t in m.parts.values())
    ids = calib_ids[:1, :6]
    with torch.no_grad():
        torch.testing.assert_close(sparse(ids).logits.float(), dense(ids).logits.float(), atol=2e-2, rtol=2e-2)


def test_transformers_entry_point_loads_the_same_sparse_model(tokenizer, tmp_path, calib_ids):
    model, out = saved(tmp_path, tokenizer, "llama", "bitmask", torch.bfloat16)
    via_hf = AutoModelForCausalLM.from_pretrained(out)  # llmsparse is imported: its quantizer is registered
    via_llmsparse, _ = llmsparse.load_model(out, runtime="sparse")
    assert set(sparse_layers(via_hf)) == set(sparse_layers(via_llmsparse)) and via_hf.dtype == torch.bfloat16
    for key, value in via_llmsparse.state_dict().items():
        assert torch.equal(via_hf.state_dict()[key], value), key
    assert_same_outputs(model, via_hf, calib_ids[:2, :12], atol=0.05)
    with pytest.raises(ValueError, match="not serializable"):
        via_hf.save_pretrained(tmp_path / "again")


def test_loading_never_builds_the_dense_matrices(tokenizer, tmp_path, monkeypatch):
    _, out = saved(tmp_path, tokenizer, "llama", "bitmask")

    def refuse(*args, **kwargs):
        raise AssertionError("a dense matrix was built while loading")

    monkeypatch.setattr(bitmask_format, "decompress", refuse)
    monkeypatch.setattr(SparseLinear, "stored_dense", refuse)
    model, _ = llmsparse.load_model(out, runtime="sparse")
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]))  # a few tokens: the kernels, no decompression


def test_sharded_and_legacy_checkpoints_still_load(tokenizer, tmp_path, calib_ids):
    """Sharded compact checkpoints, and those written before the llmsparse layout (model.safetensors + compressed-tensors block)."""
    model, report = pruned("llama")
    model.save_pretrained(tmp_path / "sharded-dense", max_shard_size="100KB")
    tokenizer.save_pretrained(tmp_path / "sharded-dense")
    out = llmsparse.save_pruned(model, tokenizer, tmp_path / "sharded", report=report, format="bitmask")
    assert (out / "llmsparse.safetensors").is_file()
    from llmsparse import formats

    shards = tmp_path / "sharded-compact"
    shutil.copytree(tmp_path / "sharded-dense", shards)
    formats.compress_checkpoint(shards, formats.get_format("bitmask"), [f"{n}.weight" for n in llmsparse.core.layout.target_weights(model)])
    assert len(formats.shard_files(shards)) > 1 and all(f.name.startswith("llmsparse-") for f in formats.shard_files(shards))
    legacy = tmp_path / "legacy"
    shutil.copytree(out, legacy)
    (legacy / "llmsparse.safetensors").rename(legacy / "model.safetensors")
    config = json.loads((legacy / "config.json").read_text())
    block = config.pop("quantization_config")["sparsity_config"]
    del config["transformers_weights"]
    config["quantization_config"] = {"quant_method": "compressed-tensors", "format": "dense", "sparsity_config": block}
    (legacy / "config.json").write_text(json.dumps(config))
    for directory in (shards, legacy):
        for runtime in ("dense", "sparse"):
            again, _ = llmsparse.load_model(directory, runtime=runtime)
            assert bool(sparse_layers(again)) == (runtime == "sparse")
            assert_same_outputs(model, again, calib_ids[:1, :10])


def test_dense_checkpoints_convert_what_is_sparse_enough(tokenizer, tmp_path, model_dir, caplog):
    model, report = pruned("llama")
    out = llmsparse.save_pruned(model, tokenizer, tmp_path / "dense", report=report, format="dense")
    with caplog.at_level(logging.INFO, logger="llmsparse.runtime.convert"):
        converted, _ = llmsparse.load_model(out, runtime="auto")
    assert len(sparse_layers(converted)) == 14 and "14 matrices compressed (bitmask)" in caplog.text
    assert_same_outputs(model, converted, torch.tensor([[1, 5, 9, 13]]))
    with pytest.raises(ModelError, match="no decoder matrix is sparse enough.*runtime='dense'"):
        llmsparse.load_model(model_dir, runtime="sparse")  # an unpruned model
    dense, _ = llmsparse.load_model(model_dir, runtime="auto")  # asked to fall back: dense, with a note
    assert not sparse_layers(dense)
    with pytest.raises(UnknownNameError, match="did you mean sparse"):
        llmsparse.load_model(model_dir, runtime="sparce")


class Plain(Format):
    """A compact format without a sparse layout (stores the matrix as it is): registered in this test only."""

    name = "toy-plain"
    parts = ("values",)
    note = "toy: the matrix as it is"

    @classmethod
    def from_config(cls, block):
        return cls() if block.get("format") == "toy-plain" else None

    def compress(self, weight, name):
        return {"values": weight.clone()}

    def decompress(self, parts, name):
        return parts["values"]

    def config_block(self):
        return {"format": "toy-plain", "sparsity_structure": "unstructured"}


def test_a_format_without_a_sparse_layout_decompresses_then_compresses(tokenizer, tmp_path, calib_ids):
    register(Plain)
    try:
        model, out = saved(tmp_path, tokenizer, "llama", "toy-plain")
        sparse, _ = llmsparse.load_model(out, runtime="sparse")
        assert {m.format.label for m in sparse_layers(sparse).values()} == {"bitmask"}
        assert_same_outputs(model, sparse, calib_ids[:1, :10])
        with pytest.raises(CheckpointError, match="no sparse runtime layout"):
            AutoModelForCausalLM.from_pretrained(out)
    finally:
        del FORMATS["toy-plain"]


def test_corrupt_compact_checkpoints_get_the_same_errors(tokenizer, tmp_path):
    _, out = saved(tmp_path, tokenizer, "llama", "bitmask")
    weights = out / "llmsparse.safetensors"
    tensors = load_file(weights)
    name = "model.layers.0.self_attn.q_proj"

    def rewrite(changed):
        save_file(changed, weights, metadata={"format": "pt"})

    for changed, message in (
        ({**tensors, f"{name}.compressed": tensors[f"{name}.compressed"][:-1]}, "bitmask marks"),
        ({**tensors, f"{name}.row_offsets": tensors[f"{name}.row_offsets"] + 1}, "row_offsets"),
        ({k: v for k, v in tensors.items() if not k.startswith("model.layers.1.")}, "partial checkpoint"),
    ):
        rewrite(changed)
        with pytest.raises(CheckpointError, match=message):
            llmsparse.load_model(out, runtime="sparse")
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        llmsparse.load_model(out, runtime="sparse")


def test_activation_sparsity_fuses_with_the_sparse_runtime(tokenizer, tmp_path, calib_ids):
    """Saved thresholds come back on SparseLinear layers; sparse decode stores them input-major and skips the zeroed inputs."""
    model, report = pruned("llama")
    act = llmsparse.sparsify_activations(model, tokenizer, method="teal", sparsity=0.5, calib=calib_ids, device="cpu")
    out = llmsparse.save_pruned(model, tokenizer, tmp_path / "both", report=report, activation=act, format="bitmask")
    sparse, _ = llmsparse.load_model(out, runtime="sparse")
    assert set(llmsparse.activation.sites_of(sparse)) == set(sparse_layers(sparse))
    assert llmsparse.enable_sparse_decode(sparse) == 14 and all(m.input_major for m in sparse_layers(sparse).values())
    assert_same_outputs(model, sparse, calib_ids[:1, :10])  # the dense model with its sites: masked inputs, ordinary matmuls
    llmsparse.activation.disable_sparse_decode(sparse)
    assert not any(m.input_major for m in sparse_layers(sparse).values())


def test_generation_perplexity_and_cli_run_unchanged(tokenizer, tmp_path, capsys, monkeypatch):
    from conftest import TEST

    model, out = saved(tmp_path, tokenizer, "llama", "bitmask")
    sparse, _ = llmsparse.load_model(out, runtime="sparse")
    ids = tokenizer("The history of", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(sparse.generate(ids, max_new_tokens=8, do_sample=False), model.generate(ids, max_new_tokens=8, do_sample=False))
    monkeypatch.setattr(linear_module, "DECODE_TOKENS", 64)  # perplexity windows through the kernels too
    a = llmsparse.perplexity(model, tokenizer, str(TEST), seqlen=32, windows=2).ppl
    b = llmsparse.perplexity(sparse, tokenizer, str(TEST), seqlen=32, windows=2).ppl
    assert b == pytest.approx(a, rel=1e-4)
    assert main(["-q", "generate", str(out), "--prompt", "The", "--max-new-tokens", "3", "--runtime", "sparse"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["prune", str(out), "--method", "magnitude", "--sparsity", "0.5", "--runtime", "sparse"])
    assert "unrecognized arguments: --runtime" in capsys.readouterr().err


def test_lm_eval_scores_the_sparse_runtime_model_like_the_dense_one(tokenizer, tmp_path):
    from conftest import TEST

    from llmsparse.evaluation import ClozeConfig, build_local_tasks, evaluate

    text = tmp_path / "small.txt"
    text.write_text("\n".join(TEST.read_text(encoding="utf-8").splitlines()[:120]) + "\n", encoding="utf-8")
    build_local_tasks(text, "wt", tmp_path / "tasks", ClozeConfig(examples=8, min_words=20, max_words=60), ppl_chars=1500)
    model, out = saved(tmp_path, tokenizer, "qwen2", "bitmask")
    sparse, _ = llmsparse.load_model(out, runtime="sparse")
    tasks = ["wt_ppl", "wt_cloze_mc"]
    dense_r, sparse_r = (evaluate(m, tokenizer, tasks, include_path=tmp_path / "tasks", max_length=1024) for m in (model, sparse))
    assert sparse_r.metrics["wt_ppl"]["token_perplexity"] == pytest.approx(dense_r.metrics["wt_ppl"]["token_perplexity"], rel=1e-4)
    assert sparse_r.metrics["wt_cloze_mc"]["acc"] == dense_r.metrics["wt_cloze_mc"]["acc"]
