"""Interrupted streamed runs: --resume after a crash at any point gives the uninterrupted output; bad resumes are refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import VALID
from test_stream import assert_same_tensors, save_checkpoint

import llmsparse
from llmsparse.checkpoint import resume, stream
from llmsparse.checkpoint.stream import prune_checkpoint
from llmsparse.cli import main
from llmsparse.errors import ResumeError
from llmsparse.pruning.api import layerwise

SETTINGS = dict(method="wanda", sparsity=0.6, layer_budget="owl", owl_lambda=0.05, compute_dtype="float32")  # float32: the killed subprocess sees the real CPU


class Crash(Exception):
    pass


@pytest.fixture
def setup(tmp_path, tokenizer, calib_ids):
    checkpoint = save_checkpoint(tmp_path / "ckpt", "gemma3", tokenizer)
    prune_checkpoint(checkpoint, tmp_path / "reference", calib=calib_ids, **SETTINGS)
    return checkpoint, calib_ids


def crash_after(monkeypatch, target, name, calls: int):
    """Make ``target.name`` raise :class:`Crash` on call number ``calls`` (after doing its work)."""
    original = getattr(target, name)
    seen = []

    def wrapper(*args, **kwargs):
        out = original(*args, **kwargs)
        seen.append(1)
        if len(seen) == calls:
            raise Crash
        return out

    monkeypatch.setattr(target, name, wrapper)


def interrupted_then_resumed(tmp_path, setup, monkeypatch, target, name, calls):
    checkpoint, ids = setup
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        crash_after(m, target, name, calls)
        with pytest.raises(Crash):
            prune_checkpoint(checkpoint, out, calib=ids, **SETTINGS)
    partial = resume.partial_dir(out)
    assert partial.is_dir() and not out.exists()
    assert not (partial / "config.json").exists() and not (partial / "llmsparse.json").exists()  # never a finished model
    report = prune_checkpoint(checkpoint, out, calib=ids, resume=True, **SETTINGS)
    assert_same_tensors(tmp_path / "reference", out)
    assert not partial.exists()
    reference = json.loads((tmp_path / "reference" / "llmsparse.json").read_text())["report"]
    assert json.loads((out / "llmsparse.json").read_text())["report"]["matrices"] == reference["matrices"]
    return report


@pytest.mark.parametrize("calls", [2, 4])  # OWL pass layer 1 done; prune pass layer 0 done
def test_crash_between_layers(tmp_path, setup, monkeypatch, calls):
    interrupted_then_resumed(tmp_path, setup, monkeypatch, resume.Partial, "record", calls)


def test_crash_mid_layer(tmp_path, setup, monkeypatch):
    interrupted_then_resumed(tmp_path, setup, monkeypatch, layerwise, "prune_matrix", 10)  # layer 1, 3rd matrix


def test_crash_during_the_final_write(tmp_path, setup, monkeypatch):
    interrupted_then_resumed(tmp_path, setup, monkeypatch, stream, "write_output", 1)


def test_kill_9_while_saving_layer_inputs(tmp_path, setup):
    """A real SIGKILL in the middle of writing the next layer's inputs (a temporary file left behind), then --resume."""
    checkpoint, ids = setup
    torch.save(ids, tmp_path / "ids.pt")
    out = tmp_path / "out"
    script = textwrap.dedent(
        f"""
        import os, signal, torch
        import llmsparse.checkpoint.resume as r
        calls = []
        original = r.save_file
        def dying(tensors, path, metadata=None):
            calls.append(path)
            if len(calls) == 6:  # OWL inputs x2, then prune: layer 0, its outputs, layer 1, its outputs: half a file, killed
                open(path, "wb").write(b"partial")
                os.kill(os.getpid(), signal.SIGKILL)
            return original(tensors, path, metadata=metadata)
        r.save_file = dying
        from llmsparse.checkpoint.stream import prune_checkpoint
        prune_checkpoint({str(checkpoint)!r}, {str(out)!r}, calib=torch.load({str(tmp_path / "ids.pt")!r}), **{SETTINGS!r})
        """
    )
    env = dict(os.environ, PYTHONPATH=str(Path(llmsparse.__file__).parents[1]))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    state = json.loads((resume.partial_dir(out) / resume.STATE_FILE).read_text())
    assert state["passes"]["prune"]["done"] == 0  # layer 0 finished; layer 1 written but its outputs were not
    prune_checkpoint(checkpoint, out, calib=ids, resume=True, **SETTINGS)
    assert_same_tensors(tmp_path / "reference", out)


