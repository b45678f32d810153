"""Random settings (hypothesis) for ``prune``, ``sparsify`` and ``eval``: types, ranges, patterns and paths.

Every input either runs or raises :class:`~llmsparse.LlmsparseError` with a one-line message (the
command line: exit code 0, or 2 with one ``llmsparse: error:`` line); nothing else is raised, and
nothing is written outside the run's output directory. Bounded (``max_examples``, no deadline,
derandomized) so the file runs in well under a minute on two cores.
"""

import contextlib
import os
from pathlib import Path

import pytest
import torch
from conftest import VALID, VOCAB, tiny_model
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import llmsparse
from llmsparse.cli import main
from llmsparse.errors import LlmsparseError


def bounded(examples: int) -> settings:
    """A fixed number of derandomized examples, no deadline, no example database written to disk."""
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))

PATHS = ["calib.txt", "data.bin", "empty.txt", "adir", "missing.txt", "model"]
REGEXES = ["q_proj", "mlp", "self_attn\\.(q|k)_proj", "(", "[a-", "no_such_matrix", ""]
junk = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4))


def hostile(*values) -> st.SearchStrategy:
    """Values of the right type but wrong (given), or of any type at all."""
    return st.one_of(st.sampled_from(values), junk) if values else junk


def ids(n: int, length: int, low: int, high: int) -> torch.Tensor:
    return torch.randint(low, high, (n, length), generator=torch.Generator().manual_seed(0))


# always given: small calibration (not the papers' 128 x 2048) from a source that works
SMALL = st.fixed_dictionaries(
    {"nsamples": st.integers(1, 3), "seqlen": st.integers(2, 24), "calib": st.sampled_from(["calib.txt", "self", ids(2, 16, 0, VOCAB)])}
)


def up_to_two(keys) -> st.SearchStrategy:
    """No key half of the time (a request that should run), else one or two of ``keys``."""
    return st.one_of(st.just([]), st.lists(st.sampled_from(sorted(keys)), min_size=1, max_size=2, unique=True))


@st.composite
def mostly_valid(draw, required: st.SearchStrategy, good: dict, bad: dict) -> dict:
    """A runnable request (``required``) plus some settings with good values, then up to two settings replaced by hostile ones."""
    kwargs = {**draw(st.fixed_dictionaries({}, optional=good)), **draw(required), **draw(SMALL)}
    for key in draw(up_to_two(bad)):
        kwargs[key] = draw(bad[key])
    return kwargs


