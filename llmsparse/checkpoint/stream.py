"""``prune_checkpoint``: prune a safetensors checkpoint on disk one decoder layer at a time, straight into the output.

The layers are held by :class:`~llmsparse.checkpoint.layerstore.Streamed` (read when visited, written
when pruned), so the pruning itself is the in-memory code (:func:`llmsparse.pruning.api.run_prune`)
and the output holds the same tensors. Progress is kept in a partial directory
(:mod:`llmsparse.checkpoint.resume`), so a killed run can resume. At the end the tensors outside the
layers are copied, an index is written, and the directory is finished like any saved model
(:func:`llmsparse.checkpoint.save.write_output`) and published at once.

Its settings are :class:`~llmsparse.checkpoint.jobs.StreamSettings` (the prune settings plus ``resume``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .. import formats
from ..core import cpu
from ..core.cpu import parse_dtype
from ..core.layout import resolve_device
from ..core.memory import return_freed_blocks
from ..errors import LlmsparseError, ModelError, SettingsError
from ..pruning.api import run_prune
from ..pruning.report import PruneReport
from ..settings import api
from .jobs import StreamSettings
from .layerstore import Checkpoint, Streamed, checkpoint_dir, skeleton
from .outdir import claim, publish, staging
from .recipe import run_recipe
from .resume import Partial
from .save import compressible_weights, write_errors, write_output


def fingerprint(directory: Path, dtype: torch.dtype | None, s: StreamSettings, forwards: torch.dtype | None = None) -> dict:
    """What must match for an interrupted run to be resumed: the model, its dtype, every pruning setting and the
    dtype ``compute_dtype`` resolved to (``auto`` depends on the machine: a resume elsewhere must not mix dtypes)."""
    args = {k: (v if isinstance(v, (str, int, float, bool, list, dict, type(None))) else str(v)) for k, v in vars(s).items() if k != "resume"}
    if isinstance(s.calib, torch.Tensor):
        args["calib"] = "tensor"  # its values are checked by hash once read
    return {"model": str(directory.resolve()), "dtype": str(dtype), "forwards": str(forwards)} | args


@api(StreamSettings)
def prune_checkpoint(
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    format: str = "dense",
    overwrite: bool = False,
    dtype: str | torch.dtype | None = None,
    method: str = "wanda",
    sparsity: float | None = None,
    pattern: str | None = None,
    calib: str | os.PathLike | torch.Tensor | None = None,
    nsamples: int = 128,
    seqlen: int = 2048,
    seed: int = 0,
    targets: str | list[str] | None = None,
    ignore: str | list[str] | None = None,
    true_sequential: bool = False,
    method_options: dict | None = None,
    device: str | torch.device | None = None,
    compute_dtype: str | torch.dtype | None = "auto",
    text_field: str = "text",
    layer_budget: str | list[float] = "uniform",
    owl_m: float = 5.0,
    owl_lambda: float = 0.08,
    reconstruct: str = "none",
    reconstruct_target: str = "pruned",
    reconstruct_iters: int | None = None,
    reconstruct_damp: float = 0.01,
    quantize: str = "none",
    group_size: int = 128,
    symmetric: bool = True,
    quantize_method: str = "gptq",
    resume: bool = False,
) -> PruneReport:
    """Prune the safetensors checkpoint directory ``source`` into ``output``, one decoder layer in memory at a time.

    The same pruning as ``prune(load_model(source), ...)`` followed by ``save_pretrained``: the
    output holds the same tensors, with the report, recipe, card and ``format`` of a saved model.
    An interrupted run leaves ``.<output>.partial`` beside the output; the same call with
    ``resume=True`` continues after the last finished layer. ``dtype`` casts the weights as they load.
    """
    s = StreamSettings.of(locals())
    if output is None:
        raise SettingsError("--stream writes each finished layer to the output at once: give --output DIR")
    if s.quantize != "none":
        raise SettingsError("--stream does not quantize yet: run --quantize without --stream (in memory)")
    if isinstance(s.calib, str) and s.calib == "self":
        raise SettingsError("calib 'self' samples text from the whole model, which --stream never holds: give a text file or dataset")
    from transformers import AutoTokenizer

    directory = checkpoint_dir(source)
    weight_dtype = parse_dtype(dtype)
    return_freed_blocks()  # peak memory independent of the number of layers
    fmt = formats.get_format(format)
    inputs = [directory, s.calib if isinstance(s.calib, (str, os.PathLike)) else None]
    with claim(output, overwrite, inputs) as out:
        model = skeleton(directory, weight_dtype)
        try:
            tokenizer = AutoTokenizer.from_pretrained(directory)
        except (OSError, ValueError) as err:
            raise ModelError(f"cannot load a tokenizer from {str(directory)!r}: {err}") from err
        forwards = cpu.compute_dtype(next(model.parameters()).dtype, resolve_device(s.device), parse_dtype(s.compute_dtype))
        checkpoint = Checkpoint(directory)
        checkpoint.check(model)
        partial = Partial(out, fingerprint(directory, weight_dtype, s, forwards), s.resume)
        try:
            store = Streamed(model, checkpoint, partial)
            report = run_prune(model, tokenizer, s, store)
            targets = compressible_weights(model, fmt, report) if fmt.compact else []
            store.write_outer()
            with staging(out) as tmp, write_errors(out):
                store.link_into(tmp)
                write_output(tmp, model, tokenizer, fmt, targets, report, run_recipe(s, report) | {"stream": True}, str(source), weights_saved=True)
                publish(tmp, out, overwrite, inputs)
        except LlmsparseError:  # refused: nothing to resume, so remove what this run created (an interruption keeps it)
            if not partial.resumed:
                partial.remove()
            raise
        partial.remove()
    return report

