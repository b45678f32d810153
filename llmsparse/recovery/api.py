"""``recover()``: parameter-efficient retraining after pruning (PERP) that keeps the mask.

Trains only the chosen groups (norms, biases, masked low-rank adapters; :mod:`.params`) on a
text file, with a held-out slice of that text for validation and early stopping (:mod:`.train`),
then merges the adapters so the model is a plain pruned model again, with exactly the same zeros.
Its settings are :class:`RecoverSettings`, which also give the ``recover`` recipe keys and the
``llmsparse recover`` flags.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..core.layout import find_layers, matrix_modules, resolve_device
from ..core.memory import peak_rss
from ..data.calibration import check_positions
from ..data.text import read_text
from ..errors import CalibrationDataError, SettingsError
from ..settings import Settings, api, at_least, device_setting, greater_than, in_range, nonempty, regex, setting
from .report import RecoverReport
from .state import RunState

#: The parameter groups recovery can train (PERP's).
GROUPS = ("norms", "biases", "lora")


def _groups(text: str) -> list[str]:
    return [g.strip() for g in text.split(",") if g.strip()]


def _group_check(value: str) -> str | None:
    return None if value in GROUPS else f"must be one of {', '.join(GROUPS)}"


@dataclass
class RecoverSettings(Settings):
    """The arguments of :func:`recover`; the keys of ``recover`` recipes and the flags of ``llmsparse recover``."""

    data: str | os.PathLike | None = setting(None, "training text (plain text, .jsonl or .parquet); its last --val-fraction is held out for validation", metavar="TEXT")
    text_field: str = setting("text", "text field of .jsonl/.parquet training files", flag="--data-field", check=nonempty)
    train: list[str] = setting(list(GROUPS), "parameter groups to train, comma-separated: norms, biases, lora", parse=_groups, check=_group_check)
    lora_rank: int = setting(16, "rank of the masked low-rank adapters", check=at_least(1))
    lora_alpha: float = setting(32.0, "LoRA alpha (the update is scaled by alpha/rank)", check=greater_than(0))
    lora_dropout: float = setting(0.0, "dropout on the adapters' input", check=in_range(0, 1, high_open=True))
    lora_targets: list[str] | None = setting(None, "adapters only on decoder matrices whose full name matches one of these regexes (default: all)", nargs="+", metavar="REGEX", check=regex)
    lr: float = setting(2e-4, "peak learning rate (AdamW)", check=greater_than(0))
    weight_decay: float = setting(0.0, "AdamW weight decay", check=at_least(0))
    steps: int = setting(200, "optimizer steps (at most; early stopping may end sooner)", check=at_least(1))
    tokens: int | None = setting(None, "train on this many tokens instead of --steps (steps = tokens / (batch-size * seqlen), rounded up)", check=at_least(1))
    batch_size: int = setting(4, "sequences per optimizer step", check=at_least(1))
    micro_batch: int = setting(1, "sequences per forward pass (gradients are accumulated over a step)", check=at_least(1))
    seqlen: int = setting(512, "tokens per training sequence", check=at_least(2))
    warmup: int = setting(10, "linear learning-rate warmup steps (then cosine decay to 0)", check=at_least(0))
    seed: int = setting(0, "seed of the training windows (each step's are drawn with (seed, step)) and of dropout", check=at_least(0))
    val_fraction: float = setting(0.05, "share of the training text's tokens (its end) held out for validation", check=in_range(0, 1, low_open=True, high_open=True))
    val_windows: int = setting(8, "validation windows of --seqlen tokens", check=at_least(1))
    val_every: int = setting(25, "validate (and checkpoint a resumable run) every this many steps", check=at_least(1))
    patience: int = setting(2, "stop after this many validations in a row without a new best; the best step's parameters are kept", check=at_least(1))
    max_minutes: float | None = setting(None, "stop training (after a last validation) once it has run this many minutes", check=greater_than(0))
    gradient_checkpointing: bool = setting(False, "recompute each decoder layer's activations in the backward pass (less memory, more time)")
    device: str | torch.device | None = device_setting()
    resume: bool = setting(False, "continue an interrupted run into the same --output with the same arguments", recipe=False)
    state_dir: str | os.PathLike | None = setting(None, "directory for the resumable state (the CLI uses .OUTPUT.partial)", recipe=False, cli=False)

    def __post_init__(self) -> None:
        self.lora_targets = [self.lora_targets] if isinstance(self.lora_targets, str) else self.lora_targets
        super().__post_init__()
        if not self.train:
            raise SettingsError("train must name at least one group: norms, biases, lora")
        if self.micro_batch > self.batch_size:
            raise SettingsError(f"micro_batch {self.micro_batch} is larger than batch_size {self.batch_size}")


def check_request(s: RecoverSettings, eval_ppl: str | None = None) -> None:
    """What can be checked before the model loads: a training text, and never the evaluation text."""
    if s.data is None:
        raise CalibrationDataError("recovery needs training text: pass data=PATH (--data TEXT)")
    read_text(s.data, s.text_field, what="training text")
    if eval_ppl is not None and Path(eval_ppl).exists() and Path(eval_ppl).resolve() == Path(s.data).resolve():
        raise SettingsError(f"--data and --eval-ppl are the same file ({eval_ppl}): never train on the evaluation text")
    if s.resume and s.state_dir is None:
        raise SettingsError("resume continues a run from its state directory: give --output (or state_dir in Python)")


def total_steps(s: RecoverSettings) -> int:
    return -(-s.tokens // (s.batch_size * s.seqlen)) if s.tokens else s.steps


def split_tokens(tokenizer, s: RecoverSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """The training text's ids cut in two: training part, held-out validation part (the last ``val_fraction``)."""
    ids = tokenizer(read_text(s.data, s.text_field, what="training text"), return_tensors="pt").input_ids[0]
    cut = int(ids.numel() * (1 - s.val_fraction))
    train_ids, val_ids = ids[:cut], ids[cut:]
    if train_ids.numel() < s.seqlen + 1 or val_ids.numel() < s.seqlen:
        raise CalibrationDataError(
            f"training text {str(s.data)!r} has {ids.numel()} tokens: too few for --seqlen {s.seqlen} with {s.val_fraction:g} held out"
        )
    return train_ids, val_ids


