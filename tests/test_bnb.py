"""bitsandbytes at load: a pruned model's zeros before and after NF4 / LLM.int8, and the error without bitsandbytes.

bitsandbytes is not a dependency of the main test environment, so the loads run in a virtualenv on
top of it with bitsandbytes installed (built once and cached; skipped with the reason when it cannot be built).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_model

import llmsparse
from llmsparse.cli import main
from llmsparse.errors import ModelError

ROOT = Path(__file__).resolve().parents[1]

LOAD = """
import dataclasses, json, sys
import torch
import llmsparse
from llmsparse.core.bnb import dequantized
from llmsparse.core.layout import target_weights
model, _ = llmsparse.load_model(sys.argv[1], load_in=sys.argv[2])
report = dataclasses.asdict(model.llmsparse_bnb_sparsity)
kinds = sorted({type(m).__name__ for m in target_weights(model).values()})
with torch.no_grad():
    logits = model(torch.arange(8).unsqueeze(0)).logits
print(json.dumps({"report": report, "kinds": kinds, "finite": bool(torch.isfinite(logits).all())}))
"""


SWEEP = "import sys; from llmsparse.cli import main; sys.exit(main(sys.argv[1:]))"
TEXT = ROOT.parent / "shared" / "data" / "wikitext2" / "wiki.test.raw"


def sweep_argv(model_dir: Path, out: Path, text: Path) -> list[str]:
    return ["-q", "sweep", str(model_dir), "--methods", "magnitude", "--sparsities", "0.5", "--ppl", str(text),
            "--ppl-seqlen", "32", "--ppl-windows", "2", "--load-in", "4bit", "--output", str(out)]


def bitsandbytes_here() -> bool:
    return subprocess.run([sys.executable, "-c", "import bitsandbytes"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory, tokenizer):
    model = tiny_model("llama")
    report = llmsparse.prune(model, method="magnitude", sparsity=0.5)
    return llmsparse.save_pruned(model, tokenizer, tmp_path_factory.mktemp("bnb") / "pruned", report=report)


@pytest.mark.parametrize("load_in, kind", [("4bit", "Linear4bit"), ("8bit", "Linear8bitLt")])
def test_pruned_weights_stay_zero_after_bitsandbytes_and_kept_ones_are_counted(bnb_python, pruned_dir, load_in, kind):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([bnb_python, "-c", LOAD, str(pruned_dir), load_in], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    report = found["report"]
    assert found["kinds"] == [kind] and found["finite"]
    assert report["matrices"] == 14 and report["load_in"] == load_in
    assert report["pruned"] == report["kept"]  # magnitude 50%: half of every matrix
    assert report["pruned_still_zero"] == 1.0
    assert 0.0 <= report["kept_became_zero"] < 0.5


def test_sweep_evaluates_every_point_through_bitsandbytes(bnb_python, model_dir, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("\n".join(TEXT.read_text(encoding="utf-8").splitlines()[:60]) + "\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    out = tmp_path / "sweep"
    result = subprocess.run([bnb_python, "-c", SWEEP, *sweep_argv(model_dir, out, text)], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    run = json.loads((out / "sweep.json").read_text())
    assert run["spec"]["load_in"] == "4bit"
    point, dense = run["points"]["magnitude|0.5"], run["dense"]
    assert point["bitsandbytes"]["matrices"] == dense["bitsandbytes"]["matrices"] == 14
    assert point["bitsandbytes"]["pruned_still_zero"] == 1.0 and point["bitsandbytes"]["pruned"] == point["bitsandbytes"]["kept"]
    assert dense["bitsandbytes"]["kept_became_zero"] > 0  # NF4 rounds small weights to zero: the copy really was quantized
    assert point["eval"]["ppl"]["ppl"] > 0 and dense["eval"]["ppl"]["ppl"] > 0


SPARSIFY = """
import json, sys
import torch
import llmsparse
from llmsparse.activation import sites_of
from llmsparse.core.bnb import dequantized
model, tok = llmsparse.load_model(sys.argv[1], load_in="4bit")
report = llmsparse.sparsify_activations(model, tok, method="wina", sparsity=0.5)
q = model.model.layers[0].self_attn.q_proj
norms_ok = torch.equal(sites_of(model)["model.layers.0.self_attn.q_proj"].scale, dequantized(q).float().norm(dim=0).cpu())
ids = torch.arange(16).unsqueeze(0)
saved = llmsparse.save_pruned(model, tok, sys.argv[2], activation=report)
again, _ = llmsparse.load_model(saved)
with torch.no_grad():  # after the save: bitsandbytes repacks 4-bit weights for its CPU kernel on the first forward and back when saving
    before, after = model(ids).logits, again(ids).logits
