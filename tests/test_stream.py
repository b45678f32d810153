"""Streamed pruning (--stream): the same tensors as the in-memory run, for every method and several architectures."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_model
from safetensors.torch import load_file

import llmsparse
from llmsparse.checkpoint.stream import prune_checkpoint
from llmsparse.formats import shard_files
from llmsparse.methods import METHODS


def save_checkpoint(path, arch, tokenizer, shard="40KB"):
    """A tiny model saved in several safetensors shards, with the tokenizer."""
    tiny_model(arch).save_pretrained(path, max_shard_size=shard)
    tokenizer.save_pretrained(path)
    assert len(shard_files(path)) > 2
    return path


def tensors(directory) -> dict[str, torch.Tensor]:
    out = {}
    for shard in shard_files(directory):
        out |= load_file(shard)
    return out


def assert_same_tensors(a, b):
    ta, tb = tensors(a), tensors(b)
    assert sorted(ta) == sorted(tb)
    for key in ta:
        assert ta[key].dtype == tb[key].dtype, key
        assert torch.equal(ta[key], tb[key]), key


def in_memory(checkpoint, out, fmt="dense", **settings):
    model, tok = llmsparse.load_model(checkpoint)
    report = llmsparse.prune(model, tok, **settings)
    llmsparse.save_pruned(model, tok, out, report=report, format=fmt)
    return report


def check_same(tmp_path, checkpoint, fmt="dense", **settings):
    ref = in_memory(checkpoint, tmp_path / "memory", fmt, **settings)
    got = prune_checkpoint(checkpoint, tmp_path / "streamed", format=fmt, **settings)
    assert_same_tensors(tmp_path / "memory", tmp_path / "streamed")
    assert [(m.name, m.zeros, m.error) for m in got.matrices] == [(m.name, m.zeros, m.error) for m in ref.matrices]
    assert got.layer_budget == ref.layer_budget
    assert not (tmp_path / ".streamed.partial").exists()
    meta = json.loads((tmp_path / "streamed" / "llmsparse.json").read_text())
    assert meta["report"]["matrices"] == json.loads((tmp_path / "memory" / "llmsparse.json").read_text())["report"]["matrices"]
    return got


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_streams_to_the_in_memory_tensors(tmp_path, tokenizer, calib_ids, method):
    checkpoint = save_checkpoint(tmp_path / "ckpt", "llama", tokenizer)
    check_same(tmp_path, checkpoint, method=method, sparsity=0.5, calib=calib_ids)


@pytest.mark.parametrize("arch", ["gemma3", "gpt2", "opt", "qwen3"])
def test_architectures_tied_and_untied(tmp_path, tokenizer, calib_ids, arch):
    checkpoint = save_checkpoint(tmp_path / "ckpt", arch, tokenizer)
    tied = tiny_model(arch).config.tie_word_embeddings
    check_same(tmp_path, checkpoint, method="wanda", sparsity=0.5, calib=calib_ids)
    keys = set(tensors(tmp_path / "streamed"))
    assert ("lm_head.weight" in keys) != tied


@pytest.mark.parametrize(
    "settings",
    [
        dict(method="sparsegpt", pattern="2:4"),
        dict(method="wanda", sparsity=0.6, layer_budget="owl", owl_lambda=0.05),
        dict(method="magnitude", sparsity=0.5, layer_budget="owl", owl_lambda=0.05),
        dict(method="wanda", sparsity=0.5, reconstruct="admm", reconstruct_target="dense", reconstruct_iters=5),
        dict(method="sparsegpt", sparsity=0.5, true_sequential=True),
    ],
    ids=["nm", "owl", "owl-magnitude", "reconstruct-dense", "true-sequential"],
)
def test_patterns_budgets_and_passes_stream(tmp_path, tokenizer, calib_ids, settings):
    checkpoint = save_checkpoint(tmp_path / "ckpt", "gemma3", tokenizer)
    check_same(tmp_path, checkpoint, calib=calib_ids, **settings)


def test_compact_format_and_loadable_output(tmp_path, tokenizer, calib_ids):
    checkpoint = save_checkpoint(tmp_path / "ckpt", "llama", tokenizer)
    check_same(tmp_path, checkpoint, "2:4", method="wanda", pattern="2:4", calib=calib_ids)
    a, _ = llmsparse.load_model(tmp_path / "memory")
    b, _ = llmsparse.load_model(tmp_path / "streamed")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert (tmp_path / "streamed" / "recipe.yaml").is_file() and (tmp_path / "streamed" / "README.md").is_file()


def test_dtype_cast_while_streaming(tmp_path, tokenizer, calib_ids):
    checkpoint = save_checkpoint(tmp_path / "ckpt", "llama", tokenizer)
    model, tok = llmsparse.load_model(checkpoint, dtype="bfloat16")
    report = llmsparse.prune(model, tok, method="wanda", sparsity=0.5, calib=calib_ids)
    llmsparse.save_pruned(model, tok, tmp_path / "memory", report=report)
    prune_checkpoint(checkpoint, tmp_path / "streamed", dtype="bfloat16", method="wanda", sparsity=0.5, calib=calib_ids)
    assert_same_tensors(tmp_path / "memory", tmp_path / "streamed")


def test_stream_refuses_quantization_instead_of_writing_unquantized_weights(tmp_path, tokenizer, calib_ids):
    source = save_checkpoint(tmp_path / "ckpt", "llama", tokenizer)
    with pytest.raises(llmsparse.LlmsparseError, match="--stream does not quantize"):
        prune_checkpoint(source, tmp_path / "out", method="wanda", sparsity=0.5, quantize="int4", group_size=16, calib=calib_ids)
    assert not (tmp_path / "out").exists()


def test_freed_blocks_go_back_to_the_kernel_on_glibc():
    """``prune_checkpoint`` fixes glibc's mmap threshold, so a freed layer's tensors leave the resident set (flat peak over depth)."""
    import platform

    from llmsparse.core.memory import return_freed_blocks

    assert return_freed_blocks() is (platform.libc_ver()[0] == "glibc")


def test_copy_tensor_writes_the_same_tensor_in_chunks_and_refuses_a_truncated_source(tmp_path):
    from safetensors.torch import load_file
    from safetensors.torch import save_file as reference_save

    from llmsparse.core.tensorfile import copy_tensor

    tensors = {"a": torch.randn(37, 5), "b": torch.arange(1000, dtype=torch.int32).reshape(10, 100), "c": torch.randn(3).bfloat16()}
    reference_save(tensors, str(tmp_path / "src.safetensors"))
    copy_tensor(tmp_path / "src.safetensors", "b", tmp_path / "one.safetensors", "renamed", metadata={"format": "pt"}, chunk=64)
    assert list(load_file(str(tmp_path / "one.safetensors"))) == ["renamed"]
    assert torch.equal(load_file(str(tmp_path / "one.safetensors"))["renamed"], tensors["b"])
    data = (tmp_path / "src.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-8])
    last = max(tensors, key=lambda k: json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])[k]["data_offsets"][1])
    with pytest.raises(OSError, match="truncated"):
        copy_tensor(tmp_path / "cut.safetensors", last, tmp_path / "two.safetensors", last)