def decoder_zeros(model: nn.Module) -> tuple[int, int]:
    """``(exact zeros, matrices)`` over the decoder matrices."""
    layout = find_layers(model)
    mats = [m for i, layer in enumerate(layout.layers) for m in matrix_modules(layer, layout.layer_name(i)).values()]
    return sum(int((m.weight == 0).sum()) for m in mats), len(mats)


def run_args(s: RecoverSettings, ids: torch.Tensor) -> dict:
    """What a resumed run must share with the interrupted one: its recipe and a hash of its token ids."""
    recipe = {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in s.recipe().items()}
    return recipe | {"ids": hashlib.sha256(ids.to(torch.int64).numpy().tobytes()).hexdigest()}


@api(RecoverSettings)
def recover(
    model: nn.Module,
    tokenizer=None,
    *,
    data: str | os.PathLike | None = None,
    text_field: str = "text",
    train: list[str] | None = None,
    lora_rank: int = 16,
    lora_alpha: float = 32.0,
    lora_dropout: float = 0.0,
    lora_targets: list[str] | None = None,
    lr: float = 0.0002,
    weight_decay: float = 0.0,
    steps: int = 200,
    tokens: int | None = None,
    batch_size: int = 4,
    micro_batch: int = 1,
    seqlen: int = 512,
    warmup: int = 10,
    seed: int = 0,
    val_fraction: float = 0.05,
    val_windows: int = 8,
    val_every: int = 25,
    patience: int = 2,
    max_minutes: float | None = None,
    gradient_checkpointing: bool = False,
    device: str | torch.device | None = None,
    resume: bool = False,
    state_dir: str | os.PathLike | None = None,
) -> RecoverReport:
    """Retrain ``model``'s chosen groups in place (PERP) and merge: pruned weights stay exactly zero.

    Returns a :class:`RecoverReport`. ``train`` picks groups from ``norms``, ``biases`` and ``lora``
    (masked low-rank adapters on the decoder matrices, ``lora_targets`` to narrow them). The last
    ``val_fraction`` of ``data``'s tokens is held out: validation loss every ``val_every`` steps,
    early stop after ``patience`` validations without a new best, and the best step's parameters
    (step 0, the model as given, included) are what is kept. The frozen base keeps its dtype.
    """
    s = RecoverSettings.of(locals())
    check_request(s)
    try:
        from . import masklora, params, train
    except ImportError as err:
        raise SettingsError(f"recovery needs peft ({err.name} is missing): pip install 'llmsparse[recover]'") from None
    if tokenizer is None:
        raise CalibrationDataError("recovery reads its training text with the tokenizer: pass it after the model")
    check_positions(model.config, s.seqlen, "recovery seqlen", SettingsError)
    started = time.perf_counter()
    train_ids, val_ids = split_tokens(tokenizer, s)
    state = RunState(s.state_dir, run_args(s, torch.cat([train_ids, val_ids])), s.resume) if s.state_dir else None
    device = resolve_device(s.device)
    zeros_before, count = decoder_zeros(model)
    parameters = sum(p.numel() for p in model.parameters())
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    model.to(device)
    # adapter init (peft's Kaiming A) and dropout draw from torch's RNG: seeded here, the caller's RNG untouched
    rng = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=rng):
            torch.manual_seed(s.seed)
            trainable = params.select(model, s.train, s.lora_rank, s.lora_alpha, s.lora_dropout, s.lora_targets)
            result = train.fit(model, trainable, train_ids, val_ids, s, total_steps(s), device, state)
    finally:
        masklora.merge(model)
        for n, p in model.named_parameters():
            p.requires_grad_(grads.get(n, False))
    zeros_after, _ = decoder_zeros(model)
    if zeros_after < zeros_before:
        raise AssertionError(f"masked LoRA lost zeros: {zeros_before} before, {zeros_after} after")  # a bug, never bad input
    report = RecoverReport(
        groups=list(s.train), trainable=trainable.count(), parameters=parameters, steps=result.steps, tokens=result.steps * s.batch_size * s.seqlen,
        best_step=result.best_step, stopped_early=result.stopped_early, train_loss=result.train_loss, val_loss=result.val_loss,
        zeros_before=zeros_before, zeros_after=zeros_after, matrices=count, settings={k: str(v) if isinstance(v, os.PathLike) else v for k, v in s.recipe().items()},
        seconds=time.perf_counter() - started, peak_memory=peak_rss(),
    )
    if state is not None:
        state.remove()
    return report
