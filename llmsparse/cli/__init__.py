"""Command line: ``llmsparse prune|sparsify|recover|generate|eval|compare|sweep|push|methods|env``, thin over the Python API.

One module per command, each with ``HELP``, ``DESCRIPTION``, ``add(parser)`` and ``run(args)``;
flags come from the settings dataclasses (:mod:`.flags`), and every
:class:`~llmsparse.errors.LlmsparseError` ends as one line on stderr with exit code 2.
The top layer: it imports the Python API below it and nothing in the package imports it (the ``llmsparse`` script runs :func:`main`).
"""

from __future__ import annotations

import logging
import sys

from ..version import __version__
from . import compare, env, evaluate, flags, generate, methods, prune, push, recover, sparsify, sweep

#: Subcommand name -> module.
COMMANDS = {
    "prune": prune,
    "sparsify": sparsify,
    "recover": recover,
    "generate": generate,
    "eval": evaluate,
    "compare": compare,
    "sweep": sweep,
    "push": push,
    "methods": methods,
    "env": env,
}


def build_parser() -> flags.Parser:
    parser = flags.Parser(prog="llmsparse", description="Post-training sparsity for causal language models.")
    parser.add_argument("--version", action="version", version=f"llmsparse {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and results")
    parser.add_argument("-v", "--verbose", action="store_true", help="full tables (every matrix) instead of summaries")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=flags.Parser)
    for name, module in COMMANDS.items():
        module.add(sub.add_parser(name, help=module.HELP, description=module.DESCRIPTION))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return flags.run_command(COMMANDS[args.command].run, args)


if __name__ == "__main__":
    sys.exit(main())
