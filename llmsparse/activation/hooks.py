"""Activation sparsity at inference: patched forwards, the prefill convention, the sparse decode path, measurement.

A :class:`Site` sits on one module. On an ``nn.Linear`` it zeroes entries of the module's *input*
before the matmul; on an MLP activation module (CHESS) it zeroes entries of the module's *output*.
Modules are patched by replacing their ``forward`` on the instance, so parameter names, the state
dict and saving are untouched, and :func:`detach` restores the model exactly.

Prefill convention (``prefill``): calls that see one token per sequence (decoding) are always
sparsified; calls with several tokens (a prompt, or a perplexity window) are sparsified on
``all`` tokens (default; what the perplexity numbers in the docs use), on ``none``, or on the
``last-half`` of the tokens (TEAL's evaluation convention).
"""

from __future__ import annotations

import functools
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import check_choice
from ..runtime.linear import SparseLinear
from . import gemv_kernel as _kernel

log = logging.getLogger(__name__)

PREFILL = ("all", "none", "last-half")
SETTINGS_ATTR = "_llmsparse_activation"  # model attribute: the settings of the attached sparsifier
SITE_ATTR = "_llmsparse_site"  # module attribute: its Site


@dataclass
class Site:
    """How one module's activations are sparsified.

    The score of an entry is ``|x|``, times ``scale`` per channel when set (WINA's column norms).
    With ``k`` set, the ``k`` highest-scoring entries of each token are kept (top-k); otherwise
    entries whose score is above ``threshold`` are kept (a scalar, or one value per channel for CHESS).
    """

    role: str
    sparsity: float  # the target this site was calibrated for
    threshold: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    k: int | None = None
    prefill: str = "all"
    counts: list[int] | None = field(default=None, repr=False)  # [zeros, entries] while measuring
    wt: torch.Tensor | None = field(default=None, repr=False)  # [in, out] weight for the sparse decode path
    kernel: str = field(default="torch", repr=False)  # "cpp" (compiled extension) or "torch" (embedding_bag)
    _cache: dict = field(default_factory=dict, repr=False)

    def _on(self, name: str, like: torch.Tensor) -> torch.Tensor | None:
        value = getattr(self, name)
        if value is None or value.device == like.device:
            return value
        key = (name, like.device)
        if key not in self._cache:
            self._cache[key] = value.to(like.device)
        return self._cache[key]

    def score(self, x: torch.Tensor) -> torch.Tensor:
        scale = self._on("scale", x)
        return x.abs() if scale is None else x.abs() * scale

    def keep(self, x: torch.Tensor) -> torch.Tensor:
        """Boolean mask of the entries of ``x`` that survive."""
        score = self.score(x)
        if self.k is not None:
            return torch.zeros_like(x, dtype=torch.bool).scatter_(-1, score.topk(self.k, dim=-1).indices, True)
        return score > self._on("threshold", x)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with the dropped entries set to zero, following the prefill convention."""
        tokens = x.shape[-2] if x.dim() >= 2 else 1
        if tokens == 1 or self.prefill == "all":
            out = x * self.keep(x)
        elif self.prefill == "none":
            out = x
        else:
            half = tokens // 2
            out = torch.cat([x[..., :half, :], x[..., half:, :] * self.keep(x[..., half:, :])], dim=-2)
        if self.counts is not None:
            self.counts[0] += int((out == 0).sum())
            self.counts[1] += out.numel()
        return out

    def decode(self, module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """One token: ``y = sum over kept inputs i of x_i * W^T[i]``, reading only the kept rows of ``W^T``."""
        if self.kernel == "cpp" and self.counts is None and x.device.type == "cpu":
            # the hot path of batch-1 decoding: the extension takes and returns shaped tensors
            ext = _kernel.load()
            if self.k is not None:
                return ext.rows_gemv(x, self.score(x.reshape(-1)).topk(self.k).indices, self.wt, module.bias)
            t = self._cache.get("t")
            if t is None:  # compared in x's dtype, as the masked path does
                t = self._cache["t"] = float(self.threshold.to(x.dtype))
            return ext.threshold_gemv(x, self.wt, t, self._on("scale", x), module.bias)
        v = x.reshape(-1)
        score = self.score(v)
        if self.k is not None:
            idx = score.topk(self.k).indices
        else:
            idx = (score > self._on("threshold", v)).nonzero().squeeze(1)
        offsets = self._cache.get(("offsets", v.device))
        if offsets is None:
            offsets = self._cache[("offsets", v.device)] = torch.zeros(1, dtype=torch.long, device=v.device)
        y = F.embedding_bag(idx, self.wt, offsets, mode="sum", per_sample_weights=v[idx])
        if module.bias is not None:
            y = y + module.bias
        if self.counts is not None:
            self.counts[0] += v.numel() - idx.numel()
            self.counts[1] += v.numel()
        return y.view(*x.shape[:-1], -1)


def _linear_forward(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    site: Site = getattr(module, SITE_ATTR)
    if site.wt is not None and x.shape[:-1].numel() == 1 and x.dtype == site.wt.dtype:
        return site.decode(module, x)
    return type(module).forward(module, site.apply(x))


def _act_forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return getattr(module, SITE_ATTR).apply(type(module).forward(module, x))


def _patch(module: nn.Module, site: Site) -> None:
    setattr(module, SITE_ATTR, site)
    forward = _linear_forward if isinstance(module, nn.Linear) else _act_forward
    module.forward = functools.partial(forward, module)


def _unpatch(module: nn.Module) -> None:
    delattr(module, SITE_ATTR)
    del module.forward


@contextmanager
def patched(model: nn.Module, sites: dict[str, Site]):
    """Sparsify the named modules only inside the ``with`` block (calibration searches use this)."""
    modules = [model.get_submodule(name) for name in sites]
    for module, site in zip(modules, sites.values()):
        _patch(module, site)
    try:
        yield
    finally:
        for module in modules:
            _unpatch(module)


def attach(model: nn.Module, sites: dict[str, Site], settings: dict) -> None:
    """Patch the named modules of ``model`` with their sites (replacing any attached before)."""
    detach(model)
    for name, site in sites.items():
        _patch(model.get_submodule(name), site)
    setattr(model, SETTINGS_ATTR, dict(settings))
    set_prefill(model, settings.get("prefill", "all"))


def detach(model: nn.Module) -> None:
    """Remove every site: the model computes densely again, with its original weights."""
    disable_sparse_decode(model)
    for module in model.modules():
        if hasattr(module, SITE_ATTR):
            _unpatch(module)
    if hasattr(model, SETTINGS_ATTR):
        delattr(model, SETTINGS_ATTR)


def sites_of(model: nn.Module) -> dict[str, Site]:
    """The attached sites by qualified module name (empty when the model is dense)."""
    return {name: getattr(m, SITE_ATTR) for name, m in model.named_modules() if hasattr(m, SITE_ATTR)}


def settings_of(model: nn.Module) -> dict | None:
    """Method, sparsity, allocation and prefill of the attached sparsifier, or None."""
    return getattr(model, SETTINGS_ATTR, None)


def set_prefill(model: nn.Module, prefill: str) -> None:
    """Change the prefill convention (``all``, ``none``, ``last-half``) of every site."""
    check_choice("prefill", prefill, PREFILL)
    for site in sites_of(model).values():
        site.prefill = prefill
    if settings_of(model) is not None:
        settings_of(model)["prefill"] = prefill


def enable_sparse_decode(model: nn.Module, kernel: str = "auto") -> int:
    """Use the sparse decode path for batch-1, one-token calls of every sparsified Linear.

    Each weight is stored transposed (``[in, out]``, input channels contiguous) and the Linear's
    weight becomes a view of it, so memory does not grow; prompts still use ordinary matmuls. A
    compressed Linear of the sparse runtime (:class:`~llmsparse.runtime.SparseLinear`) is re-stored
    input-major instead, and its own kernel skips the zeroed inputs (weight and activation sparsity fused).
    ``kernel``: ``cpp`` (the compiled extension), ``torch`` (``F.embedding_bag``, no compiler
    needed) or ``auto`` (cpp where it builds, else torch with a warning). Both compute the same
    result up to float summation order. Call it after moving the model to its device. Returns the
    number of Linears switched (quantized bitsandbytes Linears keep their own matmul).
    """
    check_choice("kernel", kernel, ("auto", "cpp", "torch"))
    if kernel == "auto":
        kernel = "cpp" if _kernel.available() else "torch"
    elif kernel == "cpp":
        _kernel.load()  # raises KernelBuildError with the compiler's complaint
    log.info("sparse decode: %s", f"C++ kernel, {_kernel.isa()} path" if kernel == "cpp" else "torch ops (F.embedding_bag)")
    count = 0
    for name, site in sites_of(model).items():
        module = model.get_submodule(name)
        if isinstance(module, SparseLinear):
            module.use_input_major(True)
            count += 1
        elif isinstance(module, nn.Linear) and site.wt is None and module.weight.is_floating_point():  # not bitsandbytes
            site.wt = module.weight.data.t().contiguous()
            module.weight.data = site.wt.t()
            site.kernel = kernel
            count += 1
    return count


def disable_sparse_decode(model: nn.Module) -> None:
    """Back to ordinary matmuls with contiguous ``[out, in]`` weights (compressed Linears: output-major again)."""
    for name, site in sites_of(model).items():
        if isinstance(model.get_submodule(name), SparseLinear):
            model.get_submodule(name).use_input_major(False)
        elif site.wt is not None:
            module = model.get_submodule(name)
            module.weight.data = module.weight.data.contiguous()
            site.wt = None


@contextmanager
def counting(model: nn.Module):
    """Count zero entries at every site while the block runs; yields ``{name: [zeros, entries]}``."""
    sites = sites_of(model)
    for site in sites.values():
        site.counts = [0, 0]
    try:
        yield {name: site.counts for name, site in sites.items()}
    finally:
        for site in sites.values():
            site.counts = None
