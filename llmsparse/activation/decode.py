"""Timed greedy decoding at batch size 1: what the sparse decode path is for."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

from ..settings import Settings, setting


@dataclass
class GenerateSettings(Settings):
    """What ``llmsparse generate`` generates."""

    prompt: str = setting(dataclasses.MISSING, "prompt text")
    max_new_tokens: int = setting(64, "tokens to generate (EOS does not stop it)")
    sparse_decode: bool = setting(False, "skip the weight rows of zeroed inputs when decoding (activation-sparse models)")


@dataclass
class DecodeTiming:
    text: str
    prompt_tokens: int
    new_tokens: int
    prefill_s: float
    decode_s: float

    @property
    def tokens_per_s(self) -> float:
        """Decode throughput, excluding the prompt's forward pass."""
        return self.new_tokens / self.decode_s if self.decode_s > 0 else float("nan")


@torch.no_grad()
def timed_generate(model, tokenizer, prompt: str, max_new_tokens: int = 64) -> DecodeTiming:
    """Greedy decoding with a KV cache, one token per step, timing prefill and decode separately.

    Generation does not stop at EOS, so runs with the same ``max_new_tokens`` do the same work.
    """
    device = next(model.parameters()).device
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
    start = time.perf_counter()
    out = model(ids, use_cache=True)
    past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    prefill = time.perf_counter() - start
    tokens = [token]
    start = time.perf_counter()
    for _ in range(max_new_tokens - 1):
        out = model(token, past_key_values=past, use_cache=True)
        past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        tokens.append(token)
    decode = time.perf_counter() - start
    new = torch.cat(tokens, dim=1)[0]
    return DecodeTiming(tokenizer.decode(new, skip_special_tokens=True), ids.shape[1], max_new_tokens - 1, prefill, decode)
