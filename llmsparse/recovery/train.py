"""The training loop of :func:`llmsparse.recover`: AdamW with warmup and cosine decay, held-out validation, early stop, resumable.

Step ``t`` trains on ``batch_size`` windows of ``seqlen`` tokens drawn at random offsets of the
training part by a generator seeded with ``(seed, t)``, so the data of a step does not depend on
how the run got there (a resumed run takes the same steps as an uninterrupted one; torch's RNG
state, used by dropout, is checkpointed too). Validation loss is the mean token loss over the
first ``val_windows`` consecutive windows of the held-out part, at step 0 and every ``val_every``
steps; the parameters of the best validation step are restored at the end. ``max_minutes`` ends
training (after a last validation) once this session of the run has trained that long.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ..core import nll
from ..core.memory import peak_rss
from . import loss
from .params import Trainable
from .state import RunState


@dataclass
class Fit:
    steps: int = 0
    best_step: int = 0
    stopped_early: bool = False
    train_loss: list[tuple[int, float]] = field(default_factory=list)
    val_loss: list[tuple[int, float]] = field(default_factory=list)


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Learning rate of (1-based) ``step``: linear warmup to ``peak`` over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step <= warmup:
        return peak * step / max(warmup, 1)
    progress = (step - warmup) / max(total - warmup, 1)
    return peak * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def windows(ids: torch.Tensor, count: int, seqlen: int, seed: int, step: int) -> torch.Tensor:
    """``count`` windows of ``seqlen`` tokens at random offsets, drawn by a generator seeded with ``(seed, step)``."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    starts = torch.randint(0, ids.numel() - seqlen, (count,), generator=g)
    return torch.stack([ids[s : s + seqlen] for s in starts.tolist()])


@torch.no_grad()
def validation_loss(model: nn.Module, val_ids: torch.Tensor, seqlen: int, count: int, device: torch.device) -> float:
    was = model.training
    model.eval()
    n = min(count, val_ids.numel() // seqlen)
    total = sum(loss.mean_loss(model, val_ids[i * seqlen : (i + 1) * seqlen].unsqueeze(0).to(device)) for i in range(n))
    model.train(was)
    return total / n


def snapshot(trainable: Trainable) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in trainable.optimized().items()}


def restore(trainable: Trainable, values: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, t in trainable.optimized().items():
            t.copy_(values[n])
    trainable.push()


def checkpointing(model: nn.Module, on: bool) -> None:
    """Recompute each decoder layer in the backward pass (non-reentrant: frozen inputs need no grad), or stop.

    transformers 5 names it ``activation_checkpointing_*``; older versions ``gradient_checkpointing_*``.
    """
    if hasattr(model, "activation_checkpointing_enable"):
        if on:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


def fit(model: nn.Module, trainable: Trainable, train_ids, val_ids, s, total: int, device: torch.device, state: RunState | None) -> Fit:
    """Train ``trainable`` for up to ``total`` steps (see the module doc); returns the losses and the kept step."""
    tensors = trainable.optimized()
    optimizer = torch.optim.AdamW(list(tensors.values()), lr=s.lr, weight_decay=s.weight_decay)
    fit, best, bad = Fit(), snapshot(trainable), 0
    nll.check_head(model.eval(), val_ids[: min(s.seqlen, 32)].unsqueeze(0).to(device))
    if s.gradient_checkpointing:
        checkpointing(model, True)
    if state is not None and state.saved is not None:
        saved = state.saved
        restore(trainable, saved["current"])
        optimizer.load_state_dict(saved["optimizer"])
        fit, best, bad = Fit(**saved["fit"]), saved["best"], saved["bad"]
        torch.set_rng_state(saved["rng"])
    else:
        fit.val_loss.append((0, validation_loss(model, val_ids, s.seqlen, s.val_windows, device)))
    model.train()
    bar = tqdm(range(fit.steps + 1, total + 1), desc="recover", initial=fit.steps, total=total)
    started, seen = time.perf_counter(), 0
    try:
        for step in bar:
            if fit.stopped_early:
                break
            batch = windows(train_ids, s.batch_size, s.seqlen, s.seed, step)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total, s.warmup, s.lr)
            trainable.zero_grad()
            total_loss = 0.0
            for chunk in batch.split(s.micro_batch):
                total_loss += loss.backward(model, chunk.to(device), chunk.shape[0] / batch.shape[0])
            trainable.pull_grads()
            optimizer.step()
            trainable.push()
            fit.steps, seen = step, seen + batch.numel()
            fit.train_loss.append((step, total_loss))
            bar.set_postfix(loss=f"{total_loss:.4f}", tok_s=f"{seen / (time.perf_counter() - started):.0f}", rss=f"{peak_rss() / 2**30:.2f}G")
            out_of_time = s.max_minutes is not None and time.perf_counter() - started > 60 * s.max_minutes
            if step % s.val_every == 0 or step == total or out_of_time:
                val = validation_loss(model, val_ids, s.seqlen, s.val_windows, device)
                if val < min(v for _, v in fit.val_loss):
                    fit.best_step, best, bad = step, snapshot(trainable), 0
                else:
                    bad += 1
                fit.val_loss.append((step, val))
                bar.write(f"step {step}: train loss {total_loss:.4f}, validation loss {val:.4f}{' (best)' if bad == 0 else ''}")
                fit.stopped_early = bad >= s.patience or out_of_time
                if state is not None:
                    state.save({"current": snapshot(trainable), "optimizer": optimizer.state_dict(), "fit": asdict(fit), "best": best, "bad": bad, "rng": torch.get_rng_state()})
    finally:
        bar.close()
        if s.gradient_checkpointing:
            checkpointing(model, False)
        model.eval()
    restore(trainable, best)
    return fit
