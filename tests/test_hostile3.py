"""The second hostile-input pass (issue 31), continued: inputs that ended in a traceback (item 5) and weak behaviour (item 6).

Each must be one ``llmsparse: error:`` line with exit code 2 and nothing written, refused before the model loads
where the input allows it (``no_load``). Items 1-4 and the fuzz test over method options are in ``test_hostile2.py``.
"""

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest
from conftest import VALID, tiny_model
from test_crash_safety import leftovers, prune_argv, start_paused, stop
from test_hostile import cli, no_load, one_line_error, run_tree  # noqa: F401 - no_load is a fixture

import llmsparse
from llmsparse.checkpoint import resume
from llmsparse.errors import EvaluationError, MemoryLimitError, ModelError, OutputDirError, RecipeError, ResumeError

pytestmark = pytest.mark.usefixtures("one_thread")


def prune(model, out, *extra: str) -> list[str]:
    return ["prune", str(model), "--device", "cpu", "--calib", str(VALID), "--nsamples", "4", "--seqlen", "32",
            "--method", "magnitude", "--sparsity", "0.5", "--output", str(out), *extra]


class Crash(Exception):
    pass


# --------------------------------------------------------------------------- 5. tracebacks that are now one line


@pytest.mark.usefixtures("no_load")
def test_a_calibration_set_bigger_than_memory_is_refused_before_allocating(model_dir, tmp_path, capsys, tokenizer):
    one_line_error(capsys, cli(prune(model_dir, tmp_path / "out", "--method", "wanda", "--nsamples", "2000000000")), "2000000000 sequences", "lower --nsamples")
    with pytest.raises(MemoryLimitError, match="lower --nsamples"):
        llmsparse.prune(tiny_model("llama"), tokenizer, method="wanda", sparsity=0.5, calib=str(VALID), nsamples=2_000_000_000, seqlen=32, device="cpu")
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("no_load")
@pytest.mark.parametrize("name", ["a" * 300, "b" * 240])
def test_an_output_name_too_long_for_the_file_system_is_one_line(name, model_dir, tmp_path, capsys):
    one_line_error(capsys, cli(prune(model_dir, tmp_path / name)), "bytes; the file system allows")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-llama"]


def test_a_full_disk_while_saving_is_one_line_and_the_staging_is_removed(model_dir, tmp_path, monkeypatch, capsys):
    from safetensors import SafetensorError
    from transformers import PreTrainedModel

    def full(self, *args, **kwargs):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    one_line_error(capsys, cli(prune(model_dir, tmp_path / "out")), "cannot write output", "No space left on device", "nothing was saved")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-llama"]  # no output, no staging, no lock
    with pytest.raises(OutputDirError, match="No space left"):
        llmsparse.save_pruned(tiny_model("llama"), None, tmp_path / "out2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-llama"]


