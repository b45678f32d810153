"""The CPU sparse-input GEMV behind ``enable_sparse_decode``: a small C++ extension, compiled on first use.

It is built with ``torch.utils.cpp_extension.load`` (needs a C++ compiler and ninja) into torch's
extension cache, once per SIMD path (:func:`isa`) and torch version (about 40 s);
``python -c "from llmsparse.activation import kernel; kernel.load()"`` builds it ahead of time. Where it cannot be built, ``enable_sparse_decode`` uses the pure-PyTorch
path (``F.embedding_bag`` over the kept rows), which computes the same thing more slowly, and says so.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

from ..errors import KernelBuildError
from ..runtime.sparse_kernel import build, cpu_isa

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "sparse_gemv.cpp"


@lru_cache(maxsize=1)
def load():
    """The compiled extension module for :func:`isa` (built on the first call; cached on disk by torch)."""
    return build("llmsparse_sparse_gemv", [SOURCE], isa=isa())


def isa() -> str:
    """The SIMD path the kernel is compiled for: this CPU's (:func:`~llmsparse.core.cpu.cpu_isa`, lowered by ``LLMSPARSE_CPU_ISA``)."""
    return cpu_isa()


def available() -> bool:
    """True when the extension is (or can be) built on this machine."""
    try:
        load()
    except KernelBuildError as err:
        log.warning("%s", err)
        return False
    return True
