"""Building llmsparse's C++ CPU kernels, and choosing the instruction set they run with.

:func:`build` compiles one C++ source with ``torch.utils.cpp_extension.load`` (a C++ compiler and
ninja are needed) into torch's extension cache, once per machine and torch version; the sparse
decode kernel of activation sparsity and the sparse-weight kernels of this package both use it.
:func:`~llmsparse.core.cpu.cpu_isa` (re-exported here) decides which SIMD path they take, for both.
"""

from __future__ import annotations

import hashlib
import logging
from functools import lru_cache
from pathlib import Path

from ..core.cpu import ISA_ENV, ISAS, cpu_isa
from ..errors import KernelBuildError

log = logging.getLogger(__name__)

__all__ = ["ISAS", "ISA_ENV", "ISA_FLAGS", "available", "build", "cpu_isa", "load"]

SOURCES = [Path(__file__).parent / "csrc" / name for name in ("sparse_linear.cpp", "sparse_simd.cpp", "sparse_bf16.cpp", "quant_linear.cpp", "quant_simd.cpp", "quant_bf16.cpp")]
#: Headers the sources include: torch's build cache hashes only the sources, so their hash goes into the flags.
HEADERS = [Path(__file__).parent / "csrc" / name for name in ("sparse_linear.h", "schedule.h")]


#: Compiler flags for an extension compiled for one SIMD path (``build(..., isa=...)``).
ISA_FLAGS = {"scalar": [], "avx2": ["-march=x86-64-v3"], "avx512": ["-march=x86-64-v4"]}


def build(name: str, sources: list[Path], isa: str | None = None, headers: list[Path] = ()):
    """The compiled extension module ``name`` built from ``sources`` (cached on disk by torch, rebuilt when they change).

    ``isa`` (one of :data:`ISAS`, normally :func:`cpu_isa`) compiles the whole source for that SIMD
    path, under a name of its own so each path keeps its own binary; sources that pick their SIMD
    path at run time leave it ``None``, so the binary runs on any CPU.
    """
    from torch.utils import cpp_extension

    flags = ["-O3", "-fopenmp"] + (ISA_FLAGS[isa] if isa else [])
    if headers:  # a changed header changes the flags, which torch's cache does watch
        digest = hashlib.sha1(b"".join(Path(h).read_bytes() for h in headers)).hexdigest()[:12]
        flags.append(f"-DLLMSPARSE_HEADERS_{digest}")
    name = f"{name}_{isa}" if isa else name
    try:
        return cpp_extension.load(name=name, sources=[str(s) for s in sources], extra_cflags=flags, extra_ldflags=["-fopenmp"], verbose=False)
    except (OSError, RuntimeError, ImportError, SystemExit) as err:
        raise KernelBuildError(f"could not build the C++ kernel {sources[0].name} ({err}); needs a C++ compiler and ninja") from err


@lru_cache(maxsize=1)
def load():
    """The sparse-weight matmul extension (built on the first call, about a minute)."""
    return build("llmsparse_sparse_linear", SOURCES, headers=HEADERS)


@lru_cache(maxsize=1)
def available() -> bool:
    """True when the extension is (or can be) built here; otherwise says once why the torch path is used."""
    try:
        load()
    except KernelBuildError as err:
        log.warning("%s; sparse Linears decompress with torch ops instead (slower)", err)
        return False
    return True
