"""The state of a streamed run on disk, so that a run killed at any point (``kill -9`` included) can resume.

It lives in ``.NAME.partial`` beside the output ``NAME``: a dot-directory with no ``config.json``
and no ``llmsparse.json``, so nothing mistakes it for a finished model. It holds the finished
decoder layers as output shards, the inputs of the next layer (``inputs-<pass>-<layer>.safetensors``:
hidden states of every calibration sequence, and of the dense stream when a pass keeps one) and
``state.json``: the run's arguments, a hash of its calibration ids, and per pass (``owl``, ``prune``)
the last finished layer and the visit results of the layers so far. Every file is written under a
temporary name and renamed into place, and ``state.json`` is replaced last, so the state always
names files that are complete; a layer whose state was not recorded is simply done again.
The partial directory is removed once the finished model has been published.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ..core.tensorfile import copy_tensor, read_header, read_tensors, save_file
from ..errors import ResumeError, check_resume

STATE_FILE = "state.json"


def partial_dir(out: Path) -> Path:
    """Where the state of a streamed run into ``out`` is kept."""
    return out.parent / f".{out.name}.partial"


def _replace(path: Path, write) -> None:
    """Write ``path`` through ``write(temporary path)`` and rename it into place (all or nothing)."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """``tensors`` as a safetensors file at ``path``, complete or not at all."""
    _replace(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))


def copy_tensor_file(source: Path, key: str, path: Path, name: str) -> None:
    """Tensor ``key`` of the file ``source`` as the one tensor ``name`` of a safetensors file at ``path``, complete or not at all."""
    _replace(path, lambda tmp: copy_tensor(source, key, tmp, name, metadata={"format": "pt"}))


def ids_hash(ids: torch.Tensor | None) -> str | None:
    return None if ids is None else hashlib.sha256(ids.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()


def _read_state(directory: Path) -> dict[str, Any] | None:
    """The ``state.json`` of a partial directory (None when there is none), or :class:`ResumeError` for a damaged one."""
    path = directory / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # not UTF-8 or not JSON
        raise ResumeError(f"{path} is damaged ({type(err).__name__}); remove {directory} to start over") from err
    if not (isinstance(state, dict) and isinstance(state.get("args"), dict) and isinstance(state.get("passes"), dict) and "ids" in state):
        raise ResumeError(f"{path} is not the state of an interrupted llmsparse run; remove {directory} to start over")
    return state


class Partial:
    """The partial directory of one streamed run: created fresh, or taken over from an interrupted run with ``resume``.

    ``args`` (JSON values) are what must match for a resume; a directory holding another run's
    state, or this run's without ``resume``, is refused with a message that says what to do.
    """

    def __init__(self, out: Path, args: dict[str, Any], resume: bool):
        self.dir = partial_dir(out)
        if self.dir.is_symlink() or (self.dir.exists() and not self.dir.is_dir()):
            raise ResumeError(f"{self.dir} is not an interrupted run's state directory (a file or a link): move it away or choose another output")
        state = _read_state(self.dir)
        if state is not None:
            check_resume(self.dir, state.get("args"), args, resume)
        elif self.dir.exists():  # created, then killed before the first state was written: nothing to keep
            shutil.rmtree(self.dir)
        self.resumed = state is not None
        self.state = state or {"version": 1, "args": args, "ids": None, "passes": {}}
        self.dir.mkdir(exist_ok=True)
        self._save()

    def _save(self) -> None:
        _replace(self.dir / STATE_FILE, lambda tmp: tmp.write_text(json.dumps(self.state, indent=1) + "\n"))

    def begin(self, ids: torch.Tensor | None) -> None:
        """Record the calibration ids' hash, or refuse ids that differ from the interrupted run's."""
        digest = ids_hash(ids)
        if self.state["ids"] is not None and self.state["ids"] != digest:
            raise ResumeError(f"the calibration data differs from the interrupted run's in {self.dir} (its text, tokenizer or seed changed); remove that directory to start over")
        self.state["ids"] = digest
        self._save()

    def progress(self, key: str) -> tuple[int, tuple[list, list | None] | None, list]:
        """``(first layer to do, its saved (hidden, dense) inputs or None, results so far)`` of pass ``key``."""
        entry = self.state["passes"].get(key)
        if entry is None:
            return 0, None, []
        saved = None
        try:
            if entry["inputs"] is not None:
                path = self.dir / entry["inputs"]
                header = read_header(path)
                tensors = read_tensors(path, list(header[0]), header)
                hidden = [tensors[f"h{j}"] for j in range(entry["sequences"])]
                dense = [tensors[f"d{j}"] for j in range(entry["sequences"])] if "d0" in tensors else None
                saved = (hidden, dense)
            return int(entry["done"]) + 1, saved, list(entry["results"])
        except (OSError, ValueError, KeyError, TypeError) as err:  # a deleted or truncated inputs file, a hand-edited state
            raise ResumeError(f"the interrupted run's state in {self.dir} is damaged ({type(err).__name__}: {err}); remove that directory to start over") from err

    def record(self, key: str, index: int, hidden: list | None, dense: list | None, result: Any, last: bool) -> None:
        """Pass ``key`` finished layer ``index``: keep the next layer's inputs (unless it was the ``last``), then the state."""
        entry = self.state["passes"].setdefault(key, {"done": -1, "results": [], "inputs": None, "sequences": 0})
        old = entry["inputs"]
        entry["inputs"] = None
        if hidden is not None and not last:
            entry["inputs"] = f"inputs-{key}-{index + 1}.safetensors"
            tensors = {f"h{j}": h for j, h in enumerate(hidden)} | {f"d{j}": d for j, d in enumerate(dense or [])}
            save_tensors(tensors, self.dir / entry["inputs"])
            entry["sequences"] = len(hidden)
        entry["done"] = index
        entry["results"].append(result)
        self._save()
        if old is not None and old != entry["inputs"]:
            (self.dir / old).unlink(missing_ok=True)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