def test_resume_refuses_other_arguments_and_keeps_the_partial_run(tmp_path, setup, monkeypatch):
    checkpoint, ids = setup
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        crash_after(m, resume.Partial, "record", 4)
        with pytest.raises(Crash):
            prune_checkpoint(checkpoint, out, calib=ids, **SETTINGS)
    state = (resume.partial_dir(out) / resume.STATE_FILE).read_text()
    with pytest.raises(ResumeError, match="other arguments.*differs in: sparsity"):
        prune_checkpoint(checkpoint, out, calib=ids, resume=True, **(SETTINGS | {"sparsity": 0.5}))
    with pytest.raises(ResumeError, match="add --resume"):
        prune_checkpoint(checkpoint, out, calib=ids, **SETTINGS)
    with pytest.raises(ResumeError, match="calibration data differs"):
        prune_checkpoint(checkpoint, out, calib=ids.flip(0), resume=True, **SETTINGS)
    assert (resume.partial_dir(out) / resume.STATE_FILE).read_text() == state  # nothing lost
    prune_checkpoint(checkpoint, out, calib=ids, resume=True, **SETTINGS)
    assert_same_tensors(tmp_path / "reference", out)


def test_cli_stream_resume_and_bad_input(tmp_path, tokenizer, capsys):
    checkpoint = save_checkpoint(tmp_path / "ckpt", "llama", tokenizer)
    common = ["--method", "wanda", "--sparsity", "0.5", "--calib", str(VALID), "--nsamples", "4", "--seqlen", "32"]
    assert main(["prune", str(checkpoint), *common, "--output", str(tmp_path / "memory")]) == 0
    assert main(["prune", str(checkpoint), *common, "--stream", "--resume", "--output", str(tmp_path / "streamed")]) == 0
    assert "peak resident memory" in capsys.readouterr().out
    assert_same_tensors(tmp_path / "memory", tmp_path / "streamed")
    cases = [
        (["--stream"], "give --output DIR"),
        (["--resume", "--output", str(tmp_path / "x")], "give --stream as well"),
        (["--stream", "--output", str(tmp_path / "x"), "--eval-ppl", str(VALID)], "evaluate the saved output"),
    ]
    for extra, message in cases:
        assert main(["prune", str(checkpoint), *common, *extra]) == 2
        assert message in capsys.readouterr().err
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert main(["prune", str(gguf), *common, "--stream", "--output", str(tmp_path / "y")]) == 2
    assert "convert it first" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_memory_guard_suggests_stream(tmp_path, tokenizer, capsys, monkeypatch):
    checkpoint = save_checkpoint(tmp_path / "ckpt", "llama", tokenizer)
    monkeypatch.setattr("llmsparse.core.memory.available_memory", lambda: 1000)
    assert main(["prune", str(checkpoint), "--method", "magnitude", "--sparsity", "0.5", "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "only 0.00 GiB of memory is available" in err and "--stream" in err
    assert llmsparse.core.memory.weight_bytes(llmsparse.formats.shard_files(checkpoint), torch.bfloat16) * 2 == llmsparse.core.memory.weight_bytes(
        llmsparse.formats.shard_files(checkpoint)
    )


def test_resume_refuses_a_machine_where_auto_picks_another_dtype(tmp_path, setup, monkeypatch):
    """``compute_dtype='auto'`` resolves per machine: a resume must not finish in bf16 what began in float32."""
    from llmsparse.core import cpu

    checkpoint, ids = setup
    out, settings = tmp_path / "out", SETTINGS | {"compute_dtype": "auto"}
    with monkeypatch.context() as m:
        crash_after(m, resume.Partial, "record", 2)
        with pytest.raises(Crash):
            prune_checkpoint(checkpoint, out, calib=ids, **settings)
    monkeypatch.setattr(cpu, "native_bf16", lambda device: True)
    with pytest.raises(ResumeError, match="forwards"):
        prune_checkpoint(checkpoint, out, calib=ids, resume=True, **settings)