GOOD = {
    "seed": st.integers(0, 2**63 - 1),
    "device": st.sampled_from([None, "cpu"]),
}
BAD = {
    "calib": st.one_of(st.sampled_from([*PATHS, None, ids(2, 16, VOCAB, VOCAB + 5), ids(2, 16, -4, 0), ids(0, 16, 0, 5), torch.zeros(2, 8)]), junk),
    "nsamples": hostile(0, -1),
    "seqlen": hostile(1, 0, 5000),
    "seed": hostile(-1, 2**64),
    "device": hostile("tpu9", "cuda:3", ""),
    "text_field": hostile("content"),
}
PRUNE = mostly_valid(
    st.one_of(
        st.fixed_dictionaries({"sparsity": st.floats(0, 0.95), "layer_budget": st.sampled_from(["uniform", "owl", [0.4, 0.6]])}),
        st.fixed_dictionaries({"pattern": st.sampled_from(["2:4", "4:8", "1:2"])}),
    ),
    {
        **GOOD,
        "method": st.sampled_from(["magnitude", "wanda", "sparsegpt", "dsnot"]),
        "targets": st.sampled_from(["q_proj", ["mlp", "o_proj"], "self_attn\\.(q|k)_proj"]),
        "ignore": st.sampled_from(["down_proj", ["k_proj"]]),
        "true_sequential": st.booleans(),
        "compute_dtype": st.sampled_from(["auto", "float32", "bfloat16"]),
    },
    {
        **BAD,
        "method": hostile("wandaa", ""),
        "sparsity": hostile(1.0, -0.1, 0.5),
        "pattern": hostile("4:4", "0:4", "2:3", "a:b", "2:", "2:4:8", "-1:4"),
        "targets": hostile("(", "no_such_matrix", ["q_proj", "[a-"]),
        "ignore": hostile(".*", "("),
        "method_options": hostile({"blocksize": "x"}, {"nope": 1}, {"blocksize": 64}, {"scope": "row"}, {"init": "magnitude"}, [1]),
        "compute_dtype": hostile("int8"),
        "layer_budget": hostile("owll", "owl", [0.5], [0.5, 1.5], [-0.1, 0.2]),
        "owl_m": hostile(0.0, -1.0),
        "owl_lambda": hostile(0.0, -0.2, 0.6),
    },
)
SPARSIFY = mostly_valid(
    st.fixed_dictionaries({"sparsity": st.floats(0, 0.95), "greedy_step": st.sampled_from([0.25, 0.5])}),
    {
        **GOOD,
        "method": st.sampled_from(["teal", "wina", "chess"]),
        "allocation": st.sampled_from(["uniform", "greedy"]),
        "prefill": st.sampled_from(["all", "none", "last-half"]),
        "greedy_samples": st.integers(1, 2),
        "greedy_error": st.sampled_from(["relative", "mse", "reference"]),
    },
    {
        **BAD,
        "method": hostile("teall"),
        "sparsity": hostile(1.0, -0.1, None),
        "allocation": hostile("x", [{"q": 0.5}], [{"q": 0.5}, {"q": 2.0}], [{"zz": 0.1}, {}], [1, 2]),
        "prefill": hostile("some"),
        "method_options": hostile({"mode": "threshold"}, {"mode": "x"}, {"nope": 1}),
        "greedy_step": hostile(0.0, -0.1, 1.5),
        "greedy_samples": hostile(0, -1),
        "greedy_error": hostile("max"),
    },
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tokenizer):
    """Inputs good and bad, a previous llmsparse output, and a user's directory; the tests run inside it."""
    root = tmp_path_factory.mktemp("hostile")
    model = tiny_model("llama")
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    (root / "calib.txt").write_text("\n".join(VALID.read_text().splitlines()[:40]))
    (root / "data.bin").write_bytes(bytes(range(256)) * 4)
    (root / "empty.txt").write_text("")
    (root / "adir").mkdir()
    (root / "user-dir").mkdir()
    (root / "user-dir" / "notes.txt").write_text("mine")
    llmsparse.save_pruned(model, tokenizer, root / "old-output")
    return root


