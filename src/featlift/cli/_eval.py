"""``featlift eval``: dense-probe benchmarks for several upsamplers side by side."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._args import (
    add_feature_cache,
    add_no_amp,
    add_runtime,
    add_tile,
    add_weight_sources,
    load_options,
    number_above,
    positive_int,
)

NAME = "eval"
HELP = "dense-probe benchmarks: linear-probe segmentation / depth for several upsamplers side by side"
DESCRIPTION = (
    "Trains a 1x1 linear probe on each upsampler's pixel-dense features with the same protocol and "
    "seed (AdamW, cosine schedule), evaluates it, prints a side-by-side table and writes --out JSON."
)


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
    parser.add_argument(
        "--backbone", default=None, help="timm backbone for bilinear/nearest/bicubic and hub: upsamplers"
    )
    add_weight_sources(parser)
    parser.add_argument(
        "--image-size", type=positive_int, default=448, help="shorter side resize + centre crop (default 448)"
    )
    parser.add_argument("--epochs", type=positive_int, default=20)
    parser.add_argument("--lr", type=number_above(0), default=5e-4)
    parser.add_argument("--batch-size", type=positive_int, default=2)
    parser.add_argument("--max-train", type=positive_int, default=None, help="use only the first N training images")
    parser.add_argument("--max-val", type=positive_int, default=None, help="use only the first N validation images")
    parser.add_argument("--seed", type=int, default=0)
    add_runtime(parser, dtypes=None)
    add_tile(parser)
    parser.add_argument(
        "--save-predictions", default=None, metavar="DIR", help="write DIR/UPSAMPLER/ID.png and DIR/target"
    )
    parser.add_argument("--out", default=None, help="results JSON (a picture grid goes next to it as .png)")
    parser.add_argument("--picture", default=None, help="where to write the picture grid (default: next to --out)")
    parser.add_argument(
        "--video-stride", type=positive_int, default=4, help="video: feature pooling before propagation"
    )
    add_feature_cache(parser)
    parser.add_argument(
        "--checkpoint-dir",
        default=None,
        metavar="DIR",
        help="per-epoch probe checkpoints (default: next to --out, as OUT.checkpoints)",
    )
    parser.add_argument("--resume", action="store_true", help="continue the probes saved in the checkpoint folder")
    add_no_amp(parser)


def run(args: argparse.Namespace) -> int:
    from .._distributed import init_distributed
    from ..eval.probe import ProbeConfig
    from ..eval.run import evaluate, format_table
    from ..eval.video import evaluate_video

    def given(*names: str) -> dict:
        """The flags of these names, as keywords of the same names."""
        return {name: getattr(args, name) for name in names}

    # device: default CUDA when available (under torchrun, this process's own GPU)
    common = given("backbone", "device", "image_size", "max_val", "out", "feature_cache")
    common.update(options=load_options(args), amp=not args.no_amp, progress=True)
    picture = None
    if args.task == "video":
        report = evaluate_video(args.dataset, args.root, args.upsampler, stride=args.video_stride, **common)
    else:
        picture = args.picture or (str(Path(args.out).with_suffix(".png")) if args.out else None)
        config = ProbeConfig(amp=not args.no_amp, **given("epochs", "lr", "batch_size", "seed"))
        checkpoints = args.checkpoint_dir or (str(Path(args.out).with_suffix(".checkpoints")) if args.out else None)
        probe = given("max_train", "tile", "save_predictions", "resume")
        task = (args.task, args.dataset, args.root, args.upsampler)
        report = evaluate(*task, config=config, picture=picture, checkpoint_dir=checkpoints, **probe, **common)
    if not init_distributed(args.device).main:  # under torchrun the first process reports
        return 0
    print(format_table(report))
    if args.out:
        print(f"results written to {args.out}" + (f", picture to {picture}" if picture else ""))
    return 0
