"""What the structured methods measure on calibration tokens: FFN neuron norms, block similarity, perplexity.

* :func:`ffn_norms` (2SSP stage 1): for every block, the L2 norm over a sample's tokens of each FFN
  neuron's activation (the input of the output projection, e.g. ``act(gate)·up``), averaged over
  samples, as ``get_mlp_hidden_state`` + ``norm(dim=0)`` in the reference (FabrizioSandri/2SSP).
* :func:`block_similarity` (ShortGPT): the mean cosine similarity between each block's input and
  output hidden states over every calibration token (the paper's Block Influence is 1 minus it).
* :class:`PerplexityProbe` (2SSP stage 2): the perplexity of the model on a few calibration samples
  with one more attention module removed. Blocks before the candidate compute exactly what they did
  in the probe's reference pass, so their outputs are replayed from a cache instead of recomputed,
  and the head runs over vocabulary slices (:func:`core.nll.nll_sum`): on Gemma's 262k vocabulary
  the ``[tokens, vocab]`` logits and their log-softmax were 1 GiB per 512-token probe.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from ..core import nll
from .anatomy import Block

BATCH = 4  # calibration samples per forward pass


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _output(out) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def _batches(ids: torch.Tensor, device: torch.device) -> Iterator[torch.Tensor]:
    for start in range(0, ids.shape[0], BATCH):
        yield ids[start : start + BATCH].to(device)


def _run_body(model: nn.Module, ids: torch.Tensor, handles: list) -> None:
    """Run the decoder body (no LM head) over ``ids`` in batches while ``handles``' hooks watch, then remove them."""
    base = getattr(model, "base_model", model)
    try:
        for batch in _batches(ids, _device(model)):
            base(input_ids=batch, use_cache=False)
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def ffn_norms(model: nn.Module, found: list[Block], ids: torch.Tensor) -> list[torch.Tensor]:
    """Per block, ``[width]``: mean over samples of the L2 norm over tokens of each neuron's activation."""
    sums = [torch.zeros(b.width, dtype=torch.float64) for b in found]

    def hook(i: int):
        def capture(module, args):
            x = args[0].detach().float()  # [batch, tokens, width]
            sums[i].add_(x.norm(dim=1).sum(dim=0).double().cpu())

        return capture

    _run_body(model, ids, [b.ffn_out.register_forward_pre_hook(hook(i)) for i, b in enumerate(found)])
    return [s / ids.shape[0] for s in sums]


@torch.no_grad()
def block_similarity(model: nn.Module, found: list[Block], ids: torch.Tensor, last_token: bool = False) -> list[float]:
    """Per block: the mean cosine similarity of its input and output hidden states (every token, or the last of each sample)."""
    sums, counts = [0.0] * len(found), [0] * len(found)
    inputs: dict[int, torch.Tensor] = {}

    def before(i: int):
        def capture(module, args, kwargs):
            inputs[i] = _hidden(args, kwargs).detach()

        return capture

    def after(i: int):
        def capture(module, args, kwargs, out):
            x, y = inputs.pop(i).float(), _output(out).detach().float()
            if last_token:
                x, y = x[:, -1:], y[:, -1:]
            cos = F.cosine_similarity(x, y, dim=-1)
            sums[i] += cos.double().sum().item()
            counts[i] += cos.numel()

        return capture

    handles = []
    for i, b in enumerate(found):
        handles.append(b.module.register_forward_pre_hook(before(i), with_kwargs=True))
        handles.append(b.module.register_forward_hook(after(i), with_kwargs=True))
    _run_body(model, ids, handles)
    return [s / c for s, c in zip(sums, counts)]


def _zero_output(module, args, out):
    """Forward hook: the module's output replaced by zeros (its contribution to the residual removed)."""
    if isinstance(out, tuple):
        return (torch.zeros_like(out[0]), *out[1:])
    return torch.zeros_like(out)


class PerplexityProbe:
    """Perplexity on ``ids`` of the model as it is, and with one more attention module removed.

    :meth:`reset` records every block's output in the model's current state; :meth:`without_attention`
    then replays the blocks before the candidate from that record (exactly what they compute) and
    runs the rest with the candidate's attention output zeroed.

    ``dtype`` (bf16/fp16, or None: the model's own): the probe's matmuls run in it under autocast and
    the head from a copy of its weight in it, while the log-sum-exp stays float32; the model's own
    weights are not touched. On Gemma 3 270M the head is most of a probe's work, and a bf16 GEMM runs
    faster than a float32 one on CPUs with AVX-512 BF16 and on GPUs (the reference probes in float16).
    """

    def __init__(self, model: nn.Module, found: list[Block], ids: torch.Tensor, dtype: torch.dtype | None = None):
        self.model, self.found, self.ids = model, found, ids
        self.outputs: list[list] = []
        nll.check_head(model, ids[:1, :32].to(_device(model)))
        head = model.get_output_embeddings().weight
        self.dtype = None if dtype in (None, head.dtype) else dtype
        self.head = None if self.dtype is None else head.detach().to(self.dtype)

    @torch.no_grad()
    def reset(self) -> float:
        """Record the blocks' outputs of the current model; its perplexity."""
        self.outputs = [[] for _ in self.found]

        def keep(i: int):
            def capture(module, args, out):
                self.outputs[i].append(out)

            return capture

        handles = [b.module.register_forward_hook(keep(i)) for i, b in enumerate(self.found)]
        try:
            return self._ppl()
        finally:
            for h in handles:
                h.remove()

    @torch.no_grad()
    def without_attention(self, index: int) -> float:
        """Perplexity with block ``index``'s attention output zeroed (the model itself is unchanged afterwards)."""
        handle = self.found[index].attention.register_forward_hook(_zero_output)
        with self._replayed(index):
            try:
                return self._ppl()
            finally:
                handle.remove()

    @contextmanager
    def _replayed(self, upto: int) -> Iterator[None]:
        """Blocks ``< upto`` return their recorded outputs, one per batch in order, instead of computing."""
        replaced = [self.found[j].module for j in range(upto)]
        for j, module in enumerate(replaced):
            queue = iter(self.outputs[j])
            module.forward = lambda *args, _q=queue, **kwargs: next(_q)
        try:
            yield
        finally:
            for module in replaced:
                del module.forward

    def _ppl(self) -> float:
        total, tokens = 0.0, 0
        device = _device(self.model)
        for batch in _batches(self.ids, device):
            with torch.autocast(device.type, dtype=self.dtype) if self.dtype else nullcontext():
                h = nll.body_hidden(self.model, batch)[:, :-1]
            target = batch[:, 1:]
            total += nll.nll_sum(self.model, h.reshape(-1, h.shape[-1]), target.reshape(-1), self.head)
            tokens += target.numel()
        return math.exp(total / tokens)