print(json.dumps({"kind": type(again.model.layers[0].mlp.up_proj).__name__, "sites": len(sites_of(again)), "norms_ok": norms_ok,
                  "same": bool(torch.equal(before, after)), "sparse": int(report.layers[0]["q"] * 100)}))
"""


def test_sparsify_through_bitsandbytes_saves_the_quantized_model_with_its_thresholds(bnb_python, model_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([bnb_python, "-c", SPARSIFY, str(model_dir), str(tmp_path / "out")], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    # WINA's column norms come from the weights the quantized layers compute with; the reload is the same model
    assert found == {"kind": "Linear4bit", "sites": 14, "norms_ok": True, "same": True, "sparse": 50}
    out = tmp_path / "cli"
    argv = ["-q", "sparsify", str(model_dir), "--method", "teal", "--sparsity", "0.4", "--load-in", "4bit", "--calib", str(TEXT),
            "--nsamples", "2", "--seqlen", "32", "--output", str(out)]
    result = subprocess.run([bnb_python, "-c", SWEEP, *argv], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "pruned weights still zero" in result.stdout  # what NF4 did to the zeros, printed at load
    assert json.loads((out / "config.json").read_text())["quantization_config"]["load_in_4bit"] is True
    assert "--load-in 4bit" in (out / "README.md").read_text() and (out / "activation_sparsity.safetensors").is_file()


def test_sparsify_load_in_refuses_a_compact_format_before_loading(model_dir, capsys, tmp_path):
    argv = ["sparsify", str(model_dir), "--method", "teal", "--sparsity", "0.5", "--load-in", "4bit", "--calib", str(TEXT),
            "--output", str(tmp_path / "out"), "--format", "bitmask"]
    assert main(argv) == 2
    assert "--format dense" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_load_in_without_bitsandbytes_names_the_extra(model_dir, capsys, tmp_path):
    if bitsandbytes_here():
        pytest.skip("bitsandbytes is installed in this environment; the case without it cannot run here")
    with pytest.raises(ModelError, match=r'pip install "llmsparse\[bnb\]"'):
        llmsparse.load_model(model_dir, load_in="4bit")
    assert main(["generate", str(model_dir), "--prompt", "hi", "--load-in", "8bit"]) == 2
    assert 'pip install "llmsparse[bnb]"' in capsys.readouterr().err
    sparsify = ["sparsify", str(model_dir), "--method", "teal", "--sparsity", "0.5", "--load-in", "4bit", "--calib", str(TEXT), "--output", str(tmp_path / "act")]
    assert main(sparsify) == 2 and not (tmp_path / "act").exists()
    assert 'pip install "llmsparse[bnb]"' in capsys.readouterr().err
    assert main(sweep_argv(model_dir, tmp_path / "sweep", TEXT)) == 2  # before any pruning, nothing written
    assert 'pip install "llmsparse[bnb]"' in capsys.readouterr().err and not (tmp_path / "sweep").exists()


def test_load_in_refuses_a_compact_checkpoint_and_the_sparse_runtime(tokenizer, tmp_path, model_dir):
    if not bitsandbytes_here():
        with pytest.raises(ModelError, match="bitsandbytes"):
            llmsparse.load_model(model_dir, load_in="4bit", runtime="sparse")
        pytest.skip("the compact-checkpoint refusal comes after the bitsandbytes check, which fails here")
    with pytest.raises(ModelError, match="runtime"):
        llmsparse.load_model(model_dir, load_in="4bit", runtime="sparse")
    model = tiny_model("llama")
    report = llmsparse.prune(model, method="magnitude", sparsity=0.5)
    out = llmsparse.save_pruned(model, tokenizer, tmp_path / "compact", report=report, format="bitmask")
    with pytest.raises(ModelError, match="dense checkpoint"):
        llmsparse.load_model(out, load_in="4bit")
