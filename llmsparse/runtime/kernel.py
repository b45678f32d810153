"""Building llmsparse's C++ CPU kernels, and choosing the instruction set they run with.

:func:`build` compiles one C++ source with ``torch.utils.cpp_extension.load`` (a C++ compiler and
ninja are needed) into torch's extension cache, once per machine and torch version; the sparse
decode kernel of activation sparsity and the sparse-weight kernels of this package both use it.
:func:`cpu_isa` is the one place that decides which SIMD path the sparse-weight kernels take.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from pathlib import Path

import torch

from ..errors import KernelBuildError, unknown_name

log = logging.getLogger(__name__)

SOURCES = [Path(__file__).parent / "csrc" / name for name in ("sparse_linear.cpp", "sparse_simd.cpp")]  # + sparse_linear.h
#: The SIMD paths of ``sparse_linear.cpp``, narrowest first; the index is what the kernels take.
ISAS = ("scalar", "avx2", "avx512")
ISA_ENV = "LLMSPARSE_CPU_ISA"


def build(name: str, sources: list[Path], native: bool = False):
    """The compiled extension module ``name`` built from ``sources`` (cached on disk by torch, rebuilt when they change).

    ``native`` compiles for this CPU (``-march=native``) unless ``LLMSPARSE_PORTABLE_KERNEL`` is
    set; sources that pick their SIMD path at run time leave it off, so the binary runs on any CPU.
    """
    from torch.utils import cpp_extension

    flags = ["-O3", "-fopenmp"] + (["-march=native"] if native and not os.environ.get("LLMSPARSE_PORTABLE_KERNEL") else [])
    try:
        return cpp_extension.load(name=name, sources=[str(s) for s in sources], extra_cflags=flags, extra_ldflags=["-fopenmp"], verbose=False)
    except (OSError, RuntimeError, ImportError, SystemExit) as err:
        raise KernelBuildError(f"could not build the C++ kernel {sources[0].name} ({err}); needs a C++ compiler and ninja") from err


@lru_cache(maxsize=1)
def load():
    """The sparse-weight matmul extension (built on the first call, about a minute)."""
    return build("llmsparse_sparse_linear", SOURCES)


@lru_cache(maxsize=1)
def available() -> bool:
    """True when the extension is (or can be) built here; otherwise says once why the torch path is used."""
    try:
        load()
    except KernelBuildError as err:
        log.warning("%s; sparse Linears decompress with torch ops instead (slower)", err)
        return False
    return True


@lru_cache(maxsize=1)
def cpu_isa() -> str:
    """The widest SIMD path the kernels may use on this CPU: ``avx512``, ``avx2`` or ``scalar``.

    Taken from torch's own CPU detection (cpuinfo, which also checks that the OS saves the wide
    registers). ``LLMSPARSE_CPU_ISA`` may lower it (to compare paths, or in tests), never raise it:
    asking for more than the CPU has gives the widest it has, with a note.
    """
    found = {"AVX512": "avx512", "AVX2": "avx2"}.get(torch.backends.cpu.get_cpu_capability(), "scalar")
    asked = os.environ.get(ISA_ENV)
    if asked is None:
        if found != "avx512":
            log.info("sparse kernels: this CPU has no AVX-512, using the %s path", found)
        return found
    if asked not in ISAS:
        raise unknown_name(f"{ISA_ENV} value", asked, ISAS)
    if ISAS.index(asked) > ISAS.index(found):
        log.warning("%s=%s, but this CPU supports only %s: using %s", ISA_ENV, asked, found, found)
        return found
    return asked
