"""``featlift models``: the registered upsamplers, one line each."""

from __future__ import annotations

import argparse

NAME = "models"
HELP = "list the registered upsamplers"
DESCRIPTION = "One line per registered upsampler: its backbone, channels, patch and where its weights live."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``featlift models`` takes no arguments."""


def run(args: argparse.Namespace) -> int:
    from .._registry import get_variant, list_upsamplers

    for name in list_upsamplers():
        v = get_variant(name)
        bb = v.config.backbone
        print(f"{name:16} {bb.source}:{bb.name}  channels={bb.channels} patch={bb.patch}  weights={v.hub_repo}")
    return 0
