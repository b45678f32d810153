"""``llmsparse env``: versions, CPU model and features, threads and GPUs, for bug reports.

The CPU facts come from :mod:`llmsparse.core.cpu` (the same detection the kernels and ``--compute-dtype
auto`` use), so what this prints is what a run on this machine will do.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import platform

import torch

from ..core import cpu
from ..version import __version__

HELP = "print versions, CPU features, threads and GPUs (paste this into bug reports)"
DESCRIPTION = HELP[0].upper() + HELP[1:] + "."

#: Distribution names, required first, then the optional extras llmsparse uses when present.
PACKAGES = ("torch", "transformers", "accelerate", "safetensors", "tokenizers", "gguf", "datasets", "lm_eval", "huggingface_hub", "numpy")


def add(parser: argparse.ArgumentParser) -> None:
    """No flags."""


def package_version(name: str) -> str:
    """The installed version of distribution ``name``, or ``not installed``."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def report() -> list[tuple[str, str]]:
    """``(label, value)`` rows of the report."""
    m = cpu.machine()
    rows = [("llmsparse", __version__), ("python", f"{platform.python_version()} ({platform.platform()})")]
    rows += [(name, package_version(name)) for name in PACKAGES]
    rows += [
        ("cpu", f"{m.cpu} ({m.arch}, {m.cores} logical cores)"),
        ("cpu features", " ".join(m.features) or "none of " + " ".join(cpu.FEATURES)),
        ("torch cpu capability", m.torch_capability),
        ("kernel SIMD path", cpu.cpu_isa()),
        ("native bf16 on cpu", "yes" if cpu.native_bf16(torch.device("cpu")) else "no (bf16 compute is emulated, ~3x slower than float32)"),
        ("threads", f"{m.threads} (torch.get_num_threads)"),
        ("gpus", ", ".join(m.gpus) or "none"),
    ]
    return rows


def run(args: argparse.Namespace) -> int:
    rows = report()
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    return 0