@contextlib.contextmanager
def inside(root: Path):
    """Run in ``root``, and check that nothing outside ``root/outputs`` or the run's output changed (files and folders)."""

    def tree(output: Path | None) -> dict[str, tuple[int, int]]:
        """Every file (size, mtime) and folder, but the output, what is inside it, and the folders that lead to it."""
        found = {}
        for p in root.rglob("*"):
            if output is not None and (p == output or output in p.parents or p in output.parents):
                continue
            found[str(p.relative_to(root))] = (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (-1, 0)
        return found

    cwd, output = os.getcwd(), []
    os.chdir(root)
    before = {p: root / p for p in tree(None)}
    snapshot = tree(None)
    try:
        yield output
    finally:
        os.chdir(cwd)
    out = (root / output[0]).resolve() if output and output[0] else None
    kept = {k: v for k, v in snapshot.items() if out is None or not (before[k] == out or out in before[k].parents or before[k] in out.parents)}
    assert tree(out) == kept


def runs_or_refuses(call) -> None:
    """``call()`` returns, or raises an LlmsparseError with a one-line message; anything else fails the test."""
    try:
        call()
        event("ran")
    except LlmsparseError as err:
        event(f"refused: {type(err).__name__}")
        assert str(err).strip() and "\n" not in str(err), repr(str(err))


@bounded(60)
@given(kwargs=PRUNE)
def test_prune_settings_run_or_raise_one_line(workspace, tokenizer, kwargs):
    with inside(workspace):
        runs_or_refuses(lambda: llmsparse.prune(tiny_model("llama"), tokenizer, **kwargs))


@bounded(40)
@given(kwargs=SPARSIFY)
def test_sparsify_settings_run_or_raise_one_line(workspace, tokenizer, kwargs):
    with inside(workspace):
        runs_or_refuses(lambda: llmsparse.sparsify_activations(tiny_model("llama"), tokenizer, **kwargs))


def command(argv: list[str], capsys) -> int:
    """Exit code of ``llmsparse argv``; a refusal must be exactly one ``llmsparse: error:`` line."""
    try:
        code = main(["-q", *argv])
    except SystemExit as exit:
        code = exit.code
    err = capsys.readouterr().err
    assert code in (0, 2), err
    event(f"exit {code}")
    if code == 2:
        line = err[err.index("llmsparse: error:") :]
        assert line.count("\n") == 1 and line.endswith("\n"), err
    return code


@st.composite
def hostile_flags(draw, flags: dict[str, list[str]]) -> list[str]:
    """Up to two of ``flags``, each with one of its values (given after the good ones, so they win)."""
    return [a for flag in draw(up_to_two(flags)) for a in (flag, draw(st.sampled_from(flags[flag])))]


GOOD_OUTPUTS = ["outputs/new", "outputs/a/b", "adir", "old-output"]
BAD_OUTPUTS = [".", "..", "model", "calib.txt", "calib.txt/sub", "user-dir", "/proc/llmsparse-x/out"]
RUN_FLAGS = {  # good and hostile values of each flag
    "--calib": ["self", "data.bin", "adir", "missing.txt"],
    "--format": ["dense", "bitmask", "2:4", "csr"],
    "--nsamples": ["1", "3", "0", "x"],
    "--seqlen": ["8", "24", "1", "99999"],
    "--eval-ppl": ["calib.txt", "data.bin"],
    "--device": ["cpu", "tpu9"],
    "--sparsity": ["0.3", "1.5", "nan"],
}


@bounded(24)
@given(
    kind=st.sampled_from(["prune", "sparsify"]),
    output=st.one_of(st.sampled_from(GOOD_OUTPUTS), st.sampled_from(BAD_OUTPUTS)),
    overwrite=st.booleans(),
    extra=hostile_flags(RUN_FLAGS),
    targets=st.sampled_from([[], ["--targets", "q_proj"], ["--targets", "("], ["--targets", "no_such_matrix"]]),
)
def test_command_outputs_are_never_written_outside_their_directory(workspace, capsys, kind, output, overwrite, extra, targets):
    argv = [kind, "model", "--device", "cpu", "--sparsity", "0.5", "--calib", "calib.txt", "--nsamples", "2", "--seqlen", "16"]
    argv += ["--ppl-seqlen", "16", "--ppl-windows", "2", "--output", output, *(["--overwrite"] if overwrite else []), *extra]
    argv += targets if kind == "prune" else []
    with inside(workspace) as written:
        written.append(output)
        code = command(argv, capsys)
    if output in BAD_OUTPUTS:
        assert code == 2
    assert not [p for p in workspace.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name or p.name.endswith(".lock")]


EVAL_FLAGS = {  # good and hostile values of each flag
    "--ppl": ["calib.txt", "data.bin", "adir", "empty.txt", "missing.txt"],
    "--seqlen": ["8", "32", "0", "1", "-3", "x", "99999"],
    "--windows": ["1", "3", "0", "-1", "x"],
    "--output": ["outputs/eval", "adir", "calib.txt", "calib.txt/x", "/proc/llmsparse-x/out"],
    "--limit": ["0.5", "0", "-1", "x"],
    "--num-fewshot": ["0", "-1"],
    "--batch-size": ["2", "auto", "0", "auto:x", "-2"],
    "--max-length": ["64", "0"],
    "--device": ["cpu", "tpu9"],
}


@bounded(30)
@given(extra=hostile_flags(EVAL_FLAGS))
def test_eval_settings_run_or_exit_2_with_one_line(workspace, capsys, extra):
    argv = ["eval", "model", "--device", "cpu", "--ppl", "calib.txt", "--seqlen", "16", "--windows", "2", *extra]
    output = next((v for k, v in zip(argv, argv[1:]) if k == "--output"), None)
    with inside(workspace) as written:
        written.append(output)
        command(argv, capsys)
