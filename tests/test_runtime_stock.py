"""Compact checkpoints loaded the way a Hub user would: plain transformers, without llmsparse, must stop with a message naming llmsparse.

Each load runs in a fresh Python that never imports llmsparse: once in this environment (no
compressed-tensors), once in a virtualenv on top of it with compressed-tensors 0.20 installed
(built once and cached; the test is skipped with the reason when it cannot be built, e.g. offline).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_model

import llmsparse

STOCK_LOAD = """
import sys
from transformers import AutoModelForCausalLM
try:
    AutoModelForCausalLM.from_pretrained(sys.argv[1])
except Exception as err:
    print(f"{type(err).__name__}: {err}")
    sys.exit(3)
finally:
    assert "llmsparse" not in sys.modules
print("LOADED")
"""
WITH_LLMSPARSE = """
import sys
import llmsparse
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
print("SPARSE LAYERS", len(llmsparse.runtime.sparse_layers(model)))
"""


def run(python: str, script: str, directory: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [python, "-c", script, str(directory)], capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"}
    )


@pytest.fixture(scope="module")
def compact_dirs(tmp_path_factory, tokenizer):
    out = {}
    for fmt in ("bitmask", "2:4"):
        model = tiny_model("llama")
        report = llmsparse.prune(model, method="magnitude", sparsity=None if fmt == "2:4" else 0.5, pattern="2:4" if fmt == "2:4" else None)
        out[fmt] = llmsparse.save_pruned(
            model, tokenizer, tmp_path_factory.mktemp("stock") / fmt.replace(":", "of"), report=report, format=fmt
        )
    return out


@pytest.mark.parametrize("fmt", ["bitmask", "2:4"])
def test_plain_transformers_without_compressed_tensors_stops_naming_llmsparse(compact_dirs, fmt):
    if subprocess.run([sys.executable, "-c", "import compressed_tensors"], capture_output=True).returncode == 0:
        pytest.skip("compressed-tensors is installed in this environment; the case without it cannot run here")
    result = run(sys.executable, STOCK_LOAD, compact_dirs[fmt])
    assert result.returncode == 3 and "LOADED" not in result.stdout, result.stdout + result.stderr
    assert "llmsparse" in result.stdout and "pip install llmsparse" in result.stdout


@pytest.mark.parametrize("fmt", ["bitmask", "2:4"])
def test_plain_transformers_with_compressed_tensors_stops_naming_llmsparse(compact_dirs, ct_python, fmt):
    result = run(ct_python, STOCK_LOAD, compact_dirs[fmt])
    assert result.returncode == 3 and "LOADED" not in result.stdout, result.stdout + result.stderr
    assert "llmsparse" in result.stdout and "pip install llmsparse" in result.stdout
    loaded = run(ct_python, WITH_LLMSPARSE, compact_dirs[fmt])  # the same environment with llmsparse imported: the sparse model
    assert loaded.returncode == 0 and "SPARSE LAYERS 14" in loaded.stdout, loaded.stdout + loaded.stderr
