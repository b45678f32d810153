"""Output directories that are safe to write: never over the inputs, one writer at a time, all or nothing.

The rules every saved model follows:

* **What may be replaced.** The output may not be the working directory or an ancestor of it, nor
  a directory that holds one of the run's inputs (model, calibration text, recipe, evaluation
  text), nor the home directory or an ancestor of it. An existing non-empty directory is replaced
  only with ``overwrite``, and only when it is a previous llmsparse output: its ``llmsparse.json``
  is one llmsparse wrote (a JSON object with the run's ``format``, ``versions`` and ``files``, the
  list of every file the run wrote) and the directory holds nothing else (:func:`llmsparse.checkpoint.ownership.foreign_entry`).
  A stray ``llmsparse.json`` (``{}``) in a directory of the user's own is therefore not enough;
  anything else is refused, ``overwrite`` or not.
* **One writer.** :func:`claim` takes an exclusive lock, ``.NAME.lock`` beside the output
  (``flock``: the OS drops it when the process dies, even by ``kill -9``), for the whole run, so a
  second run into the same output is refused at once, not after its work.
* **All or nothing.** The model is written into a staging directory ``.NAME.tmp-PID-XXXXXXXX``
  beside the output and renamed into place; an old output is first renamed aside to
  ``.NAME.old-PID-XXXXXXXX`` and removed after. A run that dies leaves at most such directories,
  named with its pid, and the next run into the same output removes the ones whose pid is gone.
  Staging directories get the user's normal permissions (``mkdir`` under the umask).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import OutputBusyError, OutputDirError
from .ownership import foreign_entry

_STAGE = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)-[0-9a-f]{8}$")
_held: dict[Path, int] = {}  # outputs this process has claimed -> nesting depth (the CLI claims, then save_pruned)


def _first_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


#: Bytes the names beside an output add to its own (``.NAME.tmp-PID-XXXXXXXX``, ``.NAME.partial``, ``.NAME.lock``).
_SIBLING_EXTRA = 32


def _check_name_lengths(out: Path, shown: str) -> None:
    """Refuse a path with a component longer than the file system allows (``Errno 36``), the output's siblings' names included."""
    try:
        limit = os.pathconf(_first_existing(out), "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    for part in out.parts:
        extra = _SIBLING_EXTRA if part == out.name else 0
        if len(os.fsencode(part)) + extra > limit:
            raise OutputDirError(
                f"output {shown[:60]!r}...: the name {part[:40]!r}... is {len(os.fsencode(part))} bytes; the file system allows "
                f"{limit - extra} for an output's name ({limit} less the staging names beside it)"
            )


def check_results_dir(path: str | Path) -> Path:
    """A directory results can be written into (created if missing): refuse an empty path, a file, a path under a file,
    a name too long for the file system, or an unwritable place."""
    if not str(path).strip():
        raise OutputDirError("output is an empty path: give a directory, e.g. --output ./pruned")
    out = Path(path).resolve()
    _check_name_lengths(out, str(path))
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"output {str(path)!r} exists and is not a directory")
    base = _first_existing(out)
    if not base.is_dir():
        raise OutputDirError(f"output {str(path)!r} is under {str(base)!r}, which is a file")
    if not os.access(base, os.W_OK | os.X_OK):
        raise OutputDirError(f"output {str(path)!r} cannot be created: no write permission in {str(base)!r}")
    return out


def check_output_dir(path: str | Path, overwrite: bool = False, inputs: Iterable[str | Path | None] = ()) -> Path:
    """The resolved output path, after the rules above (a file, unwritable, the inputs, not empty, not ours)."""
    out = check_results_dir(path)
    cwd = Path.cwd().resolve()
    if out == cwd or out in cwd.parents:
        raise OutputDirError(f"output {str(path)!r} is the working directory or contains it; choose a new directory, e.g. ./out")
    home = Path.home().resolve()
    if out == home or out in home.parents:
        raise OutputDirError(f"output {str(path)!r} is the home directory or contains it; choose a new directory, e.g. ~/pruned")
    for item in inputs:
        if item is not None and Path(item).exists():
            source = Path(item).resolve()
            if source == out or out in source.parents:
                raise OutputDirError(f"output {str(path)!r} holds the input {str(item)!r}; choose another directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise OutputDirError(f"output directory {str(path)!r} is not empty (pass overwrite=True / --overwrite)")
        reason = foreign_entry(out)
        if reason is not None:
            raise OutputDirError(
                f"output directory {str(path)!r} is not empty and is not an llmsparse output ({reason}); "
                "--overwrite replaces only a previous llmsparse output or an empty directory"
            )
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale(out: Path) -> list[Path]:
    """Remove the staging directories of ``out`` left by runs that died (their pid is gone); returns them."""
    removed = []
    for entry in out.parent.iterdir() if out.parent.is_dir() else []:
        match = _STAGE.match(entry.name)
        if match and match["name"] == out.name and entry.is_dir() and not entry.is_symlink() and not _alive(int(match["pid"])):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _lock(path: Path, out: Path) -> int:
    """An exclusive ``flock`` on ``path`` (created if needed), or :class:`OutputBusyError` at once."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            who = f" (pid {holder})" if holder else ""
            raise OutputBusyError(f"output {str(out)!r} is being written by another llmsparse run{who}; wait for it or choose another output") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)  # the holder removed this file while we waited: lock the new one


