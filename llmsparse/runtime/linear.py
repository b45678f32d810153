"""``SparseLinear``: a Linear layer whose weight stays compressed in memory and is computed from directly.

At batch 1 a decoder is memory-bound: every token reads every weight once. A matrix held as a bit
mask plus its kept values (:class:`~llmsparse.formats.base.SparseLayout`) is
``(1 - s) * value bytes + 1/8`` bytes per weight, so reading it instead of the dense matrix is what
makes sparsity pay at run time. The module keeps exactly the tensors its checkpoint format stores,
as buffers with the stored names, so it loads without ever building the dense matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.memory import FileMappings
from ..formats import get_format
from ..formats.base import Format, QuantLayout, SparseLayout
from . import quant
from . import sparse_kernel as kernel

#: Calls with at most this many tokens walk the compressed matrix (decoding, small batches): each
#: decoded group of columns is reused by up to four tokens. Longer inputs (prompts, perplexity
#: windows) decompress a block of rows at a time into a buffer that stays in cache and run a dense
#: GEMM on it (the C++ ``blocked_matmul``), so the dense matrix never goes to memory.
DECODE_TOKENS = 8
#: One decompressed block of rows in the long-input path: at least :data:`BLOCK_ROWS` rows (fewer made
#: the GEMM of wide matrices run at half speed: docs/RUNTIME.md) and at least :data:`BLOCK_BYTES`;
#: either way it stays in the last-level cache.
BLOCK_ROWS = 512
BLOCK_BYTES = 4 << 20

_NO_OFFSETS = torch.empty(0, dtype=torch.int64)
_scratch: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}


def _buffer(numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A buffer of ``numel`` elements shared by every SparseLinear (one matrix is decompressed at a time)."""
    key = (dtype, device)
    if key not in _scratch or _scratch[key].numel() < numel:
        _scratch.pop(key, None)
        _scratch[key] = torch.empty(numel, dtype=dtype, device=device)
    return _scratch[key][:numel]


def _torch_decompress(layout: SparseLayout, out: torch.Tensor) -> None:
    """The dense matrix with torch ops (any device, no compiler): the set bits in row-major order take the values in order."""
    bits = torch.arange(8, device=layout.bitmask.device, dtype=torch.uint8)
    mask = ((layout.bitmask.unsqueeze(-1) >> bits) & 1).view(layout.rows, -1)[:, : layout.cols].bool()
    out.zero_()
    out[mask] = layout.values.to(out.dtype)


