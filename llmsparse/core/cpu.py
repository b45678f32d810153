"""What this machine can run fast: CPU instruction sets, threads and GPUs, detected once.

The one place that answers "which SIMD path may the C++ kernels take" (:func:`cpu_isa`) and "are
bf16 matmuls native here" (:func:`native_bf16`); the kernels, the compute-dtype choice, the saved
``llmsparse.json``, the benches and ``llmsparse env`` all read it. Detection combines the
``/proc/cpuinfo`` flags (Linux) with torch's own capability report (cpuinfo, which also checks that
the OS saves the wide registers): a feature counts when either reports it. Imports only the
ground-floor :mod:`llmsparse.errors` besides torch and the standard library.
"""

from __future__ import annotations

import logging
import os
import platform
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import torch

from ..errors import unknown_name

log = logging.getLogger(__name__)

#: The SIMD paths of the C++ kernels, narrowest first; the index is what the kernels take.
ISAS = ("scalar", "avx2", "avx512")
ISA_ENV = "LLMSPARSE_CPU_ISA"
#: /proc/cpuinfo flag -> feature name; torch.cpu probe -> feature name.
_FLAGS = {"avx2": "avx2", "avx512f": "avx512f", "avx512_bf16": "avx512_bf16", "amx_tile": "amx", "amx_bf16": "amx_bf16"}
_TORCH = {"_is_avx2_supported": "avx2", "_is_avx512_supported": "avx512f", "_is_avx512_bf16_supported": "avx512_bf16", "_is_amx_tile_supported": "amx"}
FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx", "amx_bf16")


@dataclass(frozen=True)
class Machine:
    """The facts about this machine that change which path is fast (and hence, sometimes, results)."""

    cpu: str
    arch: str
    features: tuple[str, ...]  # the subset of FEATURES present
    torch_capability: str  # torch.backends.cpu.get_cpu_capability(): the SIMD level ATen's kernels use
    threads: int  # torch.get_num_threads()
    cores: int  # os.cpu_count()
    gpus: tuple[str, ...]  # "name (bf16)" per visible CUDA device

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """One line for bench headers and reports, e.g. ``AMD EPYC (x86_64; avx2 avx512f avx512_bf16); 2 threads; no GPU``."""
        feats = " ".join(self.features) or "no AVX2"
        gpus = ", ".join(self.gpus) if self.gpus else "no GPU"
        return f"{self.cpu} ({self.arch}; {feats}); {self.threads} threads; {gpus}"


def _cpuinfo() -> tuple[str, set[str]]:
    """CPU model name and flags from ``/proc/cpuinfo`` (empty off Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return "", set()
    name, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Processor", "cpu model") and not name:
            name = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return name, flags


def _torch_features() -> set[str]:
    found = set()
    for probe, feature in _TORCH.items():
        check = getattr(torch.cpu, probe, None)
        if check is not None and check():
            found.add(feature)
    return found


def _gpus() -> tuple[str, ...]:
    if not torch.cuda.is_available():
        return ()
    return tuple(
        f"{torch.cuda.get_device_name(i)} ({'bf16' if torch.cuda.get_device_capability(i) >= (8, 0) else 'no native bf16'})"
        for i in range(torch.cuda.device_count())
    )


@lru_cache(maxsize=1)
def machine() -> Machine:
    """This machine, detected on the first call."""
    name, flags = _cpuinfo()
    present = {feature for flag, feature in _FLAGS.items() if flag in flags} | _torch_features()
    return Machine(
        cpu=name or platform.processor() or "unknown CPU",
        arch=platform.machine(),
        features=tuple(f for f in FEATURES if f in present),
        torch_capability=torch.backends.cpu.get_cpu_capability(),
        threads=torch.get_num_threads(),
        cores=os.cpu_count() or 1,
        gpus=_gpus(),
    )


def native_bf16(device: torch.device) -> bool:
    """True when ``device`` runs bf16 matmuls in hardware: AVX-512 BF16 or AMX on CPU, ``is_bf16_supported`` on CUDA.

    Elsewhere bf16 matmuls are emulated through float32, about 3x slower than float32 itself.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool({"avx512_bf16", "amx", "amx_bf16"} & set(machine().features))
    return False


@lru_cache(maxsize=None)
def warn_emulated_bf16(device_type: str) -> None:
    """Say (once per device type) that bf16 forwards asked for here are emulated, hence slow."""
    log.warning(
        "bfloat16 compute on this %s is emulated (no AVX-512 BF16 or AMX): expect it to run about 3x slower than "
        "float32; --compute-dtype auto picks float32 here",
        "CPU" if device_type == "cpu" else f"{device_type} device",
    )


@lru_cache(maxsize=1)
def cpu_isa() -> str:
    """The widest SIMD path the C++ kernels may use on this CPU: ``avx512``, ``avx2`` or ``scalar``.

    Taken from torch's own CPU detection. ``LLMSPARSE_CPU_ISA`` may lower it (to compare paths, or
    in tests), never raise it: asking for more than the CPU has gives the widest it has, with a note.
    """
    found = {"AVX512": "avx512", "AVX2": "avx2"}.get(torch.backends.cpu.get_cpu_capability(), "scalar")
    asked = os.environ.get(ISA_ENV)
    if asked is None:
        if found != "avx512":
            log.info("C++ kernels: this CPU has no AVX-512, using the %s path", found)
        return found
    if asked not in ISAS:
        raise unknown_name(f"{ISA_ENV} value", asked, ISAS)
    if ISAS.index(asked) > ISAS.index(found):
        log.warning("%s=%s, but this CPU supports only %s: using %s", ISA_ENV, asked, found, found)
        return found
    return asked


def compute_dtype(storage: torch.dtype, device: torch.device, asked: torch.dtype | None = None) -> torch.dtype:
    """The dtype of calibration forwards: ``asked``, or (``None``, i.e. ``auto``) the fastest one the device runs natively.

    ``auto`` is bf16 where :func:`~llmsparse.native_bf16` (AVX-512 BF16 or AMX, or a CUDA GPU with
    bf16), float32 elsewhere; a float16 model keeps float16 off CPU (CPU float16 matmuls are slow).
    bf16 forwards halve the bytes of every matmul operand and, on such a CPU, run about twice as
    fast as float32; the statistics, masks and weight updates stay float32 either way. The resolved
    dtype is recorded in the report (``compute_dtype``); ``float32`` gives the same result on every
    machine. An explicit bf16 on a device that emulates it runs as asked, with a warning (once)
    about the expected ~3x slowdown.
    """
    device = torch.device(device)
    if asked is not None:
        if asked == torch.bfloat16 and not native_bf16(device):
            warn_emulated_bf16(device.type)
        return asked
    if storage == torch.float16 and device.type != "cpu":
        return storage
    return torch.bfloat16 if native_bf16(device) else torch.float32


#: Floating dtypes by name, for ``--dtype`` and ``--compute-dtype``.
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``'float32'`` etc. as a torch dtype; ``None``/``'auto'`` stay ``None`` (let the caller decide)."""
    if dtype is None or dtype == "auto":
        return None
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise unknown_name("dtype", dtype, [*DTYPES, "auto"])
    return DTYPES[dtype]
