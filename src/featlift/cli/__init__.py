"""The ``featlift`` command line: one module per command (its ``NAME``, ``HELP``, ``DESCRIPTION``,
``add_arguments(parser)`` and ``run(args) -> exit status``), the shared arguments in :mod:`._args`.

Building the parser imports neither torch nor the library's heavy modules; each command imports what it
needs when it runs, so ``featlift --help`` and ``featlift models`` answer at once.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import FeatliftError
from . import _demo, _eval, _export, _models, _train, _upsample

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``featlift`` argument parser with every command registered."""
    parser = argparse.ArgumentParser(prog="featlift", description="Pixel-dense features with UPLiFT upsamplers.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in (_models, _upsample, _train, _eval, _export, _demo):
        parser_ = sub.add_parser(command.NAME, help=command.HELP, description=command.DESCRIPTION)
        command.add_arguments(parser_)
        parser_.set_defaults(func=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except (FeatliftError, ValueError, TypeError, OSError, RuntimeError, MemoryError) as err:
        print(f"featlift: error: {err}", file=sys.stderr)
        return 1
