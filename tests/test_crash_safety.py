"""Killed, interrupted and concurrent runs: the output is absent or complete, never partial, and stale staging is cleaned.

Each run is a real ``llmsparse prune`` in a subprocess that pauses at a chosen point (it prints the
point's name, then sleeps) so the test can kill it exactly there: during pruning (the output is
claimed), after the weights are staged (a partial staging directory exists), and while an old output
is swapped for the new one (the old one has been renamed aside).
"""

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import VALID

from llmsparse.checkpoint.outdir import remove_stale
from llmsparse.cli import main

RUNNER = """
import os, signal, sys, time
import llmsparse.cli.prune, llmsparse.checkpoint.save, llmsparse.checkpoint.outdir
from llmsparse.cli import main

# A suite started in the background (`pytest &` in a shell without job control) inherits SIGINT ignored,
# and so would this child: restore Python's Ctrl-C, which is what a user's terminal gives the CLI.
signal.signal(signal.SIGINT, signal.default_int_handler)

point = sys.argv[1]

def pause():
    print(f"paused at {point}", flush=True)
    time.sleep(120)

if point == "prune":
    real_prune = llmsparse.cli.prune.prune
    def prune(*args, **kwargs):
        pause()
        return real_prune(*args, **kwargs)
    llmsparse.cli.prune.prune = prune
elif point == "staged":
    real_state = llmsparse.checkpoint.save.save_activation_state
    def save_activation_state(model, directory):
        real_state(model, directory)  # model.safetensors and config.json are written, the rest is not
        pause()
    llmsparse.checkpoint.save.save_activation_state = save_activation_state
elif point == "swap":
    real_replace = os.replace
    def replace(src, dst, *args, **kwargs):
        if ".tmp-" in os.path.basename(str(src)):
            pause()  # the old output has been renamed aside, the new one is not in place yet
        return real_replace(src, dst, *args, **kwargs)
    llmsparse.checkpoint.outdir.os.replace = replace
sys.exit(main(sys.argv[2:]))
"""


def prune_argv(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["-q", "prune", str(model_dir), "--device", "cpu", "--calib", str(VALID), "--nsamples", "4", "--seqlen", "32",
            "--method", "magnitude", "--sparsity", "0.5", "--output", str(out), *extra]


def start_paused(point: str, argv: list[str]) -> subprocess.Popen:
    """A prune in a subprocess, returned once it has paused at ``point``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # a tiny model: one thread is fastest and does not contend
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, point, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    while True:
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        line = proc.stdout.readline() if ready else ""
        if line.startswith(f"paused at {point}"):
            return proc
        if not line:
            proc.kill()
            raise AssertionError(f"the run never reached {point}: {proc.communicate()[1][-2000:]}")


def stop(proc: subprocess.Popen, sig: int) -> tuple[int, str]:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)  # reaps it: a killed child's pid is gone afterwards
    return proc.returncode, err


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.glob(f".{out.name}.*-*"))


def assert_absent_or_complete(out: Path) -> None:
    if out.exists():
        meta = json.loads((out / "llmsparse.json").read_text())
        assert meta["recipe"]["method"] == "magnitude" and (out / "model.safetensors").is_file()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("point", ["prune", "staged", "swap"])
def test_sigkill_leaves_no_partial_output_and_the_next_run_cleans_up(model_dir, tmp_path, point):
    out = tmp_path / "out"
    extra = []
    if point == "swap":  # an existing output that the killed run was replacing
        assert main(prune_argv(model_dir, out)) == 0
        extra = ["--overwrite"]
    code, _ = stop(start_paused(point, prune_argv(model_dir, out, *extra)), signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert_absent_or_complete(out)
    stale = leftovers(out)
    assert bool(stale) == (point != "prune")  # a partial staging directory (or the old output) named with the dead pid
    assert main(prune_argv(model_dir, out, *extra)) == 0
    assert_absent_or_complete(out)
    assert out.is_dir() and leftovers(out) == [] and not (tmp_path / ".out.lock").exists()


@pytest.mark.parametrize("point", ["prune", "staged"])
def test_ctrl_c_is_one_line_exit_130_and_leaves_nothing(model_dir, tmp_path, point):
    out = tmp_path / "new" / "out"
    code, err = stop(start_paused(point, prune_argv(model_dir, out)), signal.SIGINT)
    assert code == 130
    assert err.strip().splitlines()[-1] == "llmsparse: interrupted" and "Traceback" not in err
    assert not (tmp_path / "new").exists()  # no output, no staging, no lock, and the parent it made is gone


def test_a_second_writer_is_refused_at_once_and_the_first_keeps_its_result(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    first = start_paused("prune", prune_argv(model_dir, out))
    try:
        assert main(prune_argv(model_dir, out, "--overwrite")) == 2
        assert f"being written by another llmsparse run (pid {first.pid})" in capsys.readouterr().err
        assert not out.exists()
    finally:
        first.kill()
        first.communicate()
    assert main(prune_argv(model_dir, out)) == 0  # the lock died with its holder


def test_stale_staging_is_removed_only_when_it_is_ours_and_its_pid_is_gone(tmp_path):
    out = tmp_path / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    names = [f".out.tmp-{dead}-0123abcd", f".out.old-{dead}-89abcdef", f".out.tmp-{os.getpid()}-0123abcd", f".other.tmp-{dead}-0123abcd", ".out.tmp-mine"]
    for name in names:
        (tmp_path / name).mkdir()
    removed = sorted(p.name for p in remove_stale(out))
    assert removed == sorted(names[:2])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[2:])


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_saved_directories_get_the_users_normal_permissions(model_dir, tmp_path, umask):
    old = os.umask(umask)
    try:
        assert main(prune_argv(model_dir, tmp_path / "out")) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~umask
    assert (tmp_path / "out" / "config.json").stat().st_mode & 0o777 == 0o666 & ~umask
