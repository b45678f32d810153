"""``llmsparse methods``: every registered pruning method, activation method and checkpoint format, with its options."""

from __future__ import annotations

import argparse

from ..activation import ACTIVATION_METHODS
from ..formats import FORMATS
from ..methods import METHODS
from ..registry import describe
from ..structured import STRUCTURED

HELP = "list pruning methods, activation sparsity methods and checkpoint formats, with their options"
DESCRIPTION = HELP[0].upper() + HELP[1:] + "."


def add(parser: argparse.ArgumentParser) -> None:
    """No flags."""


def run(args: argparse.Namespace) -> int:
    print("pruning methods (llmsparse prune --method NAME, options as --NAME-OPTION):")
    for name, cls in sorted(METHODS.items()):
        data = "calibration data" if cls.needs_calibration else "no data"
        print(f"  {name:<10} ({data}): {describe(cls)}")
    print("structured pruning methods (llmsparse prune --method NAME --sparsity S: S of the decoder-block parameters removed):")
    for name, cls in sorted(STRUCTURED.items()):
        print(f"  {name:<10} {cls.summary}; {describe(cls)}")
    print("activation sparsity methods (llmsparse sparsify --method NAME):")
    for name, cls in sorted(ACTIVATION_METHODS.items()):
        print(f"  {name:<10} (allocation {'/'.join(cls.allocations)}): {describe(cls)}")
    print("checkpoint formats (--format NAME):")
    for name, cls in sorted(FORMATS.items()):
        print(f"  {name:<10} {cls.note}")
    return 0
