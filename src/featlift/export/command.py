"""The ``featlift export`` subcommand (being built)."""

from __future__ import annotations

import argparse

from ..errors import ConfigError


def _run(args: argparse.Namespace) -> int:
    raise ConfigError("featlift export is not built yet")


def add_parser(sub) -> None:
    """Register ``featlift export`` on the CLI's subparsers."""
    sub.add_parser("export", help="(being built)").set_defaults(func=_run)
