"""``featlift eval``: dense-probe benchmarks for several upsamplers side by side."""

from __future__ import annotations

import argparse
from pathlib import Path

from .._tensors import DTYPE_NAMES
from ._args import (
    add_backbone_name,
    add_feature_cache,
    add_no_amp,
    add_runtime,
    add_tile,
    add_weight_sources,
    load_options,
    positive_int,
)

NAME = "eval"
HELP = "dense-probe benchmarks: linear-probe segmentation / depth for several upsamplers side by side"
DESCRIPTION = (
    "Trains a 1x1 linear probe on each upsampler's pixel-dense features with the same protocol and "
    "seed (AdamW, cosine schedule), evaluates it, prints a side-by-side table and writes --out JSON."
)


def _protocol_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per protocol setting (every setting of every task's protocol), default: the protocol's."""
    from ..eval.protocols import DEFAULT_PROTOCOLS, PROTOCOLS, SETTING_HELP

    group = parser.add_argument_group(
        "protocol settings",
        "each overrides the --protocol's value (the report records it as set by the user); a setting of "
        "another task's protocol is refused",
    )
    seen: dict[str, list[str]] = {}
    examples: dict[str, object] = {}
    for p in PROTOCOLS.values():
        for key, value in p.settings().items():
            tasks = seen.setdefault(key, [])
            if p.task not in tasks:
                tasks.append(p.task)
            examples.setdefault(key, value)
    for key, tasks in seen.items():
        value = examples[key]
        flag = "--" + key.replace("_", "-")
        defaults = ", ".join(
            f"{PROTOCOLS[name].name}: {PROTOCOLS[name].settings()[key]}"
            for name in DEFAULT_PROTOCOLS.values()
            if key in PROTOCOLS[name].settings()
        )
        help_text = f"{'/'.join(tasks)}: {SETTING_HELP.get(key, key)} (default {defaults})"
        if isinstance(value, bool):
            group.add_argument(flag, dest=key, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif isinstance(value, tuple):
            group.add_argument(flag, dest=key, type=float, nargs=len(value), default=None, help=help_text)
        else:
            group.add_argument(flag, dest=key, type=type(value), default=None, help=help_text)
    parser.set_defaults(_protocol_settings=tuple(seen))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", choices=["seg", "depth", "video"], help="what to evaluate")
    parser.add_argument(
        "--dataset", required=True, help="voc, ade20k, cityscapes, cocostuff, cocostuff27, nyuv2, davis"
    )
    parser.add_argument("--root", required=True, help="folder holding the dataset in its standard layout")
    parser.add_argument(
        "--upsampler",
        action="append",
        required=True,
        help="repeatable: a featlift name/dir/Hub id, bilinear|nearest|bicubic (with --backbone), or hub:REPO:ENTRY",
    )
    add_backbone_name(parser, required=False, what="the backbone for bilinear/nearest/bicubic and hub: upsamplers")
    add_weight_sources(parser)
    parser.add_argument(
        "--protocol",
        default=None,
        help="the named protocol (seg: naf (default), jafar, anyup, mmseg-ade20k, cocostuff27-all; depth: "
        "probe3d (default), l1; video: dino (default)); the report's protocol record lists every value and source",
    )
    _protocol_flags(parser)
    parser.add_argument("--max-train", type=positive_int, default=None, help="use only the first N training images")
    parser.add_argument("--max-val", type=positive_int, default=None, help="use only the first N validation images")
    add_runtime(parser, dtypes=None)
    parser.add_argument(
        "--dtype",
        default=None,
        choices=DTYPE_NAMES,
        help="featlift upsamplers' compute dtype (default float32; bfloat16 on CUDA unless --no-amp)",
    )
    add_tile(parser)
    parser.add_argument(
        "--save-predictions",
        default=None,
        metavar="DIR",
        help="write DIR/UPSAMPLER/ID.png and DIR/target/ID.png (seg: 8-bit classes; depth: 16-bit mm); "
        "video: DIR/UPSAMPLER/SEQ/FRAME.png indexed at the annotations' size",
    )
    parser.add_argument("--out", default=None, help="results JSON (a picture grid goes next to it as .png)")
    parser.add_argument("--picture", default=None, help="where to write the picture grid (default: next to --out)")
    add_feature_cache(parser)
    parser.add_argument(
        "--checkpoint-dir",
        default=None,
        metavar="DIR",
        help="per-epoch probe checkpoints (default: next to --out, as OUT.checkpoints)",
    )
    parser.add_argument("--resume", action="store_true", help="continue the probes saved in the checkpoint folder")
    add_no_amp(parser)


def _protocol(args: argparse.Namespace):
    """The --protocol with every given setting flag applied (a wrong task's setting is refused)."""
    from ..eval.protocols import protocol

    chosen = protocol(args.protocol, args.task)
    return chosen.with_settings(**{key: getattr(args, key) for key in args._protocol_settings})


def run(args: argparse.Namespace) -> int:
    from .._distributed import init_distributed
    from .._tensors import to_dtype
    from ..eval.run import evaluate, format_table
    from ..eval.video import evaluate_video

    def given(*names: str) -> dict:
        """The flags of these names, as keywords of the same names."""
        return {name: getattr(args, name) for name in names}

    chosen = _protocol(args)
    # device: default CUDA when available (under torchrun, this process's own GPU)
    common = given("backbone", "device", "max_val", "out", "feature_cache", "save_predictions", "trust_repo")
    common.update(options=load_options(args), amp=not args.no_amp, progress=True, protocol=chosen)
    if args.backbone_stride is not None:
        common["stride"] = args.backbone_stride
    if args.dtype is not None:
        common["dtype"] = to_dtype(args.dtype)
    picture = None
    if args.task == "video":
        report = evaluate_video(args.dataset, args.root, args.upsampler, **common)
    else:
        picture = args.picture or (str(Path(args.out).with_suffix(".png")) if args.out else None)
        checkpoints = args.checkpoint_dir or (str(Path(args.out).with_suffix(".checkpoints")) if args.out else None)
        probe = given("max_train", "tile", "resume")
        task = (args.task, args.dataset, args.root, args.upsampler)
        report = evaluate(*task, picture=picture, checkpoint_dir=checkpoints, **probe, **common)
    if not init_distributed(args.device).main:  # under torchrun the first process reports
        return 0
    print(format_table(report))
    if args.out:
        print(f"results written to {args.out}" + (f", picture to {picture}" if picture else ""))
    return 0
