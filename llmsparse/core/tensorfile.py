"""The safetensors file format read and written one tensor at a time, so a file never passes through memory whole.

A file is an 8-byte little-endian header length, a JSON header (name -> dtype, shape, byte offsets
into the data; ``__metadata__``), padded with spaces to a multiple of 8, then the raw little-endian
bytes. ``safetensors.torch.save_file`` first copies every tensor into one buffer, and reading
through its memory map leaves the touched file pages in the process's resident memory; here each
tensor is written from its own storage and read with positioned reads into a fresh tensor.
Files written here load with ``safetensors`` and ``transformers`` as usual.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64",
    torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}
TORCH = {name: dtype for dtype, name in DTYPES.items()}


def read_header(path: str | Path) -> tuple[dict[str, Any], int]:
    """``(header without __metadata__, byte offset where the data starts)`` of a safetensors file."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header, 8 + size


def nbytes(entry: dict[str, Any]) -> int:
    """Bytes of one header entry's tensor."""
    start, end = entry["data_offsets"]
    return end - start


def read_tensors(path: str | Path, keys: list[str], header: tuple[dict[str, Any], int] | None = None) -> dict[str, torch.Tensor]:
    """The tensors ``keys`` of the file at ``path`` (``header``: its :func:`read_header`, if known)."""
    entries, start = header or read_header(path)
    out = {}
    with open(path, "rb", buffering=0) as f:
        for key in keys:
            entry = entries[key]
            tensor = torch.empty(entry["shape"], dtype=TORCH[entry["dtype"]])
            if tensor.numel():
                f.seek(start + entry["data_offsets"][0])
                view = tensor.reshape(-1).view(torch.uint8).numpy()
                if f.readinto(view) != nbytes(entry):
                    raise OSError(f"{path}: {key} is truncated")
            out[key] = tensor
    return out


def _write_header(f, header: dict[str, Any]) -> None:
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    f.write(len(text).to_bytes(8, "little"))
    f.write(text)


def save_file(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` as a safetensors file at ``path``, one tensor at a time."""
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for key, t in tensors.items():
        size = t.numel() * t.element_size()
        header[key] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    with open(path, "wb") as f:
        _write_header(f, header)
        for t in tensors.values():
            if t.numel():
                f.write(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)


def copy_tensor(source: str | Path, key: str, path: str | Path, name: str, metadata: dict[str, str] | None = None, chunk: int = 1 << 24) -> None:
    """Write the tensor ``key`` of the file ``source`` as the one tensor ``name`` of a new file at ``path``.

    The bytes are copied ``chunk`` at a time, so the tensor (a 262k-row embedding is 0.6 GiB in
    float32) never passes through memory whole.
    """
    entries, start = read_header(source)
    entry = entries[key]
    size = nbytes(entry)
    header = ({"__metadata__": metadata} if metadata else {}) | {name: {"dtype": entry["dtype"], "shape": entry["shape"], "data_offsets": [0, size]}}
    with open(source, "rb", buffering=0) as src, open(path, "wb") as dst:
        _write_header(dst, header)
        src.seek(start + entry["data_offsets"][0])
        while size:
            block = src.read(min(chunk, size))
            if not block:
                raise OSError(f"{source}: {key} is truncated")
            dst.write(block)
            size -= len(block)
