"""Checks of a local model directory before the slow load: its files, and what a run asks of its shapes.

A directory without a tokenizer, with a truncated or corrupt safetensors file, a ``--targets``
regex that matches no matrix, an N:M pattern that does not divide a matrix's width, or a
calibration length past the model's positions is refused here, before any weight is read. The
shapes come from the config alone (the model is built on the meta device). Hub ids, GGUF files and
the bundled alias are checked by :func:`llmsparse.load_model` itself.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint.load import check_quantizer, check_source
from ..core.layout import get_weight, select_targets
from ..core.masks import Pattern, check_width
from ..data.calibration import check_calibration_memory, check_positions
from ..errors import CalibrationDataError, LlmsparseError, ModelError
from ..formats import shard_files
from ..pruning.api import PruneSettings
from ..pruning.api import grid as quantization_grid

#: Files one of which a tokenizer needs (tokenizer.json/tokenizer_config.json, SentencePiece, BPE vocabularies...).
TOKENIZER_GLOBS = ("tokenizer*", "*.model", "vocab*", "*.tiktoken", "merges.txt")


def model_dir(source: str, trust_remote_code: bool = False, runtime: str | None = None) -> Path | None:
    """The checked local model directory named by ``source`` (config, weights, tokenizer), or None for a Hub id, a GGUF file or the alias."""
    from safetensors import SafetensorError, safe_open

    directory = Path(source)
    if not directory.is_dir():
        check_source(source)  # a file that is not .gguf, a local path that does not exist
        return None
    if not (directory / "config.json").is_file():
        raise ModelError(f"model directory {source!r} has no config.json")
    check_quantizer(_config(directory, trust_remote_code), source, runtime or "dense")
    if not any(any(directory.glob(pattern)) for pattern in TOKENIZER_GLOBS):
        raise ModelError(f"model directory {source!r} has no tokenizer (tokenizer.json, tokenizer.model, vocab.json...); copy the base model's tokenizer files into it")
    _tokenizer_json(directory)
    shards = shard_files(directory)
    if not shards:
        raise ModelError(f"model directory {source!r} has no safetensors weights (model.safetensors or an index); only safetensors are loaded")
    for shard in shards:
        try:
            with safe_open(str(shard), "pt"):
                pass
        except (SafetensorError, OSError) as err:
            raise ModelError(f"weights file {str(shard)!r} is corrupt or truncated: {err}") from err
    return directory


def _tokenizer_json(directory: Path) -> None:
    """Refuse a ``tokenizer.json`` the tokenizers library cannot read (truncated, not JSON, not a tokenizer) before the load."""
    path = directory / "tokenizer.json"
    if not path.is_file():
        return
    from tokenizers import Tokenizer

    try:
        Tokenizer.from_file(str(path))
    except Exception as err:  # noqa: BLE001 - tokenizers raises plain Exception for every parse error
        raise ModelError(f"tokenizer file {str(path)!r} is corrupt: {' '.join(str(err).split())[:200]}; copy the base model's tokenizer files into it") from err


def _config(directory: Path, trust_remote_code: bool):
    """The model's config; an unreadable one or an unknown architecture is refused as :func:`llmsparse.load_model` would."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(directory, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise ModelError(f"cannot load a model config from {str(directory)!r}: {err}") from err
    except (KeyError, ValueError) as err:
        raise ModelError(f"unsupported or unknown model architecture in {str(directory)!r}: {err}") from err


def check_shapes(directory: Path, settings: PruneSettings, pattern: Pattern, calibrated: bool, trust_remote_code: bool) -> None:
    """Targets, N:M widths, quantization group sizes and the calibration length against the model's config (no weights read)."""
    from transformers import AutoModelForCausalLM

    config = _config(directory, trust_remote_code)
    if calibrated and not isinstance(settings.calib, torch.Tensor):
        check_positions(config, settings.seqlen)
        check_calibration_memory(config, settings.nsamples, settings.seqlen)
    if hasattr(config, "quantization_config"):  # a compact checkpoint: llmsparse's own reader, not a quantizer
        del config.quantization_config
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except Exception:  # noqa: BLE001 - not a causal LM transformers can build: load_model says so
        return
    grid = quantization_grid(settings)
    for matrices in select_targets(model, settings.targets, settings.ignore).values():
        for name, module in matrices.items():
            check_width(name, get_weight(module).shape[1], pattern)
            if grid is not None:
                grid.check(name, get_weight(module).shape[1])


def check_length(
    directory: Path, seqlen: int, trust_remote_code: bool, what: str = "calibration seqlen", error: type[LlmsparseError] = CalibrationDataError
) -> None:
    """``seqlen`` against the model's positions, from its config (``error`` when it is longer)."""
    check_positions(_config(directory, trust_remote_code), seqlen, what, error)
