"""The second hostile-input pass (issue 31): one regression test per cause it found.

Data loss and silently wrong models first (an ``--overwrite`` that replaced a home directory, checkpoints
missing tensors, method options that pruned nothing, degenerate calibration inputs), then the inputs that
ended in a traceback and must be one line with exit code 2 and nothing written, then weaker behaviour.
The fuzz test over every method option is at the end.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import VALID, tiny_model
from safetensors.torch import load_file, save_file
from test_hostile import cli, one_line_error, run_tree

import llmsparse
from llmsparse.errors import CalibrationError, CheckpointError, LlmsparseError, OutputDirError, SparsityError

pytestmark = pytest.mark.usefixtures("one_thread")

CALIB = ["--calib", str(VALID), "--nsamples", "4", "--seqlen", "32"]


def prune_argv(model, out, *extra: str) -> list[str]:
    return ["-q", "prune", str(model), "--device", "cpu", *CALIB, "--method", "magnitude", "--sparsity", "0.5", "--output", str(out), *extra]


# --------------------------------------------------------------------------- 1. --overwrite never replaces what llmsparse did not write


def test_a_stray_marker_file_does_not_make_a_directory_replaceable(model_dir, tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    (home / "Documents").mkdir(parents=True)
    (home / ".bashrc").write_text("alias ll='ls -l'\n")
    (home / "llmsparse.json").write_text("{}")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    before = run_tree(home)
    one_line_error(capsys, cli(prune_argv(model_dir, home, "--overwrite")), "home directory")
    other = shutil.copytree(home, tmp_path / "mine")  # the same directory elsewhere: its marker is not one llmsparse wrote
    one_line_error(capsys, cli(prune_argv(model_dir, other, "--overwrite")), "not an llmsparse output", "not one llmsparse wrote")
    assert run_tree(home) == before and run_tree(other) == before


def test_overwrite_replaces_only_a_directory_holding_exactly_what_a_run_wrote(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli(prune_argv(model_dir, out)) == 0
    listed = json.loads((out / "llmsparse.json").read_text())["files"]
    assert sorted(listed) == sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    (out / "notes.txt").write_text("mine")  # a file of the user's: the directory is theirs now
    one_line_error(capsys, cli(prune_argv(model_dir, out, "--overwrite")), "holds 'notes.txt', which llmsparse did not write")
    (out / "notes.txt").unlink()
    (out / "sub").mkdir()
    one_line_error(capsys, cli(prune_argv(model_dir, out, "--overwrite")), "holds 'sub/'")
    (out / "sub").rmdir()
    (out / "README.md").unlink()  # fewer files than listed is still our output
    assert cli(prune_argv(model_dir, out, "--overwrite")) == 0 and (out / "README.md").is_file()
    with pytest.raises(OutputDirError, match="home directory"):
        llmsparse.checkpoint.outdir.check_output_dir(Path.home(), overwrite=True)


# --------------------------------------------------------------------------- 3. a matrix that misses its target is an error


@pytest.mark.parametrize("method, options", [("sparsegpt", {"blocksize": -5}), ("ria", {"a": float("nan")})])
def test_an_option_that_prunes_nothing_is_an_error_not_a_report_line(method, options, tokenizer, calib_ids):
    try:
        report = llmsparse.prune(tiny_model("llama"), tokenizer, method=method, sparsity=0.5, calib=calib_ids, device="cpu", method_options=options)
    except SparsityError as err:  # the post-run check (or, once option range checks exist, the option itself)
        assert "\n" not in str(err) and "q_proj" in str(err) and "for a target of 0.5000" in str(err)
    except LlmsparseError as err:  # refused as an out-of-range option before anything ran
        assert "\n" not in str(err) and ("blocksize" in str(err) or "'a'" in str(err) or " a " in str(err))
    else:
        pytest.fail(f"{method} {options} pruned to {report.global_sparsity} and raised nothing")


def test_a_method_that_leaves_a_matrix_dense_stops_the_run_and_saves_nothing(model_dir, tmp_path, monkeypatch, capsys):
    from llmsparse.methods.base import PruneResult
    from llmsparse.methods.magnitude import Magnitude

    real = Magnitude.prune

    def lazy(self, weight, stats, sparsity, pattern, name=""):
        return PruneResult(weight.clone()) if name.endswith("layers.1.mlp.up_proj") else real(self, weight, stats, sparsity, pattern, name=name)

    monkeypatch.setattr(Magnitude, "prune", lazy)
    out = tmp_path / "out"
    one_line_error(capsys, cli(prune_argv(model_dir, out)), "model.layers.1.mlp.up_proj: pruned by magnitude to sparsity 0.0000 for a target of 0.5000")
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_realised_sparsity_allows_rounding_and_ties_only():
    from llmsparse.core.masks import Pattern, lowest_per_row
    from llmsparse.pruning.realised import check_realised

    w = torch.randn(8, 10)
    pruned = w.masked_fill(lowest_per_row(w.abs(), 0.55), 0)  # floor(10 * 0.55) = 5 per row: 40 of the 44 asked
    assert check_realised("m", 0, pruned, 0.55, Pattern(), False) == 40
    with pytest.raises(SparsityError, match=r"m: pruned by x to sparsity 0\.0000 for a target of 0\.5000"):
        check_realised("m", 0, w, 0.5, Pattern(), False, "x")
    with pytest.raises(SparsityError, match=r"sparsity 1\.0000"):  # every weight zero for a 0.5 target
        check_realised("m", 0, torch.zeros(8, 10), 0.5, Pattern(), False)
    assert check_realised("m", 80, torch.zeros(8, 10), 0.5, Pattern(), False) == 80  # they were zero before: ties
    assert check_realised("m", 0, torch.zeros(8, 10), 0.5, Pattern(), True) == 80  # kept weights may round to zero on a grid
    with pytest.raises(SparsityError):  # but a quantized matrix may not have too few
        check_realised("m", 0, w, 0.5, Pattern(), True)
    big = torch.randn(64, 128)
    two_four = big.masked_fill(torch.arange(128).remainder(4) < 2, 0)
    assert check_realised("m", 0, two_four, 0.5, Pattern(2, 4), False) == 4096
    with pytest.raises(SparsityError):
        check_realised("m", 0, big.masked_fill(torch.arange(128).remainder(4) < 1, 0), 0.5, Pattern(2, 4), False)


# --------------------------------------------------------------------------- 4. degenerate and non-finite calibration inputs


@pytest.mark.parametrize("method", ["sparsegpt", "wanda"])
def test_an_all_zero_embedding_is_an_error_before_any_mask(method, tokenizer, calib_ids, monkeypatch):
    """Wanda would pick masks by position (every score ties); SparseGPT would zero every weight, which the post-run check also stops."""
    model = tiny_model("llama")
    model.model.embed_tokens.weight.data.zero_()
    with pytest.raises(CalibrationError, match=r"calibration inputs of model\.layers\.0\.self_attn\.q_proj are all zero"):
        llmsparse.prune(model, tokenizer, method=method, sparsity=0.5, calib=calib_ids, device="cpu")
    if method != "sparsegpt":
        return
    monkeypatch.setattr("llmsparse.pruning.api.check_statistics", lambda name, stats: None)  # without that check, the post-run one
    model = tiny_model("llama")
    model.model.embed_tokens.weight.data.zero_()
    with pytest.raises(SparsityError, match=r"q_proj: pruned by"):
        llmsparse.prune(model, tokenizer, method=method, sparsity=0.5, calib=calib_ids, device="cpu")


def test_nan_calibration_never_reads_is_saved_with_a_warning(tokenizer, calib_ids, tmp_path, caplog):
    unused = next(t for t in range(320) if t not in set(calib_ids.flatten().tolist()))
    model = tiny_model("llama")
    model.model.embed_tokens.weight.data[unused, :2] = float("nan")
    report = llmsparse.prune(model, tokenizer, method="wanda", sparsity=0.5, calib=calib_ids, device="cpu")
    with caplog.at_level("WARNING"):
        out = llmsparse.save_pruned(model, tokenizer, tmp_path / "out", report=report)
    assert "2 NaN and 0 inf values" in caplog.text and "model.embed_tokens.weight" in caplog.text
    assert json.loads((out / "llmsparse.json").read_text())["warnings"] == ["non-finite values in model.embed_tokens.weight: 2 NaN and 0 inf values"]


# --------------------------------------------------------------------------- 2. a checkpoint that does not match its config


def broken_checkpoint(tmp_path, model_dir, how: str) -> Path:
    """A copy of ``model_dir`` with one tensor deleted, one added, or a config whose hidden_size disagrees with the weights."""
    broken = shutil.copytree(model_dir, tmp_path / f"broken-{how}")
    weights = load_file(broken / "model.safetensors")
    if how == "missing":
        del weights["model.layers.0.mlp.up_proj.weight"]
    elif how == "unexpected":
        weights["model.layers.0.mlp.extra.weight"] = torch.zeros(4, 4)
    elif how == "shape":
        config = json.loads((broken / "config.json").read_text())
        (broken / "config.json").write_text(json.dumps(config | {"hidden_size": 32}))
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    return broken


BROKEN = {
    "missing": "has no tensor 'model.layers.0.mlp.up_proj.weight', which LlamaForCausalLM needs (1 missing)",
    "unexpected": "holds tensor 'model.layers.0.mlp.extra.weight', which is not part of LlamaForCausalLM",
    "shape": "has shape [320, 64] in the checkpoint, but config.json gives LlamaForCausalLM [320, 32]",
}


@pytest.mark.parametrize("how", list(BROKEN))
def test_missing_unexpected_or_misshaped_tensors_are_refused_before_pruning(how, model_dir, tmp_path, capsys):
    broken = broken_checkpoint(tmp_path, model_dir, how)
    with pytest.raises(CheckpointError, match=BROKEN[how].replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
        llmsparse.load_model(broken)
    for stream in ([], ["--stream"]):
        out = tmp_path / f"out{len(stream)}"
        line = one_line_error(capsys, cli(prune_argv(broken, out, *stream)), BROKEN[how])
        assert "tensor '" in line
        assert not out.exists() and not list(tmp_path.glob(f".{out.name}*")), list(tmp_path.glob(f".{out.name}*"))


def test_a_stream_refused_mid_run_removes_the_partial_state_it_created(tmp_path, tokenizer, capsys):
    source, out = tmp_path / "nan-in-layer-1", tmp_path / "out"
    model = tiny_model("llama")
    model.model.layers[1].mlp.up_proj.weight.data[0, 0] = float("nan")  # read only when the stream reaches layer 1
    model.save_pretrained(source)
    tokenizer.save_pretrained(source)
    one_line_error(capsys, cli(prune_argv(source, out, "--method", "wanda", "--stream")), "up_proj.weight has 1 NaN")
    assert not out.exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize("index", ["not json {", '{"metadata": {}}', '["a"]'])
def test_a_garbage_weights_index_is_one_line(index, model_dir, tmp_path, capsys):
    broken = shutil.copytree(model_dir, tmp_path / "broken")
    (broken / "model.safetensors").rename(broken / "model-00001-of-00001.safetensors")
    (broken / "model.safetensors.index.json").write_text(index)
    for argv in (prune_argv(broken, tmp_path / "out"), prune_argv(broken, tmp_path / "out", "--stream"), ["eval", str(broken), "--ppl", str(VALID)]):
        one_line_error(capsys, cli(argv), "model.safetensors.index.json")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


# --------------------------------------------------------------------------- fuzz: every method option at its edges

EDGES = {int: ["0", "-1", "nan", "inf", "1000000000000"], float: ["0", "-1", "nan", "inf", "1e30"]}


def option_cases():
    """``(method, option, value)`` for every numeric option of every registered method and each edge value.

    Every such option declares its range (``setting(..., check=...)``): asserted here, so a new option without one fails.
    """
    from llmsparse.methods import METHODS
    from llmsparse.registry import config_fields

    for name, cls in sorted(METHODS.items()):
        for f in config_fields(cls):
            kind = type(f.default)
            if kind not in EDGES:  # bool and str options: choices, checked elsewhere
                continue
            assert f.metadata.get("check"), f"{name} option {f.name} declares no range check"
            for value in EDGES[kind]:
                yield pytest.param(name, f.name, value, id=f"{name}-{f.name}={value}")


class Overran(Exception):
    pass


@pytest.mark.parametrize("method, option, value", list(option_cases()))
def test_every_method_option_at_its_edges_meets_the_target_or_is_refused_before_the_model_loads(method, option, value, model_dir, tmp_path, monkeypatch, capsys):
    import signal

    import llmsparse.cli.flags as flags

    loaded, real = [], flags.load_model

    def spy(*args, **kwargs):
        loaded.append(True)
        return real(*args, **kwargs)

    def overran(signum, frame):
        raise Overran(f"{method} {option}={value} ran over 120 s (an unbounded option?)")

    monkeypatch.setattr(flags, "load_model", spy)
    out = tmp_path / "out"
    argv = ["-q", "prune", str(model_dir), "--device", "cpu", *CALIB, "--method", method, "--sparsity", "0.5", f"--{method}-{option.replace('_', '-')}", value, "--output", str(out)]
    previous = signal.signal(signal.SIGALRM, overran)
    signal.alarm(120)
    try:
        code = cli(argv)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    if code == 2:
        line = one_line_error(capsys, code)
        assert not loaded, f"refused only after the model loaded: {line}"
        assert not out.exists()
        return
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "sparsity_report.json").read_text())
    for m in report["matrices"]:
        rows, cols = m["shape"]
        assert abs(m["zeros"] - rows * cols * 0.5) <= rows + cols, (m["name"], m["zeros"])


def test_a_pruned_weight_that_is_not_finite_is_an_error():
    from llmsparse.core.masks import Pattern
    from llmsparse.errors import NonFiniteError
    from llmsparse.pruning.realised import check_realised

    w = torch.randn(8, 10).masked_fill(torch.arange(10) < 5, 0)
    w[2, 7] = float("inf")
    with pytest.raises(NonFiniteError, match=r"m: pruned by alps to weights with 0 NaN and 1 inf values"):
        check_realised("m", 0, w, 0.5, Pattern(), False, "alps")
