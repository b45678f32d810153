"""The on-disk state of a recovery run, so that an interrupted run continues where it stopped (``--resume``).

Same guarantees as a streamed prune (:mod:`llmsparse.checkpoint.resume`): the state lives in a
directory of its own (the CLI uses ``.NAME.partial`` beside the output), it records the run's
arguments and refuses a resume with other ones, refuses to start over it without ``resume``,
and ``state.pt`` (read with ``weights_only=True``: tensors and plain values, never pickled code) is written under a temporary name and renamed into place, so it is always
complete. It holds the trained tensors, the best ones so far, the optimizer, the step, the
loss history and torch's RNG state; a resumed run therefore takes the same steps as an
uninterrupted one. The directory is removed once the output is published.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ..errors import ResumeError, check_resume

STATE_FILE = "state.pt"


class RunState:
    """The state directory of one recovery run: ``load()`` what an interrupted run left, ``save()`` progress."""

    def __init__(self, directory: str | Path, args: dict[str, Any], resume: bool):
        self.dir = Path(directory)
        self.args = args
        path = self.dir / STATE_FILE
        self.saved: dict[str, Any] | None = torch.load(path, weights_only=True) if path.is_file() else None
        if self.saved is not None:
            check_resume(self.dir, self.saved["args"], args, resume, "recovery")
        elif resume and not self.dir.exists():
            raise ResumeError(f"--resume: there is no interrupted recovery in {self.dir} to continue")

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` (plus the run's arguments) as ``state.pt``, complete or not at all."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{STATE_FILE}.tmp"
        torch.save({**state, "args": self.args}, tmp)
        os.replace(tmp, self.dir / STATE_FILE)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
