"""The hostile-input pass (issue 18): one regression test per defect it found, and every bad input it
listed refused with one line and exit code 2, before the model loads where that is possible.

Killed and interrupted runs, and two runs into one output, are in ``test_crash_safety.py``; random
settings are in ``test_properties.py``.
"""

import json
import shutil

import pytest
import torch
import yaml
from conftest import VALID, tiny_model

import llmsparse
from llmsparse.activation.decode import timed_generate
from llmsparse.checkpoint.outdir import publish, staging
from llmsparse.cli import main
from llmsparse.errors import LlmsparseError, ModelError, NonFiniteError, OutputDirError, PushError


def cli(argv: list[str]) -> int:
    """``main(argv)``'s exit code, argparse's own exits included."""
    try:
        return main(argv)
    except SystemExit as exit:
        return exit.code


def one_line_error(capsys, code: int, *needles: str) -> str:
    """The error line of a command that exited with code 2 (progress bars before it aside): exactly one line."""
    err = capsys.readouterr().err
    assert code == 2 and "llmsparse: error:" in err, err
    line = err[err.index("llmsparse: error:") :]
    assert line.count("\n") == 1 and line.endswith("\n"), err
    for needle in needles:
        assert needle in line, line
    return line


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def no_load(monkeypatch):
    """Fail the test if a command gets as far as loading a model: its bad input should be refused before."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("llmsparse.cli.flags.load_model", refuse)
    monkeypatch.setattr("llmsparse.evaluation.compare.load_model", refuse)


@pytest.fixture
def files(tmp_path, model_dir, tokenizer):
    """Good and bad inputs side by side: text, binary, empty, a directory, and a compact model without its tokenizer."""
    found = {"model": model_dir, "calib": tmp_path / "calib.txt", "bin": tmp_path / "data.bin", "empty": tmp_path / "empty.txt", "dir": tmp_path / "adir"}
    found["calib"].write_text("\n".join(VALID.read_text().splitlines()[:200]))
    found["bin"].write_bytes(bytes(range(256)) * 8)
    found["empty"].write_text("\n \n")
    found["dir"].mkdir()
    model = tiny_model("llama")
    llmsparse.prune(model, method="magnitude", pattern="2:4", device="cpu")
    found["notok"] = llmsparse.save_pruned(model, None, tmp_path / "compact-no-tokenizer", format="2:4")
    return {k: str(v) for k, v in found.items()}


def run_tree(root) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))}


# --------------------------------------------------------------------------- the eight defects


def test_overwrite_never_replaces_the_working_directory_its_ancestors_or_the_inputs(files, tmp_path, monkeypatch, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    before = run_tree(tmp_path)
    base = ["prune", "tiny-llama", "--device", "cpu", "--calib", "calib.txt", "--nsamples", "4", "--seqlen", "32", "--sparsity", "0.5", "--overwrite"]
    for output, message in ((".", "working directory"), ("..", "working directory"), ("tiny-llama", "holds the input 'tiny-llama'")):
        one_line_error(capsys, cli([*base, "--output", output]), message)
    assert run_tree(tmp_path) == before
    model, tok = llmsparse.load_model("tiny-llama")  # the Python API protects the model's own directory too
    with pytest.raises(OutputDirError, match="holds the input"):
        llmsparse.save_pruned(model, tok, "tiny-llama", overwrite=True)
    assert run_tree(tmp_path) == before


def test_replacing_an_output_checks_it_again_under_the_lock(tmp_path):
    out = tmp_path / "out"
    with staging(out) as tmp:
        (tmp / "llmsparse.json").write_text("{}")
        out.mkdir()
        (out / "user.txt").write_text("appeared meanwhile")
        with pytest.raises(OutputDirError, match="not empty"):
            publish(tmp, out, overwrite=False)
        with pytest.raises(OutputDirError, match="not an llmsparse output"):
            publish(tmp, out, overwrite=True)
    assert (out / "user.txt").read_text() == "appeared meanwhile" and not list(tmp_path.glob(".out.*"))


def nan_model():
    model = tiny_model("llama")
    model.model.layers[0].self_attn.q_proj.weight.data[3, 5] = float("nan")
    return model


def overflowing_model():
    model = tiny_model("llama")
    model.model.layers[1].post_attention_layernorm.weight.data.fill_(1e30)  # finite weights, infinite MLP inputs
    return model


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "dsnot"])
def test_a_nan_weight_stops_pruning_naming_the_tensor_before_any_change(method, tokenizer, calib_ids):
    model = nan_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NonFiniteError, match=r"weight model\.layers\.0\.self_attn\.q_proj\.weight has 1 NaN"):
        llmsparse.prune(model, tokenizer, method=method, sparsity=0.5, calib=calib_ids, device="cpu")
    assert all(torch.equal(v.nan_to_num(), before[k].nan_to_num()) for k, v in model.state_dict().items())


def test_a_nan_embedding_row_stops_pruning_only_where_calibration_reads_it(tokenizer, calib_ids):
    """Only the decoder layers' weights are read by the weight check (a memory-mapped embedding stays on disk);
    an embedding row the calibration tokens use poisons the statistics, which stop the run; an unused one cannot change a mask."""
    used, unused = int(calib_ids[0, 0]), next(t for t in range(tiny_model("llama").config.vocab_size) if t not in set(calib_ids.flatten().tolist()))
    for row, stops in ((used, True), (unused, False)):
        model = tiny_model("llama")
        model.model.embed_tokens.weight.data[row, 0] = float("nan")
        if stops:
            with pytest.raises(NonFiniteError, match=r"calibration statistics of model\.layers\.0\."):
                llmsparse.prune(model, tokenizer, method="wanda", sparsity=0.5, calib=calib_ids, device="cpu")
        else:
            report = llmsparse.prune(model, tokenizer, method="wanda", sparsity=0.5, calib=calib_ids, device="cpu")
            assert report.global_sparsity == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "dsnot"])
def test_non_finite_calibration_statistics_are_named_not_blamed_on_dampening(method, tokenizer, calib_ids):
    with pytest.raises(NonFiniteError, match=r"calibration statistics of model\.layers\.1\.mlp\.gate_proj .* inf"):
        llmsparse.prune(overflowing_model(), tokenizer, method=method, sparsity=0.5, calib=calib_ids, device="cpu")


def test_activation_sparsity_refuses_nan_weights_and_overflowing_inputs(tokenizer, calib_ids):
    with pytest.raises(NonFiniteError, match="q_proj.weight has 1 NaN"):
        llmsparse.sparsify_activations(nan_model(), tokenizer, method="teal", sparsity=0.5, calib=calib_ids, device="cpu")
    with pytest.raises(NonFiniteError, match=r"calibration inputs of layer 1 \(down\)"):
        llmsparse.sparsify_activations(overflowing_model(), tokenizer, method="chess", sparsity=0.5, calib=calib_ids, device="cpu")


def test_the_cli_saves_nothing_for_a_nan_model(tmp_path, tokenizer, capsys):
    source, out = tmp_path / "nan-model", tmp_path / "out"
    nan_model().save_pretrained(source)
    tokenizer.save_pretrained(source)
    common = ["--device", "cpu", "--calib", str(VALID), "--nsamples", "4", "--seqlen", "32", "--sparsity", "0.5", "--output", str(out)]
    for command in ("prune", "sparsify"):
        one_line_error(capsys, cli(["-q", command, str(source), *common]), "q_proj.weight has 1 NaN")
        assert not out.exists()


def test_a_lone_targets_string_is_one_pattern_in_python_and_in_recipes(model_dir, tmp_path, tokenizer):
    report = llmsparse.prune(tiny_model("llama"), tokenizer, method="magnitude", sparsity=0.5, targets="q_proj", device="cpu")
    assert [m.name for m in report.matrices] == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]
    recipe, out = tmp_path / "r.yaml", tmp_path / "out"
    recipe.write_text("method: magnitude\nsparsity: 0.5\ntargets: q_proj\n")
    assert main(["-q", "prune", str(model_dir), "--device", "cpu", "--recipe", str(recipe), "--output", str(out)]) == 0
    assert {m["name"].rsplit(".", 1)[1] for m in json.loads((out / "sparsity_report.json").read_text())["matrices"]} == {"q_proj"}
    assert yaml.safe_load((out / "recipe.yaml").read_text())["targets"] == ["q_proj"]


def test_a_truncated_dense_checkpoint_is_one_line_everywhere(files, tmp_path, no_load, capsys):
    broken = shutil.copytree(files["model"], tmp_path / "broken")
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    for argv in (
        ["prune", str(broken), "--sparsity", "0.5", "--calib", files["calib"]],
        ["compare", files["model"], str(broken), "--ppl", files["calib"]],
        ["generate", str(broken), "--prompt", "hi"],
        ["eval", str(broken), "--ppl", files["calib"]],
    ):
        one_line_error(capsys, cli(argv), "corrupt or truncated")
    with pytest.raises(ModelError, match="truncated"):  # load_model itself, without the CLI's early check
        llmsparse.load_model(broken)


def test_generate_counts_tokens_honestly_and_refuses_impossible_requests(model_dir, tokenizer, capsys):
    path = str(model_dir)
    one_line_error(capsys, cli(["generate", path, "--prompt", ""]), "--prompt: must not be empty")
    one_line_error(capsys, cli(["generate", path, "--prompt", "hi", "--max-new-tokens", "-5"]), "must be at least 1")
    one_line_error(capsys, cli(["generate", path, "--prompt", "hi", "--max-new-tokens", "100000"]), "exceeds the model's 2048 positions")
    assert cli(["generate", path, "--device", "cpu", "--prompt", "The city", "--max-new-tokens", "4"]) == 0
    assert "4 new tokens (3 decode steps" in capsys.readouterr().err
    model = tiny_model("llama")
    with pytest.raises(LlmsparseError, match="no tokens"):
        timed_generate(model, tokenizer, "", 4)
    assert timed_generate(model, tokenizer, "The city", 4).new_tokens == 4


def test_push_to_an_unreachable_endpoint_is_one_line_without_the_token(tmp_path, tokenizer, monkeypatch, capsys):
    from huggingface_hub import HfApi

    model = tiny_model("llama")
    saved = llmsparse.save_pruned(model, tokenizer, tmp_path / "out", report=llmsparse.prune(model, method="magnitude", sparsity=0.5, device="cpu"))
    api = HfApi(endpoint="http://127.0.0.1:9", token="hf_secretsecret123")
    with pytest.raises(PushError, match="failed") as err:
        llmsparse.checkpoint.hub.push(saved, "me/repo", api=api)
    assert "hf_secretsecret123" not in str(err.value)
    monkeypatch.setattr("huggingface_hub.HfApi", lambda token=None: api)
    err = one_line_error(capsys, cli(["push", str(saved), "me/repo"]), "upload of", "me/repo failed")
    assert "secret" not in err


# --------------------------------------------------------------------------- every listed bad input: one line, exit 2, before the model loads

PRUNE = ["prune", "{model}", "--sparsity", "0.5", "--calib", "{calib}", "--nsamples", "4", "--seqlen", "32"]


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["prune", "{model}", "--sparsity", "0.5", "--calib", "{bin}"], ["calibration file", "data.bin", "not UTF-8 text"]),
        (["prune", "{model}", "--sparsity", "0.5", "--calib", "{dir}"], ["calibration file", "adir", "is a directory"]),
        (["prune", "{model}", "--sparsity", "0.5", "--calib", "{empty}"], ["empty.txt", "holds no text"]),
        (["eval", "{model}", "--ppl", "{bin}"], ["evaluation text", "data.bin", "not UTF-8 text"]),
        (["eval", "{model}", "--ppl", "{dir}"], ["evaluation text", "adir", "is a directory"]),
        ([*PRUNE, "--targets", "q_proj", "("], ["--targets: is not a valid regex", "'('"]),
        ([*PRUNE, "--ignore", "[a-"], ["--ignore: is not a valid regex"]),
        ([*PRUNE, "--targets", "no_such_matrix"], ["no matrices selected"]),
        (["prune", "{model}", "--pattern", "2:3", "--calib", "{calib}"], ["not divisible by M=3"]),
        ([*PRUNE, "--nsamples", "0"], ["--nsamples: must be at least 1"]),
        ([*PRUNE, "--seqlen", "1"], ["--seqlen: must be at least 2"]),
        ([*PRUNE, "--seqlen", "4096"], ["calibration seqlen 4096 exceeds the model's 2048 positions"]),
        ([*PRUNE, "--seed", "-1"], ["--seed: must be in [0,"]),
        (["eval", "{model}", "--ppl", "{calib}", "--seqlen", "0"], ["--seqlen: must be at least 2"]),
        (["eval", "{model}", "--ppl", "{calib}", "--seqlen", "1"], ["--seqlen: must be at least 2"]),
        (["eval", "{model}", "--ppl", "{calib}", "--windows", "-1"], ["--windows: must be at least 1"]),
        (["sparsify", "{model}", "--sparsity", "0.5", "--calib", "{calib}", "--allocation", "greedy", "--greedy-step", "0"], ["--greedy-step: must be in (0, 1]"]),
        ([*PRUNE, "--output", "{calib}/out"], ["which is a file"]),
        ([*PRUNE, "--output", "{calib}"], ["exists and is not a directory"]),
        ([*PRUNE, "--output", "/proc/llmsparse-hostile/out"], ["output '/proc/llmsparse-hostile/out'"]),
        (["eval", "{model}", "--ppl", "{calib}", "--output", "{calib}"], ["exists and is not a directory"]),
        (["compare", "{model}", "{model}", "--ppl", "{calib}", "--output", "{calib}"], ["exists and is not a directory"]),
        ([*PRUNE, "--device", "tpu9"], ["--device: is not a device"]),
        (["generate", "{model}", "--prompt", "hi", "--device", "cuda:7"], ["--device:"]),
        (["prune", "{notok}", "--method", "magnitude", "--pattern", "2:4"], ["compact-no-tokenizer", "has no tokenizer"]),
        (["generate", "{notok}", "--prompt", "hi"], ["has no tokenizer"]),
    ],
)
def test_bad_input_is_one_line_before_the_model_loads(files, no_load, capsys, argv, needles):
    one_line_error(capsys, cli([a.format(**files) for a in argv]), *needles)


@pytest.mark.parametrize(
    "text, needles",
    [
        ("nsamples: many\n", ["nsamples must be int, got str 'many'"]),
        ("nsamples: 0\n", ["nsamples must be at least 1"]),
        ("targets: 5\n", ["targets must be str | list[str] | None"]),
        ("targets: ['(']\n", ["targets is not a valid regex"]),
        ("sparsity: [0.5]\n", ["sparsity must be float | None"]),
        ("method: sparsegpt\nmethod_options: {blocksize: big}\n", ["method_options: sparsegpt option blocksize must be int"]),
        ("method: wanda\nmethod_options: {blocksize: 64}\n", ["method_options: unknown wanda option 'blocksize'"]),
    ],
)
def test_recipe_values_of_the_wrong_type_name_the_key_and_the_file(files, tmp_path, no_load, capsys, text, needles):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    one_line_error(capsys, cli(["prune", files["model"], "--recipe", str(recipe)]), f"recipe {recipe}", *needles)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"sparsity": "abc"}, "sparsity must be float"),
        ({"nsamples": 4.7}, "nsamples must be int"),
        ({"calib": torch.full((2, 8), 9999)}, "must be in [0, 320) (the model's vocabulary)"),
        ({"calib": torch.full((2, 8), -1)}, "must be non-negative"),
        ({"calib": torch.zeros(0, 8, dtype=torch.long)}, "at least 1 sequence of 2 tokens"),
        ({"calib": torch.zeros(2, 8)}, "int64 token ids"),
        ({"calib": str(VALID), "tokenizer": None}, "needs the tokenizer"),
        ({"targets": "("}, "targets is not a valid regex"),
        ({"device": "tpu9"}, "device is not a device"),
        ({"device": "cuda"}, "device is not available"),
    ],
)
def test_python_api_type_and_range_errors(tokenizer, kwargs, needle):
    kwargs = {"tokenizer": tokenizer, "method": "wanda", "sparsity": 0.5, "calib": str(VALID), "nsamples": 2, "seqlen": 16, "device": "cpu", **kwargs}
    if needle == "device is not available" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(LlmsparseError) as err:
        llmsparse.prune(tiny_model("llama"), **kwargs)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_load_model_refuses_an_unknown_dtype_and_a_missing_tokenizer(files):
    with pytest.raises(LlmsparseError, match="unknown dtype 'int8'"):
        llmsparse.load_model(files["model"], dtype="int8")
    with pytest.raises(ModelError, match="cannot load a tokenizer"):
        llmsparse.load_model(files["notok"])
