"""``llmsparse sweep``: prune at several sparsities with several methods, evaluate every point, plot; re-running resumes."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from ..evaluation.compare import EvalSettings
from ..evaluation.sweep import SweepPoints, SweepSpec, markdown, sweep
from . import flags

HELP = "prune at several sparsities with several methods, evaluate and plot"
DESCRIPTION = "Prune MODEL with each method at each sparsity, evaluate every point, and write sweep.json, sweep.md and sweep.png. Re-running resumes."


def add(parser: argparse.ArgumentParser) -> None:
    seen: set[str] = {"runtime"}  # no --runtime: it prunes dense weights (--load-in quantizes each point's copy for evaluation)
    flags.add_model_flags(parser, seen)
    flags.add_settings(parser, SweepPoints, seen, "sweep points")
    flags.add_settings(parser, SweepSpec, seen, "calibration")
    flags.add_settings(parser, EvalSettings, seen, "evaluation (perplexity and/or lm-eval tasks)")


def run(args: argparse.Namespace) -> int:
    evaluation = flags.settings_from(EvalSettings, args)
    spec = flags.settings_from(SweepSpec, args)
    spec.evaluation = evaluation
    points = flags.settings_from(SweepPoints, args)
    command = "llmsparse " + shlex.join(args.argv)
    run = sweep(spec, points.methods, points.sparsities, points.output, points.pattern, args.device, command)
    print(markdown(run))
    print(f"wrote {Path(points.output) / 'sweep.json'}, sweep.md, sweep.png")
    return 0
