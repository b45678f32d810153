"""Calibration data: ``nsamples`` random windows of ``seqlen`` tokens, deterministic for a seed.

Sources: a local file (``.txt`` or any plain text, ``.jsonl`` with a text field, ``.parquet``),
a Hub dataset (``c4``, ``wikitext2``, ``ptb``; needs network and ``datasets``), or ``self``:
sequences sampled from the model itself, so pruning works with no data at all.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

HUB_DATASETS = ("c4", "wikitext2", "ptb")
SELF = "self"


class CalibrationDataError(ValueError):
    """Calibration data is missing, unreadable or too short."""


def check_calib(calib, what: str) -> None:
    """Fail fast (before a slow model load) when ``what`` needs calibration data that is missing."""
    if calib is None:
        raise CalibrationDataError(f"{what} needs --calib (calib= in Python): a file, {', '.join(HUB_DATASETS)}, or '{SELF}'")
    if isinstance(calib, (str, Path)) and str(calib) not in (SELF, *HUB_DATASETS) and not Path(calib).is_file():
        raise CalibrationDataError(f"calibration file {str(calib)!r} does not exist")


def read_text(path: str | Path, text_field: str = "text") -> str:
    """The text of a local file; documents of ``.jsonl`` / ``.parquet`` files are joined with blank lines."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationDataError(f"calibration file {str(path)!r} does not exist")
    if path.suffix == ".jsonl":
        docs = []
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    docs.append(json.loads(line)[text_field])
                except (json.JSONDecodeError, KeyError, TypeError) as err:
                    raise CalibrationDataError(f"{path}:{number}: not a JSON object with a {text_field!r} field") from err
        return "\n\n".join(docs)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if text_field not in table.column_names:
            raise CalibrationDataError(f"{path} has no column {text_field!r} (columns: {', '.join(table.column_names)})")
        return "\n\n".join(str(t) for t in table.column(text_field).to_pylist() if t)
    return path.read_text(encoding="utf-8")


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
        if source.dim() != 2 or source.dtype != torch.long:
            raise CalibrationDataError("calibration tensors must be int64 token ids shaped [nsamples, seqlen]")
        return source
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


def calibration_batch(
    model, tokenizer, calib, nsamples: int, seqlen: int, seed: int, text_field: str, what: str
) -> tuple[torch.Tensor, dict]:
    """Checked calibration ids for ``model`` plus the record of where they came from (for reports).

    ``what`` names who needs the data, for the error when ``calib`` is missing.
    """
    if calib is None:
        raise CalibrationDataError(f"{what} needs calibration data: pass calib=PATH, a Hub name or 'self'")
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    length = calib.shape[-1] if isinstance(calib, torch.Tensor) else seqlen
    if limit is not None and length > limit:
        raise CalibrationDataError(f"calibration seqlen {length} exceeds the model's {limit} positions")
    ids = calibration_ids(calib, tokenizer, nsamples, seqlen, seed, model=model, text_field=text_field)
    info = {"source": calib if isinstance(calib, str) else "tensor", "nsamples": int(ids.shape[0]), "seqlen": int(ids.shape[1]), "seed": seed}
    return ids, info


@torch.no_grad()
def generate_self(model, tokenizer, nsamples: int, seqlen: int, seed: int, batch_size: int = 32) -> torch.Tensor:
    """Sequences sampled from the model (from its BOS token), as data-free calibration."""
    from tqdm.auto import tqdm

    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise CalibrationDataError("'self' calibration needs a tokenizer with a BOS or EOS token to start from")
    device = next(model.parameters()).device
    out = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for first in tqdm(range(0, nsamples, batch_size), desc="generating calibration text"):
            b = min(batch_size, nsamples - first)
            prompt = torch.full((b, 1), start, dtype=torch.long, device=device)
            seqs = model.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                do_sample=True,
                max_new_tokens=seqlen - 1,
                min_new_tokens=seqlen - 1,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else start,
            )
            out.append(seqs[:, :seqlen].cpu())
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
