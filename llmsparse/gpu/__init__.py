"""The GPU path: fused Triton column loops, a memory planner and GPU error handling.

Importing this package imports no Triton (the kernels load on first CUDA use, see :mod:`.dispatch`).
"""

from .dispatch import column_loop, column_loop_shared, gptq, kernel_enabled

__all__ = ["column_loop", "column_loop_shared", "gptq", "kernel_enabled"]