@pytest.mark.usefixtures("no_load")
def test_a_model_argument_that_is_a_file_or_an_unreadable_gguf(model_dir, tmp_path, monkeypatch, capsys):
    config = str(model_dir / "config.json")
    for argv in (prune(config, tmp_path / "out"), ["generate", config, "--prompt", "hi"], ["eval", config, "--ppl", str(VALID)]):
        one_line_error(capsys, cli(argv), "is a file: give the directory that holds config.json")
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    monkeypatch.setenv("LLMSPARSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf fails as it does without the package
    with pytest.raises(ModelError, match="needs the gguf package: pip install gguf"):
        llmsparse.load_model(gguf)
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


@pytest.mark.usefixtures("no_load")
def test_a_malformed_sweep_record_is_one_line(model_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["sweep", str(model_dir), "--methods", "magnitude", "--sparsities", "0.5", "--ppl", str(VALID), "--output", str(out)]
    out.mkdir()
    for text in ("{not json", '{"spec": 5, "points": {}, "commands": []}', '{"spec": {}, "points": {"x": 1}, "commands": []}', "\udcff"):
        (out / "sweep.json").write_bytes(text.encode("utf-8", "surrogateescape"))
        one_line_error(capsys, cli(argv), "sweep.json is not a readable sweep record")
    assert [p.name for p in out.iterdir()] == ["sweep.json"]


@pytest.mark.usefixtures("no_load")
def test_eval_seqlen_past_the_models_positions(model_dir, tokenizer, capsys):
    for seqlen in ("5000", "3000"):
        one_line_error(capsys, cli(["eval", str(model_dir), "--ppl", str(VALID), "--seqlen", seqlen]), f"perplexity seqlen {seqlen} exceeds the model's 2048 positions")
    with pytest.raises(EvaluationError, match="exceeds the model's 2048 positions"):
        llmsparse.evaluation.perplexity(tiny_model("llama"), tokenizer, str(VALID), 5000)


@pytest.mark.usefixtures("no_load")
def test_a_recipe_nested_too_deeply_is_one_line(model_dir, tmp_path, capsys):
    recipe = tmp_path / "deep.yaml"
    recipe.write_text("method_options: " + "[" * 20000 + "]" * 20000 + "\n")
    one_line_error(capsys, cli(["prune", str(model_dir), "--recipe", str(recipe)]), "nested too deeply")
    with pytest.raises(RecipeError, match="nested too deeply"):
        llmsparse.checkpoint.recipe.load_recipe(recipe)


@pytest.mark.usefixtures("no_load")
def test_a_pack_quantized_checkpoint_without_compressed_tensors_names_the_package(model_dir, tmp_path, capsys):
    if __import__("importlib").util.find_spec("compressed_tensors") is not None:
        pytest.skip("compressed-tensors is installed here")
    packed = shutil.copytree(model_dir, tmp_path / "packed")
    config = json.loads((packed / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups": {"group_0": {"targets": ["Linear"]}}}
    (packed / "config.json").write_text(json.dumps(config))
    for argv in (["generate", str(packed), "--prompt", "hi"], ["eval", str(packed), "--ppl", str(VALID)], prune(packed, tmp_path / "out")):
        one_line_error(capsys, cli(argv), "pip install 'compressed-tensors==0.20.*'")
    with pytest.raises(ModelError, match="compressed-tensors"):
        llmsparse.load_model(packed)


def test_a_damaged_resume_state_is_one_line(model_dir, tmp_path, calib_ids, monkeypatch, capsys):
    out = tmp_path / "out"
    partial = resume.partial_dir(out)
    partial.write_text("a file, not a directory")
    one_line_error(capsys, cli(prune(model_dir, out, "--method", "wanda", "--stream", "--resume")), "is not an interrupted run's state directory")
    assert partial.read_text() == "a file, not a directory"  # the user's file is kept
    partial.unlink()
    settings = dict(method="wanda", sparsity=0.5, calib=calib_ids, device="cpu")
    real = resume.Partial.record

    def crash(self, *args, **kwargs):
        real(self, *args, **kwargs)
        raise Crash

    with monkeypatch.context() as m:
        m.setattr(resume.Partial, "record", crash)
        with pytest.raises(Crash):
            llmsparse.prune_checkpoint(model_dir, out, **settings)
    inputs = list(partial.glob("inputs-*.safetensors"))
    assert len(inputs) == 1
    inputs[0].unlink()
    with pytest.raises(ResumeError, match="is damaged .*FileNotFoundError"):
        llmsparse.prune_checkpoint(model_dir, out, resume=True, **settings)
    (partial / "state.json").write_text("garbage{")
    with pytest.raises(ResumeError, match=r"state\.json is damaged"):
        llmsparse.prune_checkpoint(model_dir, out, resume=True, **settings)
    (partial / "state.json").write_text("[]")
    with pytest.raises(ResumeError, match="not the state of an interrupted llmsparse run"):
        llmsparse.prune_checkpoint(model_dir, out, resume=True, **settings)
    assert partial.is_dir() and not out.exists()  # a damaged state is reported, never removed behind the user's back


@pytest.mark.usefixtures("no_load")
def test_local_tasks_whose_data_is_gone_and_a_binary_text_for_the_builder(model_dir, tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))
    import build_tasks

    tasks = tmp_path / "tasks"
    assert build_tasks.main([str(VALID), "--name", "wt", "--out", str(tasks), "--ppl-chars", "2000"]) == 0
    (tasks / "wt_cloze.jsonl").unlink()
    capsys.readouterr()
    one_line_error(capsys, cli(["eval", str(model_dir), "--tasks", "wt", "--include-path", str(tasks)]), "task 'wt_cloze", "wt_cloze.jsonl', which does not exist")
    binary = tmp_path / "data.bin"
    binary.write_bytes(bytes(range(256)) * 8)
    assert build_tasks.main([str(binary), "--name", "bin", "--out", str(tmp_path / "bin")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("build_tasks: error:") and "not UTF-8 text" in err and err.count("\n") == 1
    assert not (tmp_path / "bin").exists()


# --------------------------------------------------------------------------- 6. weak behaviour


def test_saved_files_follow_the_umask(model_dir, tmp_path):
    old = os.umask(0o022)
    try:
        assert cli(prune(model_dir, tmp_path / "out")) == 0
        modes = {p.name: oct(p.stat().st_mode & 0o777) for p in (tmp_path / "out").iterdir()}
        os.umask(0o077)
        assert cli(prune(model_dir, tmp_path / "private")) == 0
        private = {oct(p.stat().st_mode & 0o777) for p in (tmp_path / "private").iterdir()}
    finally:
        os.umask(old)
    assert set(modes.values()) == {"0o644"} and "model.safetensors" in modes, modes
    assert private == {"0o600"} and oct((tmp_path / "private").stat().st_mode & 0o777) == "0o700"


@pytest.mark.parametrize("point", ["prune", "staged"])
def test_sigterm_cleans_up_like_ctrl_c(model_dir, tmp_path, point):
    out = tmp_path / "new" / "out"
    code, err = stop(start_paused(point, prune_argv(model_dir, out)), signal.SIGTERM)
    assert code == 143 and err.strip().splitlines()[-1] == "llmsparse: terminated" and "Traceback" not in err
    assert not (tmp_path / "new").exists() and leftovers(out) == []


@pytest.mark.usefixtures("no_load")
@pytest.mark.parametrize(
    "argv, needles",
    [
        (["--output", ""], ["--output: is empty"]),
        (["--method", "wanda", "--calib", "{nul}"], ["holds no text (only control characters such as NUL bytes)"]),
        (["--method", "wanda", "--calib", "c4"], ["--calib c4 downloads from the Hub, which cannot be reached"]),
        (["--compute-dtype", "int8"], ["unknown compute dtype 'int8'"]),
        (["--quantize", "int4", "--group-size", "32", "--asymmetric"], ["--asymmetric: --format pack-quantized (the default with --quantize) stores symmetric grids only"]),
        (["--stream", "--eval-ppl", str(VALID)], ["(llmsparse eval DIR)"]),
    ],
)
def test_weak_inputs_are_refused_before_the_model_loads(argv, needles, model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # offline, whatever the machine
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    nul = tmp_path / "nul.txt"
    nul.write_bytes(bytes(200_000))
    before = run_tree(tmp_path)
    one_line_error(capsys, cli([*prune(model_dir, tmp_path / "out"), *(a.format(nul=nul) for a in argv)]), *needles)
    assert run_tree(tmp_path) == before


@pytest.mark.usefixtures("no_load")
def test_a_corrupt_tokenizer_and_a_long_prompt(model_dir, tmp_path, tokenizer, capsys):
    broken = shutil.copytree(model_dir, tmp_path / "broken")
    text = (broken / "tokenizer.json").read_text()
    (broken / "tokenizer.json").write_text(text[: len(text) // 2])
    for argv in (prune(broken, tmp_path / "out"), ["generate", str(broken), "--prompt", "hi"], ["eval", str(broken), "--ppl", str(VALID)]):
        one_line_error(capsys, cli(argv), "tokenizer file", "is corrupt")
    from llmsparse.activation.decode import timed_generate
    from llmsparse.errors import SettingsError

    prompt = "The city " * 300
    n = tokenizer(prompt, return_tensors="pt").input_ids.shape[1]
    with pytest.raises(SettingsError, match=rf"the prompt's {n} tokens \+ max_new_tokens 2000 need {n + 1999} positions, past the model's 2048: give at most max_new_tokens {2049 - n}"):
        timed_generate(tiny_model("llama"), tokenizer, prompt, 2000)
    assert 2049 - n + n - 1 == 2048 and timed_generate(tiny_model("llama"), tokenizer, "hi", 4).new_tokens == 4
