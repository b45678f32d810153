"""Calibration data: ``nsamples`` random windows of ``seqlen`` tokens, deterministic for a seed.

Sources: a local file (``.txt`` or any plain text, ``.jsonl`` with a text field, ``.parquet``),
a Hub dataset (``c4``, ``wikitext2``, ``ptb``; needs network and ``datasets``), or ``self``:
sequences sampled from the model itself, so pruning works with no data at all.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..core.memory import available_memory
from ..errors import CalibrationDataError, LlmsparseError, MemoryLimitError
from ..settings import at_least, in_range, setting
from .text import read_text

log = logging.getLogger(__name__)

HUB_DATASETS = ("c4", "wikitext2", "ptb")
SELF = "self"


CALIB_HELP = f"calibration data: a .txt/.jsonl/.parquet file, a Hub dataset ({', '.join(HUB_DATASETS)}), or '{SELF}' (text the model generates)"


def calib_setting(help: str = CALIB_HELP):
    """The calibration-source field of run settings."""
    return setting(None, help)


def nsamples_setting(default: int):
    return setting(default, "calibration sequences", check=at_least(1))


def seqlen_setting(default: int):
    return setting(default, "tokens per calibration sequence", check=at_least(2))


def seed_setting():
    return setting(0, "seed for the calibration windows (and for 'self' sampling)", check=in_range(0, 2**63 - 1))


def text_field_setting():
    return setting("text", "text field of .jsonl/.parquet calibration files", flag="--calib-field", recipe=False)


def check_calib(calib, what: str, text_field: str = "text") -> None:
    """Fail fast (before a slow model load) when ``what`` needs calibration data that is missing or unreadable.

    A file is read once here, so a directory, a binary file or one without text is named at once.
    """
    if calib is None:
        raise CalibrationDataError(f"{what} needs --calib (calib= in Python): a file, {', '.join(HUB_DATASETS)}, or '{SELF}'")
    if isinstance(calib, (str, Path)) and (Path(calib).exists() or str(calib) not in (SELF, *HUB_DATASETS)):
        read_text(calib, text_field)
    elif isinstance(calib, str) and calib in HUB_DATASETS:
        check_hub_reachable(calib)


def check_hub_reachable(name: str, timeout: float = 3.0) -> None:
    """Refuse a Hub calibration dataset when the Hub cannot be reached (before the model loads, not after).

    With ``HF_DATASETS_OFFLINE``/``HF_HUB_OFFLINE`` set, ``datasets`` reads its cache and says itself what is missing.
    """
    import os
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on") for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")):
        return
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)), timeout=timeout).close()
    except OSError as err:
        raise CalibrationDataError(
            f"--calib {name} downloads from the Hub, which cannot be reached ({url.hostname}: {err.strerror or err}): "
            "give a local text file, or set HF_DATASETS_OFFLINE=1 to use a cached copy"
        ) from err


def check_positions(config, seqlen: int, what: str = "calibration seqlen", error: type[LlmsparseError] = CalibrationDataError) -> None:
    """Refuse sequences longer than the model's position table (read from its ``config``) with ``error``."""
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if limit is not None and seqlen > limit:
        raise error(f"{what} {seqlen} exceeds the model's {limit} positions")


def check_ids(ids: torch.Tensor, vocab: int | None) -> None:
    """Ready calibration ids: int64 ``[nsamples >= 1, seqlen >= 2]`` within the model's vocabulary."""
    if ids.dim() != 2 or ids.dtype != torch.long:
        raise CalibrationDataError(f"calibration tensors must be int64 token ids shaped [nsamples, seqlen], got {ids.dtype} {list(ids.shape)}")
    if ids.shape[0] < 1 or ids.shape[1] < 2:
        raise CalibrationDataError(f"calibration ids need at least 1 sequence of 2 tokens, got shape {list(ids.shape)}")
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or (vocab is not None and high >= vocab):
        allowed = f"in [0, {vocab}) (the model's vocabulary)" if vocab is not None else "non-negative"
        raise CalibrationDataError(f"calibration ids must be {allowed}, got values from {low} to {high}")


