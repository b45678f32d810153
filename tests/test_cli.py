"""The command line end to end on a saved tiny model: outputs that reload, recipes that repeat, bad input refused."""

import json

import pytest
import torch
import yaml
from conftest import VALID
from transformers import AutoModelForCausalLM

from llmsparse.cli import main


def prune_args(model_dir, out, *extra):
    return ["-q", "prune", str(model_dir), "--calib", str(VALID), "--nsamples", "4", "--seqlen", "32", "--output", str(out), *extra]


def layer_weights(model):
    return {k: v for k, v in model.state_dict().items() if ".layers." in k and k.endswith("proj.weight")}


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_prune_writes_a_loadable_sparse_model(model_dir, tmp_path, method, capsys):
    out = tmp_path / "out"
    assert main(prune_args(model_dir, out, "--method", method, "--sparsity", "0.5")) == 0
    assert "global sparsity 0.5000" in capsys.readouterr().out
    model = AutoModelForCausalLM.from_pretrained(out)
    weights = layer_weights(model)
    assert len(weights) == 14
    for name, w in weights.items():
        assert (w == 0).sum() == w.numel() // 2, name
    assert (model.lm_head.weight != 0).all()
    meta = json.loads((out / "llmsparse.json").read_text())
    assert meta["recipe"]["method"] == method and meta["versions"]["torch"]
    report = json.loads((out / "sparsity_report.json").read_text())
    assert report["global_sparsity"] == pytest.approx(0.5) and len(report["matrices"]) == 14
    assert (out / "tokenizer.json").is_file() and (out / "model.safetensors").is_file()


def test_recipe_repeats_the_run(model_dir, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    assert main(prune_args(model_dir, first, "--method", "sparsegpt", "--pattern", "2:4", "--sparsegpt-blocksize", "64")) == 0
    recipe = yaml.safe_load((first / "recipe.yaml").read_text())
    assert recipe["pattern"] == "2:4" and recipe["method_options"] == {"blocksize": 64} and recipe["nsamples"] == 4
    assert main(["-q", "prune", str(model_dir), "--recipe", str(first / "recipe.yaml"), "--output", str(second)]) == 0
    a = layer_weights(AutoModelForCausalLM.from_pretrained(first))
    b = layer_weights(AutoModelForCausalLM.from_pretrained(second))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_shipped_recipes_load(model_dir, tmp_path):
    from pathlib import Path

    from llmsparse import load_recipe

    recipes = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))
    assert recipes
    for path in recipes:
        assert load_recipe(path)["method"]


def test_float16_output_keeps_zeros(model_dir, tmp_path):
    out = tmp_path / "fp16"
    assert main(prune_args(model_dir, out, "--method", "wanda", "--pattern", "4:8", "--dtype", "float16")) == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    w = model.model.layers[0].mlp.down_proj.weight
    assert w.dtype == torch.float16
    assert ((w == 0).view(w.shape[0], -1, 8).sum(-1) == 4).all()


