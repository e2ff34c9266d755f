"""``featlift eval``: dense-probe benchmarks for several upsamplers side by side."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._args import add_runtime, add_tile, number_above, positive_int


def add_parser(sub) -> None:
    e = sub.add_parser(
        "eval",
        help="dense-probe benchmarks: linear-probe segmentation / depth for several upsamplers side by side",
        description=(
            "Trains a 1x1 linear probe on each upsampler's pixel-dense features with the same protocol and "
            "seed (AdamW, cosine schedule), evaluates it, prints a side-by-side table and writes --out JSON."
        ),
    )
    e.add_argument("task", choices=["seg", "depth", "video"], help="what to evaluate")
    e.add_argument("--dataset", required=True, help="voc, ade20k, cityscapes, cocostuff, cocostuff27, nyuv2, davis")
    e.add_argument("--root", required=True, help="folder holding the dataset in its standard layout")
    e.add_argument(
        "--upsampler",
        action="append",
        required=True,
        help="repeatable: a featlift name/dir/Hub id, bilinear|nearest|bicubic (with --backbone), or hub:REPO:ENTRY",
    )
    e.add_argument("--backbone", default=None, help="timm backbone for bilinear/nearest/bicubic and hub: upsamplers")
    e.add_argument("--backbone-weights", default=None, help="local backbone weights (offline use)")
    e.add_argument(
        "--image-size", type=positive_int, default=448, help="shorter side resize + centre crop (default 448)"
    )
    e.add_argument("--epochs", type=positive_int, default=20)
    e.add_argument("--lr", type=number_above(0), default=5e-4)
    e.add_argument("--batch-size", type=positive_int, default=2)
    e.add_argument("--max-train", type=positive_int, default=None, help="use only the first N training images")
    e.add_argument("--max-val", type=positive_int, default=None, help="use only the first N validation images")
    e.add_argument("--seed", type=int, default=0)
    add_runtime(e, dtypes=None)
    add_tile(e)
    e.add_argument("--save-predictions", default=None, metavar="DIR", help="write DIR/UPSAMPLER/ID.png and DIR/target")
    e.add_argument("--out", default=None, help="results JSON (a picture grid goes next to it as .png)")
    e.add_argument("--picture", default=None, help="where to write the picture grid (default: next to --out)")
    e.add_argument("--video-stride", type=positive_int, default=4, help="video: feature pooling before propagation")
    e.add_argument(
        "--feature-cache",
        default=None,
        metavar="DIR",
        help="cache backbone features here (keyed on image, crop, backbone weights)",
    )
    e.add_argument(
        "--checkpoint-dir",
        default=None,
        metavar="DIR",
        help="per-epoch probe checkpoints (default: next to --out, as OUT.checkpoints)",
    )
    e.add_argument("--resume", action="store_true", help="continue the probes saved in the checkpoint folder")
    e.add_argument("--no-amp", action="store_true", help="no bfloat16 on CUDA (always float32)")
    e.add_argument("--no-pretrained", action="store_true", help="random weights everywhere (testing only)")
    e.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .._distributed import init_distributed
    from ..eval.probe import ProbeConfig
    from ..eval.run import evaluate, evaluate_video, format_table

    common = {
        "backbone": args.backbone,
        "backbone_weights": args.backbone_weights,
        "pretrained": not args.no_pretrained,
        "device": args.device,  # default: CUDA when available (under torchrun this process's GPU)
        "image_size": args.image_size,
        "max_val": args.max_val,
        "out": args.out,
        "progress": True,
        "feature_cache": args.feature_cache,
        "amp": not args.no_amp,
    }
    picture = None
    if args.task == "video":
        report = evaluate_video(args.dataset, args.root, args.upsampler, stride=args.video_stride, **common)
    else:
        picture = args.picture or (str(Path(args.out).with_suffix(".png")) if args.out else None)
        config = ProbeConfig(
            epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed, amp=not args.no_amp
        )
        checkpoints = args.checkpoint_dir or (str(Path(args.out).with_suffix(".checkpoints")) if args.out else None)
        report = evaluate(
            args.task,
            args.dataset,
            args.root,
            args.upsampler,
            config=config,
            max_train=args.max_train,
            tile=args.tile,
            save_predictions=args.save_predictions,
            picture=picture,
            checkpoint_dir=checkpoints,
            resume=args.resume,
            **common,
        )
    if not init_distributed(args.device).main:  # under torchrun the first process reports
        return 0
    print(format_table(report))
    if args.out:
        print(f"results written to {args.out}" + (f", picture to {picture}" if picture else ""))
    return 0
