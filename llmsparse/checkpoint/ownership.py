"""What makes a directory llmsparse's own: the list of files a run wrote, and files with the user's permissions.

``llmsparse.json`` lists every file of the saved output (``files``); :func:`foreign_entry` says why a
directory is not such an output, so ``--overwrite`` never replaces a directory of the user's that merely
holds a stray ``llmsparse.json``. :func:`follow_umask` gives the files of an output the permissions the
user's umask gives new files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

#: The file every llmsparse output holds; with its file list, what marks a directory as one ``overwrite`` may replace.
METADATA_FILE = "llmsparse.json"


def output_files(directory: Path) -> list[str]:
    """Every file under ``directory`` (relative POSIX paths, sorted): what ``llmsparse.json`` lists as the run's own."""
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file() or p.is_symlink())


def foreign_entry(directory: Path) -> str | None:
    """Why ``directory`` is not a previous llmsparse output (None when it is one).

    It is one when ``llmsparse.json`` is a regular file holding a JSON object with ``format``,
    ``versions`` and ``files`` (the run's file list), and every entry of the directory is one of those
    files or a folder on the way to one. Files the list names but the directory lacks are fine.
    """
    marker = directory / METADATA_FILE
    if marker.is_symlink() or not marker.is_file():
        return f"no {METADATA_FILE}"
    try:
        meta = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return f"its {METADATA_FILE} is not one llmsparse wrote (not JSON)"
    files = meta.get("files") if isinstance(meta, dict) else None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files) or not {"format", "versions"} <= set(meta):
        return f"its {METADATA_FILE} is not one llmsparse wrote (no list of the files the run wrote)"
    ours = {*files, METADATA_FILE}
    folders = {parent.as_posix() for f in ours for parent in Path(f).parents}
    for entry in directory.rglob("*"):  # top level first; stops at the first stranger (a big directory is not walked whole)
        name = entry.relative_to(directory).as_posix()
        if entry.is_dir() and not entry.is_symlink():
            if name not in folders:
                return f"it holds {name + '/'!r}, which llmsparse did not write"
        elif name not in ours:
            return f"it holds {name!r}, which llmsparse did not write"
    return None


def _umask() -> int:
    """The process's umask (read without changing it where ``/proc`` says it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def follow_umask(directory: Path) -> None:
    """Give every file under ``directory`` the permissions a new file gets under the umask (``0644`` under ``022``).

    Some writers create files ``0600`` (safetensors' temporary-file-and-rename); an output is the user's ordinary files.
    """
    mask = _umask()
    for path in [directory, *directory.rglob("*")]:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)