def test_jsonl_and_parquet_calibration(model_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = [line for line in VALID.read_text().splitlines() if len(line) > 200][:30]
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("\n".join(json.dumps({"content": d}) for d in docs))
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": docs}), parquet)
    common = ["-q", "prune", str(model_dir), "--method", "wanda", "--sparsity", "0.3", "--nsamples", "2", "--seqlen", "16"]
    assert main([*common, "--calib", str(jsonl), "--calib-field", "content"]) == 0
    assert main([*common, "--calib", str(parquet)]) == 0
    assert main([*common, "--calib", str(jsonl)]) == 2  # no "text" field


def test_self_calibration(model_dir, tmp_path):
    out = tmp_path / "self"
    assert main(["-q", "prune", str(model_dir), "--method", "wanda", "--sparsity", "0.5", "--calib", "self",
                 "--nsamples", "3", "--seqlen", "12", "--output", str(out)]) == 0
    assert json.loads((out / "sparsity_report.json").read_text())["calibration"]["source"] == "self"


def test_eval_and_eval_ppl(model_dir, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("\n".join(VALID.read_text().splitlines()[:60]))
    assert main(["-q", "eval", str(model_dir), "--ppl", str(text), "--seqlen", "32", "--windows", "3"]) == 0
    assert "(seqlen 32, 3 windows" in capsys.readouterr().out
    out = tmp_path / "out"
    assert main(prune_args(model_dir, out, "--method", "magnitude", "--sparsity", "0.6", "--eval-ppl", str(text),
                           "--ppl-seqlen", "32", "--ppl-windows", "2")) == 0
    printed = capsys.readouterr().out
    assert "dense  ppl" in printed and "sparse ppl" in printed
    ppl = json.loads((out / "sparsity_report.json").read_text())["evaluation"]["perplexity"]
    assert ppl["sparse"]["ppl"] != ppl["dense"]["ppl"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--method", "wanda", "--sparsity", "1.0"], "[0, 1)"),
        (["--method", "wanda", "--sparsity", "-0.1"], "[0, 1)"),
        (["--method", "wanda", "--pattern", "4:4"], "0 < N < M"),
        (["--method", "wanda", "--pattern", "2:3"], "not divisible"),
        (["--method", "wanda", "--sparsity", "0.5", "--calib", "/no/such/file.txt"], "does not exist"),
        (["--method", "sparsegpt", "--sparsity", "0.5", "--wanda-variant"], "option of wanda"),
        (["--method", "dsnot", "--sparsity", "0.5", "--init", "obc"], "unknown method 'obc'"),
        (["--method", "dsnot", "--sparsity", "0.5", "--init", "dsnot"], "another method"),
        (["--method", "wanda", "--wanda-variant", "--pattern", "2:4"], "unstructured sparsity only"),
        (["--method", "wanda", "--pattern", "2:4", "--layer-budget", "owl"], "need unstructured"),
        (["--method", "wanda", "--sparsity", "0.5", "--format", "2:4"], "use --pattern 2:4"),
        (["--method", "wanda", "--sparsity", "0.5", "--format", "csr"], "unknown format"),
        (["--method", "wanda", "--sparsity", "0.97", "--layer-budget", "owl", "--owl-lambda", "0.2"], "outside [0, 1)"),
    ],
)
def test_bad_input_is_refused_and_writes_nothing(model_dir, tmp_path, capsys, flags, message):
    out = tmp_path / "out"
    args = prune_args(model_dir, out)
    if "--calib" in flags:  # replace the default calibration file
        i = args.index("--calib")
        del args[i : i + 2]
    try:
        code = main(args + flags)
    except SystemExit as exit:  # argparse rejects unknown flags itself
        code = exit.code
    assert code == 2
    if message:
        assert message in capsys.readouterr().err
    assert not out.exists()
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_unknown_method_is_refused(model_dir, tmp_path):
    with pytest.raises(SystemExit) as exit:
        main(prune_args(model_dir, tmp_path / "out", "--method", "obc", "--sparsity", "0.5"))
    assert exit.value.code == 2


def test_unsupported_and_missing_models(tmp_path, capsys):
    weird = tmp_path / "weird"
    weird.mkdir()
    (weird / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    assert main(["prune", str(weird), "--method", "magnitude", "--sparsity", "0.5", "--output", str(tmp_path / "o")]) == 2
    assert "no-such-architecture" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "missing"), "--ppl", "x.txt"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_non_empty_output_needs_overwrite_and_only_replaces_an_llmsparse_output(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(prune_args(model_dir, out, "--method", "magnitude", "--sparsity", "0.5")) == 2
    assert main(prune_args(model_dir, out, "--method", "magnitude", "--sparsity", "0.5", "--overwrite")) == 2
    assert "not an llmsparse output" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    assert main(prune_args(model_dir, out, "--method", "magnitude", "--sparsity", "0.5")) == 0  # empty: no --overwrite needed
    (out / "extra.txt").write_text("not written by llmsparse")  # issue 31: a file the run did not write makes it the user's
    assert main(prune_args(model_dir, out, "--method", "magnitude", "--sparsity", "0.6", "--overwrite")) == 2
    (out / "extra.txt").unlink()
    assert main(prune_args(model_dir, out, "--method", "magnitude", "--sparsity", "0.6", "--overwrite")) == 0
    assert (out / "config.json").is_file()
    assert json.loads((out / "llmsparse.json").read_text())["recipe"]["sparsity"] == 0.6


def test_methods_listing(capsys):
    assert main(["methods"]) == 0
    assert "sparsegpt" in capsys.readouterr().out
