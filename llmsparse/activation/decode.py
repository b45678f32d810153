"""Timed greedy decoding at batch size 1: what the sparse decode path is for."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

from ..errors import SettingsError
from ..settings import Settings, at_least, nonempty, setting


@dataclass
class GenerateSettings(Settings):
    """What ``llmsparse generate`` generates."""

    prompt: str = setting(dataclasses.MISSING, "prompt text", check=nonempty)
    max_new_tokens: int = setting(64, "tokens to generate (EOS does not stop it)", check=at_least(1))
    sparse_decode: bool = setting(False, "skip the weight rows of zeroed inputs when decoding (activation-sparse models)")


@dataclass
class DecodeTiming:
    text: str
    prompt_tokens: int
    new_tokens: int  # all generated tokens: the first comes from the prompt's forward pass, each other from one decode step
    prefill_s: float
    decode_s: float

    @property
    def decode_steps(self) -> int:
        return self.new_tokens - 1

    @property
    def tokens_per_s(self) -> float:
        """Decode throughput (decode steps per second), excluding the prompt's forward pass; NaN without decode steps."""
        return self.decode_steps / self.decode_s if self.decode_steps and self.decode_s > 0 else float("nan")


@torch.no_grad()
def timed_generate(model, tokenizer, prompt: str, max_new_tokens: int = 64) -> DecodeTiming:
    """Greedy decoding with a KV cache, one token per step, timing prefill and decode separately.

    Generation does not stop at EOS, so runs with the same ``max_new_tokens`` do the same work. An
    empty prompt, ``max_new_tokens < 1`` or a total length past the model's positions is refused.
    """
    if max_new_tokens < 1:
        raise SettingsError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    device = next(model.parameters()).device
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
    if ids.shape[1] == 0:
        raise SettingsError("the prompt gives no tokens; give some text to continue")
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if limit is not None and ids.shape[1] + max_new_tokens - 1 > limit:
        raise SettingsError(
            f"the prompt's {ids.shape[1]} tokens + max_new_tokens {max_new_tokens} need {ids.shape[1] + max_new_tokens - 1} positions, "
            f"past the model's {limit}: give at most max_new_tokens {max(limit - ids.shape[1] + 1, 0)} or a shorter prompt"
        )
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
    return DecodeTiming(tokenizer.decode(new, skip_special_tokens=True), ids.shape[1], len(tokens), prefill, decode)
