"""Shared by the Gemma 3 270M benchmarks: one pruning run per fresh subprocess, with the core issue's protocol.

A spec may set ``calib_file`` and ``ppl_file`` (default: wiki.valid.tokens and wiki.test.raw);
:func:`validation_split` gives the two halves used to choose settings without the test text.

Calibration: ``nsamples`` x 512 tokens (32 by default) of WikiText-2 valid (``wiki.valid.tokens``);
perplexity: ``wiki.test.raw`` at seqlen 1024 over the first ``windows`` windows. A fresh process
per run makes "peak RSS" that run's own high-water mark (load + calibration + pruning, measured
before the perplexity evaluation).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikitext2"
SPLIT = Path(__file__).resolve().parents[1] / "out" / "validation_split"
TASKS = Path(__file__).resolve().parents[1] / "out" / "cloze_tasks"


def validation_split(fraction: float = 0.75) -> tuple[Path, Path]:
    """``wiki.valid.tokens`` cut at a line boundary into a calibration part (the first ``fraction`` of
    its lines) and a held-out validation part, for choosing settings without the test text."""
    calib, held = SPLIT / "calib.txt", SPLIT / "validation.txt"
    if not held.is_file():
        lines = (DATA / "wiki.valid.tokens").read_text(encoding="utf-8").splitlines()
        cut = int(len(lines) * fraction)
        SPLIT.mkdir(parents=True, exist_ok=True)
        calib.write_text("\n".join(lines[:cut]) + "\n", encoding="utf-8")
        held.write_text("\n".join(lines[cut:]) + "\n", encoding="utf-8")
    return calib, held


def cloze(model, tok) -> dict:
    """Accuracy on the offline cloze tasks ``wt2_cloze`` and ``wt2_cloze_mc`` (docs/EVALUATION.md: 100 passages of
    <= 80 words of wiki.test.raw), built once by eval/build_tasks.py."""
    import llmsparse

    if not any(TASKS.glob("**/*.yaml")):
        build = Path(__file__).resolve().parents[1] / "eval" / "build_tasks.py"
        subprocess.run([sys.executable, str(build), str(DATA / "wiki.test.raw"), "--name", "wt2", "--out", str(TASKS),
                        "--examples", "100", "--max-words", "80", "--ppl-chars", "20000"], check=True, capture_output=True)
    res = llmsparse.evaluate(model, tok, ["wt2_cloze", "wt2_cloze_mc"], include_path=str(TASKS), max_length=1024, batch_size=8, device="cpu")
    return {f"{t}/{m}": v for t, ms in res.metrics.items() for m, v in ms.items() if m in ("acc", "acc_norm")}


def pruned_once(out: Path, formats: dict[str, Path] | None = None, **prune) -> Path:
    """Gemma 3 270M pruned with ``prune()`` arguments ``prune`` (16 x 512 tokens of wiki.valid.tokens, float32) and
    saved to ``out`` once (kept for later runs) in ``prune['format']``; ``formats``: also save it in these, to these paths."""
    if (out / "config.json").is_file():
        return out
    import llmsparse

    fmt = prune.pop("format")
    model, tok = llmsparse.load_model("gemma-3-270m")
    calib = dict(calib=str(DATA / "wiki.valid.tokens"), nsamples=16, seqlen=512, device="cpu", compute_dtype="float32")
    report = llmsparse.prune(model, tok, **calib, **prune)
    for other, path in (formats or {}).items():
        llmsparse.save_pruned(model, tok, path, report=report, format=other, overwrite=True)
    return llmsparse.save_pruned(model, tok, out, report=report, format=fmt, overwrite=True)


def machine_header() -> str:
    """The line every bench table starts with: this machine's CPU, its instruction sets, threads and GPUs."""
    import torch

    from llmsparse.core.cpu import machine

    return f"machine: {machine().summary()}; torch {torch.__version__}"


def run_here(spec: dict) -> dict:
    """Load Gemma, prune with ``spec['prune']`` (``prune()`` keyword arguments; none: dense), measure.

    ``spec['ids_out']``: also save the calibration token ids there (``--vs-peer`` gives them to the
    peer); ``spec['t0']``: the parent's clock when it started this process, for ``whole_s`` (start to pruned).
    """
    import llmsparse

    model, tok = llmsparse.load_model("gemma-3-270m")
    seconds, sparsity, used = 0.0, 0.0, None
    calib = spec.get("calib_file", str(DATA / "wiki.valid.tokens"))
    if spec.get("ids_out"):
        import torch

        from llmsparse.data.calibration import calibration_ids

        calib = calibration_ids(calib, tok, spec.get("nsamples", 32), 512, spec.get("seed", 0))
        torch.save(calib, spec["ids_out"])
    if spec.get("prune"):
        started = time.perf_counter()
        report = llmsparse.prune(
            model,
            tok,
            calib=calib,
            nsamples=spec.get("nsamples", 32),
            seqlen=512,
            seed=spec.get("seed", 0),
            device="cpu",
            compute_dtype=spec.get("compute_dtype", "float32"),
            **spec["prune"],
        )
        seconds = time.perf_counter() - started
        sparsity, used = report.global_sparsity, report.compute_dtype
    whole = time.time() - spec["t0"] if "t0" in spec else None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB -> GiB
    ppl = llmsparse.perplexity(model, tok, spec.get("ppl_file", str(DATA / "wiki.test.raw")), seqlen=1024, windows=spec.get("windows", 8))
    load = os.getloadavg()[0]  # other work on the machine inflates "seconds"; this says how much there was
    return {
        "seconds": seconds, "whole_s": whole, "peak_rss_gib": peak, "ppl": ppl.ppl, "windows": ppl.windows,
        "global_sparsity": sparsity, "compute_dtype": used, "model_dir": str(model.name_or_path), "load_average": load,
    }


def run_isolated(script: str, spec: dict) -> dict:
    """Run ``spec`` in a fresh Python process (``script --child JSON``) and return its result."""
    out = subprocess.run([sys.executable, script, "--child", json.dumps(spec)], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])
