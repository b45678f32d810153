"""Sparsity that pays at run time: compressed matrices stay compressed in memory and are computed from directly.

::

    model, tok = llmsparse.load_model("out/model-bitmask", runtime="sparse")   # SparseLinear layers, never dense
    model, tok = llmsparse.load_model("out/model-dense", runtime="auto")       # compresses the sparse matrices
    import llmsparse; AutoModelForCausalLM.from_pretrained("out/model-bitmask") # the same, through transformers

:class:`SparseLinear` (:mod:`.linear`) holds one matrix in its checkpoint format's tensors and picks
the kernel (:mod:`.sparse_kernel`, ``csrc/sparse_linear.cpp``); :mod:`.convert` builds models from compact or
dense checkpoints; :mod:`.hf` and :mod:`.hf_quantizer` register llmsparse as a transformers
quantization method.

Imports the root, :mod:`llmsparse.core` and :mod:`llmsparse.formats`.
"""

from __future__ import annotations

from . import hf
from .convert import MIN_SPARSITY, RUNTIMES, convert_dense, sparse_layers, summary
from .linear import DECODE_TOKENS, SparseLinear
from .sparse_kernel import cpu_isa

hf.install()

__all__ = ["DECODE_TOKENS", "MIN_SPARSITY", "RUNTIMES", "SparseLinear", "convert_dense", "cpu_isa", "sparse_layers", "summary"]
