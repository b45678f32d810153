"""The engine's layer store for a safetensors checkpoint on disk: each decoder layer read when visited, written when changed.

The model is built without weights (parameters on the meta device; buffers such as rotary
tables are computed as usual) by :func:`skeleton`. :class:`Streamed` is the store
(:class:`~llmsparse.core.engine.Resident` is the in-memory one): it reads the embeddings while the first
layer's inputs are captured, and each decoder layer while a pass visits it, from the shards
(positioned reads into fresh tensors: no memory map keeps file pages resident); a layer the pass changed is
written at once as its own output shard, then every tensor of it is dropped. Progress is kept in a partial
directory (:mod:`llmsparse.checkpoint.resume`). :func:`llmsparse.checkpoint.stream.prune_checkpoint` drives it.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ..core import engine
from ..core.checks import nonfinite
from ..core.cpu import DTYPES
from ..core.forward import outside_layers
from ..core.layout import find_layers
from ..core.tensorfile import TORCH, nbytes, read_header, read_tensors
from ..errors import CheckpointError, ModelError, NonFiniteError
from .resume import Partial, copy_tensor_file, save_tensors
from .tensors import check_headers

INDEX = "model.safetensors.index.json"


def checkpoint_dir(source: str | os.PathLike) -> Path:
    """The local safetensors checkpoint directory ``source`` names; anything else is refused with what to do instead."""
    text = str(source)
    if text.endswith(".gguf") or text == "gemma-3-270m":
        raise ModelError(
            f"--stream reads safetensors shards, not GGUF ({text}): convert it first (llmsparse.load_model({text!r}) caches a "
            "safetensors copy under ~/.cache/llmsparse/gguf, or save_pretrained it), then stream that directory"
        )
    directory = Path(text)
    if not directory.is_dir():
        raise ModelError(f"--stream needs a local checkpoint directory, and {text!r} is not one (download it first, e.g. huggingface-cli download)")
    if not (directory / INDEX).is_file() and not (directory / "model.safetensors").is_file():
        raise ModelError(f"{text!r} has no safetensors weights (model.safetensors or {INDEX}); --stream reads only those")
    return directory


class Checkpoint:
    """The tensors of a safetensors checkpoint directory by name, read on demand (positioned reads, no memory map)."""

    def __init__(self, directory: Path):
        self.directory = directory
        index = directory / INDEX
        try:
            if index.is_file():
                self.files = {k: directory / f for k, f in json.loads(index.read_text())["weight_map"].items()}
            else:
                self.files = dict.fromkeys(read_header(directory / "model.safetensors")[0], directory / "model.safetensors")
            self.headers = {path: read_header(path) for path in set(self.files.values())}
        except (OSError, KeyError, ValueError, TypeError, AttributeError) as err:
            raise CheckpointError(f"cannot read the weights index or headers of {str(directory)!r}: {type(err).__name__}: {err}") from err

    def check(self, model: nn.Module) -> None:
        """Refuse a missing, unexpected or mis-shaped tensor before anything runs (:func:`llmsparse.checkpoint.tensors.check_headers`)."""
        stored = {k: self.headers[path][0][k]["shape"] for k, path in self.files.items() if k in self.headers[path][0]}
        check_headers(str(self.directory), model, stored)

    def read(self, keys: list[str]) -> dict[str, torch.Tensor]:
        """The tensors ``keys``, each copied straight from its shard into a fresh tensor."""
        missing = [k for k in keys if k not in self.files or k not in self.headers[self.files[k]][0]]
        if missing:
            raise CheckpointError(
                f"{str(self.directory)!r} has no tensor {missing[0]!r} ({len(missing)} missing): --stream needs a checkpoint "
                "saved under the model's own parameter names"
            )
        out: dict[str, torch.Tensor] = {}
        for path in sorted({self.files[k] for k in keys}):
            out |= read_tensors(path, [k for k in keys if self.files[k] == path], self.headers[path])
        return out


def skeleton(directory: Path, dtype: torch.dtype | None = None) -> nn.Module:
    """The model of ``directory`` with its parameters on the meta device (buffers real), in eval mode."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(directory)
    except (OSError, KeyError, ValueError) as err:
        raise ModelError(f"cannot load a model config from {str(directory)!r}: {err}") from err
    if getattr(config, "quantization_config", None) is not None:
        raise ModelError(f"{str(directory)!r} is a compact or quantized checkpoint; --stream prunes dense safetensors checkpoints")
    stored = getattr(config, "dtype", None) or torch.float32
    stored = dtype or (DTYPES.get(stored, torch.float32) if isinstance(stored, str) else stored)
    try:
        with init_empty_weights(include_buffers=False):
            model = AutoModelForCausalLM.from_config(config, dtype=stored)
    except ValueError as err:
        raise ModelError(f"{type(config).__name__} ({config.model_type}) is not a causal LM llmsparse can load: {err}") from err
    model.tie_weights()  # tied tensors are stored once
    model.config.architectures = [type(model).__name__]
    return model.eval()