def _make_parents(directory: Path, created: list[Path]) -> None:
    """Create ``directory`` and its missing ancestors, adding the ones this call made to ``created`` (deepest first)."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:  # another run made it: not ours to remove
            continue
        created.insert(0, d)


def _remove_empty(created: list[Path]) -> None:
    for d in created:
        try:
            d.rmdir()
        except OSError:  # not empty: the run wrote there
            break


@contextmanager
def claim(path: str | Path, overwrite: bool = False, inputs: Iterable[str | Path | None] = ()) -> Iterator[Path]:
    """Hold ``path`` as this run's output: checked, locked against other runs, stale staging removed; yields the resolved path.

    Parent directories created for the lock are removed again if the run leaves them empty.
    Nested claims of the same path in one process share the lock.
    """
    inputs = list(inputs)
    out = check_output_dir(path, overwrite, inputs)
    if out in _held:
        _held[out] += 1
        try:
            yield out
        finally:
            _held[out] -= 1
        return
    created: list[Path] = []
    lock_path = out.parent / f".{out.name}.lock"
    try:
        _make_parents(out.parent, created)
        fd = _lock(lock_path, out)
    except OSError as err:
        _remove_empty(created)
        raise OutputDirError(f"cannot write output {str(path)!r}: {err.strerror or err}") from err
    except OutputBusyError:
        _remove_empty(created)
        raise
    _held[out] = 1
    try:
        remove_stale(out)
        check_output_dir(out, overwrite, inputs)  # again: nobody else can change it now
        yield out
    finally:
        del _held[out]
        lock_path.unlink(missing_ok=True)
        os.close(fd)
        _remove_empty(created)


def _stage_name(out: Path, kind: str) -> Path:
    return out.parent / f".{out.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


@contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A fresh staging directory beside ``out`` (normal permissions), removed on the way out unless :func:`publish` moved it."""
    while True:
        tmp = _stage_name(out, "tmp")
        try:
            tmp.mkdir(mode=0o777)
            break
        except FileExistsError:
            continue
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: Path, out: Path, overwrite: bool = False, inputs: Iterable[str | Path | None] = ()) -> Path:
    """Move the finished ``tmp`` into place at ``out``, checking ``out`` once more; an old output is renamed aside first, then removed."""
    check_output_dir(out, overwrite, inputs)
    if not out.exists():
        os.replace(tmp, out)
        return out
    old = _stage_name(out, "old")
    os.rename(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:  # Ctrl-C or a failed rename: put the old output back
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return out
