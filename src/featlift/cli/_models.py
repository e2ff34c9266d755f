"""``featlift models``: the registered upsamplers, one line each."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    sub.add_parser("models", help="list the registered upsamplers").set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .._registry import get_variant, list_upsamplers

    for name in list_upsamplers():
        v = get_variant(name)
        bb = v.config.backbone
        print(f"{name:16} {bb.source}:{bb.name}  channels={bb.channels} patch={bb.patch}  weights={v.hub_repo}")
    return 0
