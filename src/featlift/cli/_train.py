"""``featlift train``: train an UPLiFT upsampler for a backbone (self-supervised)."""

from __future__ import annotations

import argparse
import sys

from ._args import (
    add_backbone_name,
    add_backbone_weights,
    add_feature_cache,
    add_no_amp,
    add_runtime,
    add_trust_repo,
    at_least,
    non_negative_int,
    number_above,
    positive_int,
)

NAME = "train"
HELP = "train an UPLiFT upsampler for a backbone (self-supervised)"
DESCRIPTION = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_backbone_name(parser, required=True, what="the backbone to train for, or a registered variant's name")
    add_trust_repo(parser)
    parser.add_argument("--data", required=True, help="image folder (recursive) or a text file of image paths")
    parser.add_argument("--out", required=True, help="output folder (config.json, model.safetensors, checkpoint.pt)")
    parser.add_argument(
        "--image-size", type=positive_int, default=224, help="training crop side in pixels (the targets)"
    )
    parser.add_argument("--depths", type=positive_int, default=2, help="mix depths 1..D")
    parser.add_argument(
        "--batch-size", type=positive_int, default=8, help="images per process (global = this x processes)"
    )
    length = parser.add_mutually_exclusive_group(required=True)
    length.add_argument("--steps", type=positive_int, help="optimiser steps")
    length.add_argument("--epochs", type=number_above(0), help="passes over the training images")
    parser.add_argument("--lr", type=number_above(0), default=1e-3, help="Adam learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--base",
        default="dinov2_s14",
        help="architecture: registered name, authors' YAML, featlift JSON, model dir or Hub repo id",
    )
    add_backbone_weights(parser)
    parser.add_argument("--no-pretrained-backbone", action="store_true", help="random-init backbone (tests)")
    parser.add_argument("--loss", default="l2", choices=["l2", "l1", "cosine"])
    parser.add_argument(
        "--noise", type=at_least(0, cast=float), default=0.0, help="std of noise added to the input features"
    )
    add_no_amp(parser)
    parser.add_argument("--workers", type=non_negative_int, default=0, help="DataLoader worker processes")
    parser.add_argument(
        "--val-fraction",
        type=at_least(0, cast=float, below=1),
        default=0.1,
        help="share of images held out for evaluation (0 to below 1)",
    )
    parser.add_argument(
        "--eval-every", type=non_negative_int, default=0, help="evaluate every N steps (default: at the end)"
    )
    parser.add_argument(
        "--checkpoint-every",
        type=non_negative_int,
        default=0,
        help="checkpoint every N steps (default: at the end, and on SIGINT/SIGTERM)",
    )
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    add_runtime(parser, dtypes=None)
    add_feature_cache(parser)
    parser.add_argument("--push-to-hub", default=None, metavar="REPO", help="publish the result to this Hub repo")


def run(args: argparse.Namespace) -> int:
    import signal

    from .._distributed import init_distributed
    from ..training import TrainConfig, train

    cfg = TrainConfig(
        backbone=args.backbone,
        stride=args.backbone_stride,
        trust_repo=args.trust_repo,
        data=args.data,
        out=args.out,
        image_size=args.image_size,
        depths=args.depths,
        batch_size=args.batch_size,
        steps=args.steps,
        epochs=args.epochs,
        lr=args.lr,
        seed=args.seed,
        base=args.base,
        backbone_weights=args.backbone_weights,
        pretrained_backbone=not args.no_pretrained_backbone,
        loss=args.loss,
        noise_std=args.noise,
        amp=not args.no_amp,
        workers=args.workers,
        val_fraction=args.val_fraction,
        eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        device=args.device,
        push_to_hub=args.push_to_hub,
        feature_cache=args.feature_cache,
    )
    metrics = train(cfg, progress=True)
    main_process = init_distributed(args.device).main  # the process group train() joined
    stopped = metrics.get("interrupted")
    if stopped:
        if main_process:
            print(
                f"interrupted at step {stopped['step']} by {stopped['signal']}; checkpoint written to "
                f"{stopped['checkpoint']}; rerun with --resume to continue",
                file=sys.stderr,
            )
        return 128 + int(signal.Signals[stopped["signal"]])
    if main_process:
        print(f"wrote config.json and model.safetensors to {args.out}")
        for depth, row in metrics.get("heldout", {}).items():
            print(
                f"held-out {depth}: uplift {row['uplift']:.5f}  bilinear {row['bilinear']:.5f}  "
                f"ratio {row['ratio']:.3f}"
            )
    return 0
