"""bench/gpu_7b.py at tiny shapes on CPU: the same code path the 7B GPU run takes, and its bad-device line."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).parent.parent / "bench" / "gpu_7b.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gpu_7b", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_on_cpu_prints_and_writes_every_row(bench, tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert bench.main(["--tiny", "--device", "cpu", "--layers", "2", "--rows", "sparsegpt:2:4", "wanda:unstructured", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["row"] for r in rows] == ["sparsegpt:2:4", "wanda:unstructured"]
    for r in rows:
        assert r["sparsity"] == 0.5 and len(r["per_layer_s"]) == 2 and r["peak_gib"] > 0
        assert sum(r["per_layer_s"]) == pytest.approx(r["seconds"], rel=0.05, abs=0.002)  # each figure is rounded to 1 ms
        assert all(v >= 0 for v in r["shares"].values()) and sum(r["shares"].values()) <= 1.0 + 1e-3
    assert rows[0]["shares"]["solve"] > 0 and rows[0]["shares"]["statistics"] > 0  # SparseGPT: Hessians and column loops timed
    assert "sparsegpt:2:4" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_line_exit_2(bench, capsys):
    assert bench.main(["--tiny", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("gpu_7b.py: error: --device cuda is not available")