def _meta(tensor: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(torch.empty_like(tensor, device="meta"), requires_grad=False)


class Streamed(engine.Resident):
    """The engine's layer store for a checkpoint on disk: each layer read when visited, written when changed, then dropped."""

    def __init__(self, model: nn.Module, checkpoint: Checkpoint, partial: Partial):
        self.model, self.checkpoint, self.partial = model, checkpoint, partial
        self.layout = find_layers(model)
        self.names = {id(m): name for name, m in model.named_modules()}
        self.outer = outside_layers(self.layout)
        count = len(self.layout.layers)
        self.outer_keys = self._outer_keys()
        self.shards = len(self.outer_keys) + count

    def _outer_keys(self) -> list[str]:
        """State-dict keys outside the decoder layers, each tied tensor once (as ``save_pretrained`` stores them)."""
        inside = self.layout.layers_name + "."
        seen: set[int] = set()
        keys = []
        for key, tensor in self.model.state_dict(keep_vars=True).items():
            if key.startswith(inside) or id(tensor) in seen:
                continue
            seen.add(id(tensor))
            keys.append(key)
        return keys

    def shard_name(self, number: int) -> str:
        return f"model-{number:05d}-of-{self.shards:05d}.safetensors"

    def _slots(self, modules: list[nn.Module]):
        """``(module, attribute, is_parameter, checkpoint key)`` of the parameters and persistent buffers of ``modules``."""
        for m in modules:
            prefix = self.names[id(m)]
            for name, p in m._parameters.items():
                if p is not None:
                    yield m, name, True, f"{prefix}.{name}" if prefix else name
            for name, b in m._buffers.items():
                if b is not None and name not in m._non_persistent_buffers_set:
                    yield m, name, False, f"{prefix}.{name}" if prefix else name

    @contextmanager
    def _loaded(self, modules: list[nn.Module]):
        """The real tensors of ``modules`` while inside; meta (parameters) again after."""
        slots = list(self._slots(modules))
        wanted = [key for _, _, is_param, key in slots if is_param or key in self.checkpoint.files]
        tensors = self.checkpoint.read(wanted)
        for m, name, is_param, key in slots:
            if key not in tensors:
                continue
            current = m._parameters[name] if is_param else m._buffers[name]
            value = tensors.pop(key).to(current.dtype)
            bad = nonfinite(value)
            if bad:
                raise NonFiniteError(f"weight {key} has {bad}; llmsparse needs finite weights (is the checkpoint corrupt?)")
            if is_param:
                m._parameters[name] = nn.Parameter(value, requires_grad=False)
            else:
                m._buffers[name] = value
        try:
            yield
        finally:
            for m, name, is_param, _ in slots:
                if is_param:
                    m._parameters[name] = _meta(m._parameters[name])

    def outside(self):
        return self._loaded(self.outer)

    @contextmanager
    def layer(self, index: int, changed: bool):
        layer = self.layout.layers[index]
        with self._loaded(list(layer.modules())):
            yield
            if changed:
                prefix = self.layout.layer_name(index)
                tensors = {f"{prefix}.{k}": v for k, v in layer.state_dict().items()}
                save_tensors(tensors, self.partial.dir / self.shard_name(len(self.outer_keys) + index + 1))

    def begin(self, ids: torch.Tensor | None) -> None:
        self.partial.begin(ids)

    def resume(self, key: str):
        return self.partial.progress(key)

    def done(self, key: str, index: int, hidden, dense, result) -> None:
        self.partial.record(key, index, hidden, dense, result, last=index + 1 == len(self.layout.layers))

    def write_outer(self) -> None:
        """The tensors outside the decoder layers, one shard each, copied from the checkpoint at the model's dtypes.

        A tensor already in its dtype is copied byte for byte in chunks (the embedding of a large vocabulary
        never passes through memory whole); one that is cast is read, cast and written."""
        params = self.model.state_dict(keep_vars=True)
        for number, key in enumerate(self.outer_keys, start=1):
            source = key if key in self.checkpoint.files else _tie_source(self.model, key)
            path = self.checkpoint.files.get(source)
            out = self.partial.dir / self.shard_name(number)
            if path is not None and TORCH[self.checkpoint.headers[path][0][source]["dtype"]] == params[key].dtype:
                copy_tensor_file(path, source, out, key)
                continue
            save_tensors({key: self.checkpoint.read([source])[source].to(params[key].dtype)}, out)

    def link_into(self, tmp: Path) -> None:
        """Every output shard into ``tmp`` (hard links: the partial directory stays whole until publishing) and the index."""
        weight_map, total = {}, 0
        for number in range(1, self.shards + 1):
            name = self.shard_name(number)
            try:
                os.link(self.partial.dir / name, tmp / name)
            except OSError:
                shutil.copy2(self.partial.dir / name, tmp / name)
            for key, entry in read_header(tmp / name)[0].items():
                weight_map[key] = name
                total += nbytes(entry)
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n")


def _tie_source(model: nn.Module, key: str) -> str:
    """The checkpoint key a tied tensor ``key`` (``lm_head.weight``) is stored under."""
    tied = getattr(model, "_tied_weights_keys", None)
    if isinstance(tied, dict) and key in tied:
        return tied[key]
    raise CheckpointError(f"the checkpoint has no tensor {key!r}")