def random_windows(ids: torch.Tensor, nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    """``nsamples`` windows of ``seqlen`` tokens at seeded random offsets of a 1-D token stream."""
    if ids.numel() < seqlen + 1:
        raise CalibrationDataError(f"calibration text has {ids.numel()} tokens, fewer than seqlen+1 = {seqlen + 1}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen, (nsamples,), generator=g)
    return torch.stack([ids[s : s + seqlen] for s in starts.tolist()])


def calibration_ids(
    source: str | Path | torch.Tensor,
    tokenizer,
    nsamples: int = 128,
    seqlen: int = 2048,
    seed: int = 0,
    model=None,
    text_field: str = "text",
) -> torch.Tensor:
    """Token ids ``[nsamples, seqlen]`` from ``source`` (a path, a Hub name, ``'self'`` or a ready tensor)."""
    if nsamples < 1 or seqlen < 2:
        raise CalibrationDataError(f"need nsamples >= 1 and seqlen >= 2, got {nsamples} and {seqlen}")
    if isinstance(source, torch.Tensor):
        check_ids(source, None)
        return source
    if tokenizer is None:
        raise CalibrationDataError(f"calibration from {str(source)!r} needs the tokenizer (pass it after the model), or pass token ids as a tensor")
    source = str(source)
    if source == SELF:
        if model is None:
            raise CalibrationDataError("calibration source 'self' needs the model to generate from")
        return generate_self(model, tokenizer, nsamples, seqlen, seed)
    if Path(source).exists() or source not in HUB_DATASETS:
        text = read_text(source, text_field)
        ids = tokenizer(text, return_tensors="pt").input_ids[0]
        return random_windows(ids, nsamples, seqlen, seed)
    return _hub_ids(source, tokenizer, nsamples, seqlen, seed)


def calibration_bytes(config, nsamples: int, seqlen: int) -> int:
    """Bytes a calibration of ``nsamples x seqlen`` tokens holds at least: the int64 ids and, per token, a layer's
    float32 inputs and outputs (the engine keeps both for every sequence while it walks the layers)."""
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None) or 0
    return nsamples * seqlen * (8 + 2 * 4 * int(hidden))


def check_calibration_memory(config, nsamples: int, seqlen: int, available: int | None = None) -> None:
    """Refuse a calibration set that cannot fit in the available memory (``--nsamples 2000000000``) before allocating it."""
    need = calibration_bytes(config, nsamples, seqlen)
    free = available_memory() if available is None else available
    if free is not None and need > free:
        raise MemoryLimitError(
            f"calibration of {nsamples} sequences of {seqlen} tokens needs at least {need / 2**30:.2f} GiB (token ids and one layer's "
            f"hidden states) but only {free / 2**30:.2f} GiB of memory is available: lower --nsamples or --seqlen"
        )


def calibration_batch(
    model, tokenizer, calib, nsamples: int, seqlen: int, seed: int, text_field: str, what: str
) -> tuple[torch.Tensor, dict]:
    """Checked calibration ids for ``model`` plus the record of where they came from (for reports).

    ``what`` names who needs the data, for the error when ``calib`` is missing.
    """
    if calib is None:
        raise CalibrationDataError(f"{what} needs calibration data: pass calib=PATH, a Hub name or 'self'")
    check_positions(model.config, calib.shape[-1] if isinstance(calib, torch.Tensor) else seqlen)
    if not isinstance(calib, torch.Tensor):
        check_calibration_memory(model.config, nsamples, seqlen)
    ids = calibration_ids(calib, tokenizer, nsamples, seqlen, seed, model=model, text_field=text_field)
    check_ids(ids, model.get_input_embeddings().num_embeddings)
    info = {"source": calib if isinstance(calib, str) else "tensor", "nsamples": int(ids.shape[0]), "seqlen": int(ids.shape[1]), "seed": seed}
    return ids, info


def sample_next(logits: torch.Tensor, top_k: int, top_p: float, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """One token per row of ``logits`` ``[batch, vocab]``: temperature, then top-k, then top-p (nucleus), then a draw.

    The same distribution as transformers' sampling warpers in that order, without sorting the
    whole vocabulary: ``topk`` selects the ``top_k`` candidates and only those are sorted.
    """
    logits = logits.float() / temperature
    k = logits.shape[-1] if not top_k or top_k >= logits.shape[-1] else top_k
    values, indices = logits.topk(k, dim=-1)  # descending
    if top_p < 1.0:
        probs = values.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix whose mass reaches top_p (at least one)
        values = values.masked_fill(drop, float("-inf"))
    choice = torch.multinomial(values.softmax(-1), 1, generator=generator)
    return indices.gather(-1, choice)


@torch.no_grad()
def generate_self(model, tokenizer, nsamples: int, seqlen: int, seed: int, batch_size: int = 32) -> torch.Tensor:
    """Sequences sampled from the model (from its BOS token), as data-free calibration.

    Sampling follows the model's generation config (temperature, top-k, top-p) with a KV cache and
    end-of-sequence tokens suppressed, so every sequence has ``seqlen`` tokens; progress is shown
    per generated token. Deterministic for a ``seed`` (a private generator; the global RNG is untouched).
    """
    from tqdm.auto import tqdm

    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise CalibrationDataError("'self' calibration needs a tokenizer with a BOS or EOS token to start from")
    config = model.generation_config
    eos = config.eos_token_id if config.eos_token_id is not None else tokenizer.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    # transformers' defaults for sampling settings the config leaves unset
    top_k = 50 if config.top_k is None else config.top_k
    top_p = 1.0 if config.top_p is None else config.top_p
    temperature = 1.0 if config.temperature is None else config.temperature
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    out = []
    with tqdm(total=nsamples * (seqlen - 1), desc="generating calibration tokens", unit="tok") as bar:
        for first in range(0, nsamples, batch_size):
            b = min(batch_size, nsamples - first)
            tokens = torch.full((b, 1), start, dtype=torch.long, device=device)
            seqs, cache = [tokens], None
            for _ in range(seqlen - 1):
                step = model(tokens, past_key_values=cache, use_cache=True, logits_to_keep=1)
                cache, logits = step.past_key_values, step.logits[:, -1]
                logits[:, eos] = float("-inf")
                tokens = sample_next(logits, top_k, top_p, temperature, generator)
                seqs.append(tokens)
                bar.update(b)
            out.append(torch.cat(seqs, dim=1).cpu())
    return torch.cat(out)


def _hub_ids(name: str, tokenizer, nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    """Calibration windows from a Hub dataset, sampled as in the Wanda/SparseGPT reference code."""
    try:
        from datasets import load_dataset
    except ImportError as err:
        raise CalibrationDataError(f"calibration source {name!r} needs the 'datasets' package: pip install 'llmsparse[data]'") from err
    try:
        if name == "c4":
            data = load_dataset("allenai/c4", data_files={"train": "en/c4-train.00000-of-01024.json.gz"}, split="train")
            g = torch.Generator().manual_seed(seed)
            windows = []
            while len(windows) < nsamples:
                doc = data[int(torch.randint(len(data), (1,), generator=g))]["text"]
                ids = tokenizer(doc, return_tensors="pt").input_ids[0]
                if ids.numel() > seqlen:
                    s = int(torch.randint(ids.numel() - seqlen, (1,), generator=g))
                    windows.append(ids[s : s + seqlen])
            return torch.stack(windows)
        if name == "wikitext2":
            text = "\n\n".join(load_dataset("wikitext", "wikitext-2-raw-v1", split="train")["text"])
        else:
            text = " ".join(load_dataset("ptb_text_only", "penn_treebank", split="train")["sentence"])
    except Exception as err:  # network or Hub errors: say which source failed
        raise CalibrationDataError(f"could not download calibration dataset {name!r}: {err}") from err
    return random_windows(tokenizer(text, return_tensors="pt").input_ids[0], nsamples, seqlen, seed)
