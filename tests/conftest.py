"""Shared fixtures: tiny random models of several architectures, a tokenizer trained offline, real data paths."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext2"
VALID = SHARED / "wiki.valid.tokens"
TEST = SHARED / "wiki.test.raw"

VOCAB = 320


def tiny_config(arch: str):
    """A 2-3 layer config with widths divisible by 8 (so 2:4 and 4:8 patterns apply)."""
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_attention_heads=4)
    if arch == "llama":
        return transformers.LlamaConfig(num_hidden_layers=2, num_key_value_heads=2, **common)
    if arch == "mistral":
        return transformers.MistralConfig(num_hidden_layers=2, num_key_value_heads=2, sliding_window=16, **common)
    if arch == "qwen2":
        return transformers.Qwen2Config(num_hidden_layers=2, num_key_value_heads=2, **common)
    if arch == "qwen3":
        return transformers.Qwen3Config(num_hidden_layers=2, num_key_value_heads=2, head_dim=16, **common)
    if arch == "gemma2":
        return transformers.Gemma2Config(num_hidden_layers=2, num_key_value_heads=2, head_dim=16, sliding_window=8, **common)
    if arch == "gemma3":
        return transformers.Gemma3TextConfig(
            num_hidden_layers=3,
            num_key_value_heads=1,
            head_dim=16,
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            **common,
        )
    if arch == "phi3":
        return transformers.Phi3Config(num_hidden_layers=2, num_key_value_heads=4, pad_token_id=0, **common)
    if arch == "gpt2":
        return transformers.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128, bos_token_id=0, eos_token_id=1)
    if arch == "opt":
        return transformers.OPTConfig(
            vocab_size=VOCAB, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
            word_embed_proj_dim=64, max_position_embeddings=128, pad_token_id=1, bos_token_id=0, eos_token_id=1,
        )
    raise ValueError(arch)


ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "gpt2", "opt"]


def tiny_model(arch: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A random tiny model; ``dtype`` as ``from_pretrained`` would give it (rotary tables stay float32)."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(tiny_config(arch), dtype=dtype)
    return model.eval()


@pytest.fixture(scope="session")
def tokenizer():
    """A byte-level BPE tokenizer trained on a slice of WikiText-2 valid (no downloads)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    lines = VALID.read_text(encoding="utf-8").splitlines()[:400]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(lines, trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


@pytest.fixture
def model_dir(tmp_path, tokenizer):
    """A saved tiny Llama with tokenizer: what the CLI gets as MODEL."""
    path = tmp_path / "tiny-llama"
    tiny_model("llama").save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def calib_ids():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, VOCAB, (8, 32), generator=g)


CT_REQUIREMENT = "compressed-tensors==0.20.*"
BNB_REQUIREMENT = "bitsandbytes>=0.50"


def venv_python(name: str, requirement: str, module: str) -> str:
    """A Python with ``requirement`` installed next to this environment's packages (``python -m venv --system-site-packages``),
    built once under the llmsparse cache, so the main environment (what other tests see) never changes; skips when it cannot be built."""
    from llmsparse.checkpoint.load import cache_dir

    venv = Path(os.environ.get(f"LLMSPARSE_{name.upper()}_VENV", cache_dir() / f"test-venv-{name}"))
    python = venv / "bin" / "python"
    check = [str(python), "-c", f"import {module}, transformers"]
    if not python.is_file() or subprocess.run(check, capture_output=True).returncode:
        try:
            subprocess.run(
                [sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, capture_output=True, timeout=120
            )
            subprocess.run(
                [str(python), "-m", "pip", "install", "-q", requirement], check=True, capture_output=True, text=True, timeout=600
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as err:
            detail = getattr(err, "stderr", "") or ""
            pytest.skip(f"could not build a virtualenv with {requirement} ({type(err).__name__}: {str(detail).strip()[-300:]})")
    return str(python)


@pytest.fixture(scope="session")
def ct_python() -> str:
    """A Python with compressed-tensors 0.20 (``LLMSPARSE_CT_VENV`` overrides where its virtualenv lives)."""
    return venv_python("ct", CT_REQUIREMENT, "compressed_tensors")


@pytest.fixture(scope="session")
def bnb_python() -> str:
    """A Python with bitsandbytes (``LLMSPARSE_BNB_VENV`` overrides where its virtualenv lives)."""
    return venv_python("bnb", BNB_REQUIREMENT, "bitsandbytes")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and a second one only contends with other work on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def float32_forwards_by_default(request, monkeypatch):
    """Tests see a CPU without native bf16, so ``compute_dtype='auto'`` is float32 and results do not depend on the
    machine that runs them (test_cpu.py checks the detection and ``auto`` itself, with the real or a mocked CPU)."""
    if request.module.__name__ != "test_cpu":
        from llmsparse.core import cpu

        monkeypatch.setattr(cpu, "native_bf16", lambda device: False)


@pytest.fixture(autouse=True)
def grad_mode_left_on():
    """A test (or the library under it) that leaves autograd switched off breaks every later training test far away."""
    yield
    if not torch.is_grad_enabled():
        torch.set_grad_enabled(True)
        pytest.fail("this test left torch's grad mode disabled")
