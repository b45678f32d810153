"""Memory plan of a layer-by-layer pruning run on one GPU, from the model's shape alone (no weights).

The engine keeps one decoder layer on the device at a time, so what must fit is: that layer as
float32 working copies, the calibration activations entering and leaving it (bfloat16, kept on the
device when they fit, else in pinned host memory), the input Hessians of its matrices (float32;
q/k/v read one input and share one Hessian, gate/up share another, o and down have their own), the
factorisation workspace of the largest Hessian, and one batch of forward activations. Printed by
``python -m llmsparse.gpu.plan llama-2-7b llama-2-70b`` (docs/GPU.md).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

GiB = 1 << 30
FP32, BF16 = 4, 2
#: Factorisation temporaries of ``prepare_hessian``: the dampened copy, its Cholesky factor, the inverse, and ``U``.
WORKSPACE_COPIES = 4


@dataclass(frozen=True)
class Shape:
    """A Llama-style decoder: ``kv_heads`` < ``heads`` for grouped-query attention (None: same as heads)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    vocab: int
    kv_heads: int | None = None
    tied: bool = False

    @property
    def kv_dim(self) -> int:
        return self.hidden * (self.kv_heads or self.heads) // self.heads

    @property
    def layer_params(self) -> int:
        """q, k, v, o, gate, up, down and the two norms of one decoder layer."""
        h, i = self.hidden, self.intermediate
        return 2 * h * h + 2 * h * self.kv_dim + 3 * h * i + 2 * h

    @property
    def params(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.layers * self.layer_params + embeddings + self.hidden


PRESETS = {
    "llama-2-7b": Shape(4096, 11008, 32, 32, 32000),
    "llama-2-13b": Shape(5120, 13824, 40, 40, 32000),
    "llama-2-70b": Shape(8192, 28672, 80, 64, 32000, kv_heads=8),
}


@dataclass(frozen=True)
class Plan:
    """Bytes of each resident part of one layer's pruning step, and the forward batch that fits ``gpu_bytes``."""

    shape: Shape
    nsamples: int
    seqlen: int
    gpu_bytes: int
    model_bf16: int
    layer_fp32: int
    activations: int  # one stream (a layer's inputs), bfloat16
    hessians: int  # q/k/v + o + gate/up + down
    workspace: int
    forward_per_sequence: int

    @property
    def fixed_with_activations(self) -> int:
        """Layer, Hessians, workspace, and the inputs and outputs of the layer on the device."""
        return self.layer_fp32 + self.hessians + self.workspace + 2 * self.activations

    @property
    def activations_on_device(self) -> bool:
        return self.fixed_with_activations + self.forward_per_sequence <= self.gpu_bytes

    @property
    def batch(self) -> int:
        """Calibration sequences per forward that still fit (0: not even one; activations then on the host)."""
        fixed = self.fixed_with_activations if self.activations_on_device else self.layer_fp32 + self.hessians + self.workspace
        return max(0, min(self.nsamples, (self.gpu_bytes - fixed) // self.forward_per_sequence))

    def table(self) -> str:
        rows = [
            ("whole model, bfloat16", self.model_bf16),
            ("one layer, float32 working copies", self.layer_fp32),
            (f"calibration activations, {self.nsamples} x {self.seqlen} bf16, one stream", self.activations),
            ("Hessians (q/k/v shared, o, gate/up shared, down), float32", self.hessians),
            (f"factorisation workspace ({WORKSPACE_COPIES} x the largest Hessian)", self.workspace),
            ("forward activations per sequence", self.forward_per_sequence),
        ]
        lines = [f"{name:<72} {size / GiB:9.2f} GiB" for name, size in rows]
        where = "on the GPU (inputs and outputs)" if self.activations_on_device else "in pinned host memory (too big for the GPU)"
        whole = "fits whole, yet" if self.model_bf16 <= self.gpu_bytes else "does not fit whole:"
        lines.append(f"on one {self.gpu_bytes / 1e9:.0f} GB GPU: activations {where}; forward batch {self.batch} sequences; "
                     f"the model {whole} layers are onloaded one at a time")  # fmt: skip
        return "\n".join(lines)


def plan(shape: Shape, nsamples: int = 128, seqlen: int = 2048, gpu_bytes: int = 80 * 10**9) -> Plan:
    """The memory plan of pruning ``shape`` with ``nsamples x seqlen`` calibration tokens on a GPU of ``gpu_bytes``."""
    h, i, tokens = shape.hidden, shape.intermediate, nsamples * seqlen
    # bf16 outputs of q, k, v, attention, o, gate, up, act*up and the residual, plus the float32 copy of down's input for its Hessian
    forward = seqlen * ((3 * h + 2 * shape.kv_dim + 3 * i + h) * BF16 + i * FP32)
    return Plan(
        shape=shape,
        nsamples=nsamples,
        seqlen=seqlen,
        gpu_bytes=gpu_bytes,
        model_bf16=shape.params * BF16,
        layer_fp32=shape.layer_params * FP32,
        activations=tokens * h * BF16,
        hessians=(3 * h * h + i * i) * FP32,
        workspace=WORKSPACE_COPIES * max(h, i) ** 2 * FP32,
        forward_per_sequence=forward,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llmsparse.gpu.plan", description="memory plan of pruning on one GPU")
    parser.add_argument("models", nargs="+", choices=sorted(PRESETS))
    parser.add_argument("--nsamples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--gpu-gb", type=float, default=80.0)
    args = parser.parse_args(argv)
    for name in args.models:
        print(f"{name} ({args.nsamples} x {args.seqlen})")
        print(plan(PRESETS[name], args.nsamples, args.seqlen, int(args.gpu_gb * 1e9)).table())


if __name__ == "__main__":
    main()
