"""``llmsparse push``: upload a saved sparse model to the Hugging Face Hub."""

from __future__ import annotations

import argparse

from ..checkpoint.hub import push
from . import finish as tail
from . import flags

HELP = "upload a saved sparse model to the Hugging Face Hub"
DESCRIPTION = "Upload a directory written by llmsparse to the Hub."


def add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="a directory written by llmsparse prune --output")
    parser.add_argument("repo_id", help="Hub repository, e.g. you/model-wanda-50")
    flags.add_settings(parser, tail.OutputSettings, set(), skip=("output", "overwrite", "format", "push_to_hub"))


def run(args: argparse.Namespace) -> int:
    print(f"pushed: {push(args.directory, args.repo_id, private=bool(args.private), revision=args.revision)}")
    return 0