class SparseLinear(nn.Linear):
    """``y = x Wᵀ + b`` with ``W`` held in a checkpoint format's compressed tensors (buffers named as stored).

    ``forward`` is the one place that picks the computation:

    * on CPU with the C++ extension, up to :data:`DECODE_TOKENS` tokens: the kernel walks the mask
      and the kept values (SIMD path from :func:`~llmsparse.runtime.sparse_kernel.cpu_isa`). A matrix
      stored output-major (``[out, in]``, the usual case) gives each output as one row's masked
      dot product; one stored input-major (``[in, out]``: GPT-2's ``Conv1D``, or after
      :meth:`use_input_major`) adds ``x_i`` times row ``i`` for the inputs that are not zero, so
      zeroed activations (activation sparsity) skip their rows entirely;
    * longer inputs, output-major, no autograd: a block of rows at a time is decompressed into a
      buffer that stays in cache and multiplied by a dense GEMM (:data:`BLOCK_ROWS`, :data:`BLOCK_BYTES`);
    * otherwise (input-major long inputs, autograd, another device, no compiler): the matrix is
      decompressed into a buffer shared by all SparseLinears and multiplied with ``F.linear``.

    It is an ``nn.Linear`` (``in_features``, ``out_features``, ``bias``), so code that looks for
    Linear layers finds it. ``weight`` is a property that decompresses the matrix on each access
    and returns a read-only copy (an inference tensor: writing to it raises, so pruning or training
    it fails loudly instead of changing a copy).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        fmt: Format,
        parts: dict[str, torch.Tensor],
        bias: torch.Tensor | None = None,
        input_major: bool = False,
        name: str = "",
    ):
        nn.Module.__init__(self)  # not nn.Linear.__init__, which would allocate the dense weight
        self.in_features, self.out_features = in_features, out_features
        self.format, self.name, self.input_major = fmt, name, input_major
        self._part_names = tuple(parts)
        for key, tensor in parts.items():
            self.register_buffer(key, tensor)
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None
        self._layout: SparseLayout | None = None

    @classmethod
    def from_module(cls, module: nn.Module, fmt: Format, name: str = "") -> SparseLinear:
        """Compress an ``nn.Linear`` (weight ``[out, in]``) or a GPT-2 ``Conv1D`` (weight stored ``[in, out]``) with ``fmt``."""
        weight = module.weight.detach()
        input_major = not isinstance(module, nn.Linear)
        rows, cols = weight.shape
        out_features, in_features = (cols, rows) if input_major else (rows, cols)
        bias = module.bias.detach() if module.bias is not None else None
        return cls(in_features, out_features, fmt, fmt.compress(weight, name), bias, input_major, name)

    @property
    def parts(self) -> dict[str, torch.Tensor]:
        """The stored tensors, by their checkpoint names."""
        return {key: getattr(self, key) for key in self._part_names}

    def layout(self) -> SparseLayout | QuantLayout:
        """The kernels' view of the stored tensors, checked by the format the first time (and after every move or cast)."""
        if self._layout is None:
            self._layout = self.format.layout(self.parts, self.name)
        return self._layout

    def cast_values(self, dtype: torch.dtype) -> None:
        """Stored float values (not group scales: a rounded scale would move every weight of its group) in ``dtype``."""
        for key in self._part_names:
            tensor = getattr(self, key)
            if tensor.is_floating_point() and "scale" not in key and tensor.dtype != dtype:
                self._buffers[key] = tensor.to(dtype)
                self._layout = None

    def own_parts(self, mapped: FileMappings) -> None:
        """Copy stored tensors that read from a mapped file into memory of their own (see ``convert.release_file``)."""
        for key in self._part_names:
            tensor = getattr(self, key)
            if mapped.holds(tensor):
                self._buffers[key] = tensor.clone()
                self._layout = None

    def _apply(self, fn, recurse: bool = True):
        self._layout = None  # .to(), .float(), ... replace the buffers
        return super()._apply(fn, recurse)

    @property
    def nbytes(self) -> int:
        """Bytes of the stored tensors (what this layer holds instead of the dense matrix)."""
        return sum(t.numel() * t.element_size() for t in self.parts.values())

    def stored_dense(self, reuse: bool = False) -> torch.Tensor:
        """The stored matrix decompressed (``[out, in]``, or ``[in, out]`` when input-major), in the shared buffer if ``reuse``."""
        layout = self.layout()
        if isinstance(layout, QuantLayout):
            return quant.dense(layout, _buffer(layout.rows * layout.cols, layout.dtype, layout.scale.device) if reuse else None)
        values = layout.values
        size = layout.rows * layout.cols
        flat = _buffer(size, values.dtype, values.device) if reuse else torch.empty(size, dtype=values.dtype, device=values.device)
        out = flat.view(layout.rows, layout.cols)
        if values.device.type == "cpu" and kernel.available():
            offsets = layout.row_offsets if layout.row_offsets is not None else _NO_OFFSETS
            kernel.load().decompress(values, layout.bitmask, offsets, out, kernel.ISAS.index(kernel.cpu_isa()))
        else:
            _torch_decompress(layout, out)
        return out

    @property
    def weight(self) -> torch.Tensor:
        """The dense ``[out_features, in_features]`` weight, decompressed on each access; a read-only copy."""
        with torch.inference_mode():
            dense = self.stored_dense()
            dense = dense.t() if self.input_major else dense
        dense._is_hf_initialized = True  # transformers' weight initialisation skips it (it would write into the copy)
        return dense

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.numel() // x.shape[-1] if x.shape[-1] else 0
        layout = self.layout()
        if isinstance(layout, QuantLayout) and x.device.type == "cpu" and kernel.available() and not self.input_major:
            if tokens <= DECODE_TOKENS or not torch.is_grad_enabled():
                block = max(BLOCK_ROWS, BLOCK_BYTES // max(1, layout.cols * layout.scale.element_size()))
                return quant.matmul(layout, x, self.bias, tokens <= DECODE_TOKENS, block)
        if x.device.type == "cpu" and kernel.available() and not isinstance(layout, QuantLayout):
            ext, isa = kernel.load(), kernel.ISAS.index(kernel.cpu_isa())
            offsets = layout.row_offsets if layout.row_offsets is not None else _NO_OFFSETS
            if tokens <= DECODE_TOKENS:
                matmul = ext.cols_matmul if self.input_major else ext.rows_matmul
                return matmul(x, layout.values, layout.bitmask, offsets, layout.cols, self.bias, isa)
            if not self.input_major and not torch.is_grad_enabled():
                block = max(BLOCK_ROWS, BLOCK_BYTES // max(1, layout.cols * layout.values.element_size()))
                return ext.blocked_matmul(x, layout.values, layout.bitmask, offsets, layout.cols, self.bias, block, isa)
        dense = self.stored_dense(reuse=not torch.is_grad_enabled())  # a saved-for-backward weight must not be overwritten
        bias = self.bias.to(dense.dtype) if self.bias is not None else None
        return F.linear(x.to(dense.dtype), dense.t() if self.input_major else dense, bias).to(x.dtype)

    def use_input_major(self, input_major: bool) -> None:
        """Store the matrix input-major (``[in, out]``, zero inputs skipped) or output-major, re-compressing it as ``bitmask``.

        The other orientation is built from one decompressed copy of this matrix, so memory does
        not grow; the stored tensors (and so this layer's state dict) become the bitmask layout of
        the new orientation.
        """
        if input_major == self.input_major:
            return
        fmt = get_format("bitmask")
        device = next(iter(self.parts.values())).device
        with torch.no_grad():
            parts = fmt.compress(self.stored_dense().t().contiguous().cpu(), self.name)
        for key in self._part_names:
            del self._buffers[key]
        self._part_names = tuple(parts)
        for key, tensor in parts.items():
            self.register_buffer(key, tensor.to(device))
        self.format, self.input_major, self._layout = fmt, input_major, None

    def extra_repr(self) -> str:
        stored = "input-major" if self.input_major else "output-major"
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, format={self.format.label}, {stored}"
