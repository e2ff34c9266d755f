"""The ``featlift`` command line: list models, upsample image files to pixel-dense features."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .errors import FeatliftError


def _int_at_least(low: int):
    """An argparse type: a whole number no smaller than ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _parse_size(text: str | None):
    if text is None:
        return None
    if text == "native":
        return "native"
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must be 'native' or HxW such as 448x448, got {text!r}") from None
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f"--size must be positive, got {text!r}")
    return (h, w)


def _cmd_models(args: argparse.Namespace) -> int:
    from featlift.registry import get_variant, list_upsamplers

    for name in list_upsamplers():
        v = get_variant(name)
        bb = v.config.backbone
        print(f"{name:16} {bb.source}:{bb.name}  channels={bb.channels} patch={bb.patch}  weights={v.hub_repo}")
    return 0


def _cmd_upsample(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from featlift.builder import load_upsampler
    from featlift.distributed import init_distributed, process_device
    from featlift.extract import extract, load_head, plan_jobs

    out_dir = Path(args.out)
    jobs = plan_jobs(args.inputs, out_dir)  # before the model loads: bad paths fail fast
    if not jobs:
        print("featlift: error: no images found in the given paths", file=sys.stderr)
        return 2
    d = init_distributed(args.device)
    nothing = not args.overwrite and all(job.done(args.pca) for job in jobs)
    d.barrier()  # every process decides before any writes
    if nothing:
        if d.main:
            print(
                f"all {len(jobs)} image(s) already have outputs in {out_dir}; nothing to do (--overwrite redoes them)"
            )
        return 0
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    up = load_upsampler(
        args.model,
        device=process_device(args.device, d),
        dtype=dtype,
        iters=args.iters,
        weights=args.weights,
        backbone_weights=args.backbone_weights,
        pretrained=not args.no_pretrained,
        tile=args.tile,
    )
    head = load_head(args.head, up.uplift.channels) if args.head else None
    summary = extract(
        up,
        args.inputs,
        out_dir,
        output_size=args.size,
        batch_size=args.batch_size,
        save_dtype=args.save_dtype,
        head=head,
        pca=args.pca,
        overwrite=args.overwrite,
        workers=args.workers,
        model_name=args.model,
        progress=True,
        dist=d,
        on_failure=lambda source, message: tqdm.write(f"failed {source}: {message}", file=sys.stderr),
    )
    if not d.main:
        return 1 if summary.failed else 0
    processes = f" by {summary.processes} processes" if summary.processes > 1 else ""
    print(
        f"wrote features for {summary.written} image(s) to {out_dir}{processes}; skipped {summary.skipped} already "
        f"done; failed {len(summary.failed)}" + (" (listed above)" if summary.failed else "")
    )
    return 1 if summary.failed else 0


def _cmd_train(args: argparse.Namespace) -> int:
    from featlift.training import TrainConfig, train

    cfg = TrainConfig(
        backbone=args.backbone,
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
    main_process = int(os.environ.get("RANK", "0")) == 0
    stopped = metrics.get("interrupted")
    if stopped:
        import signal

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


def _cmd_eval(args: argparse.Namespace) -> int:
    from featlift.eval.probe import ProbeConfig
    from featlift.eval.run import evaluate, evaluate_video, format_table

    common = {
        "backbone": args.backbone,
        "backbone_weights": args.backbone_weights,
        "pretrained": not args.no_pretrained,
        "device": args.device,  # default: CUDA when available (under torchrun this process's GPU)
        "image_size": args.image_size,
        "max_val": args.max_val,
        "out": args.out,
        "progress": True,
        "feature_cache": args.cache_dir,
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
    if os.environ.get("RANK", "0") != "0":  # under torchrun the first process reports
        return 0
    print(format_table(report))
    if args.out:
        print(f"results written to {args.out}" + (f", picture to {picture}" if picture else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="featlift", description="Pixel-dense features with UPLiFT upsamplers.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list the registered upsamplers").set_defaults(func=_cmd_models)
    p = sub.add_parser(
        "upsample",
        help="write pixel-dense features of images as .safetensors",
        description=(
            "Writes OUT/<path relative to the folder given>.safetensors per image (photos/a/x.png given as "
            "photos -> OUT/a/x.png.safetensors; a file given by name -> OUT/x.png.safetensors), and with "
            "--pca OUT/....pca.png. Files are written atomically; images whose outputs exist are skipped, so "
            "an interrupted run resumes (--overwrite redoes them). Under torchrun the images are shared out "
            "across the processes, each on its own GPU. Exit status 1 if any image failed."
        ),
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders (searched recursively)")
    p.add_argument("--model", default="dinov2_s14", help="registered name, local model dir or Hub repo id")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--size", type=_parse_size, default=None, help="'native' or HxW (default: each image's size)")
    p.add_argument("--pca", action="store_true", help="also write a PNG of the first three principal components")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="compute dtype")
    p.add_argument(
        "--save-dtype",
        default="float32",
        choices=["float32", "float16", "bfloat16"],
        help="stored dtype (float16 halves the files; bfloat16 too, with float32's range)",
    )
    p.add_argument(
        "--head",
        default=None,
        metavar="FILE",
        help="a .safetensors linear map (weight [K, C] or [K, C, 1, 1], optional bias [K]; e.g. a PCA basis or a "
        "probe) applied per tile: only its K channels are stored",
    )
    p.add_argument("--batch-size", type=_positive_int, default=1, help="same-size images per forward pass")
    p.add_argument(
        "--workers", type=_non_negative_int, default=2, help="DataLoader processes decoding images (0: in-process)"
    )
    p.add_argument("--iters", type=_positive_int, default=None, help="upsampling iterations (default: pixel density)")
    p.add_argument(
        "--tile",
        type=_positive_int,
        default=None,
        help="exact tiled upsampling over tiles of this many backbone cells (bounds memory on big images)",
    )
    p.add_argument("--weights", default=None, help="local UPLiFT weights instead of the download")
    p.add_argument("--backbone-weights", default=None, help="local backbone weights instead of the download")
    p.add_argument("--no-pretrained", action="store_true", help="random weights (testing only)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="redo images whose outputs exist (default: skip them, so reruns resume)",
    )
    p.set_defaults(func=_cmd_upsample)

    t = sub.add_parser("train", help="train an UPLiFT upsampler for a backbone (self-supervised)")
    t.add_argument("--backbone", required=True, help="timm ViT name or a registered variant")
    t.add_argument("--data", required=True, help="image folder (recursive) or a text file of image paths")
    t.add_argument("--out", required=True, help="output folder (config.json, model.safetensors, checkpoint.pt)")
    t.add_argument("--image-size", type=int, default=224, help="training crop side in pixels (the targets)")
    t.add_argument("--depths", type=int, default=2, help="mix depths 1..D")
    t.add_argument("--batch-size", type=int, default=8, help="images per process (global = this x processes)")
    length = t.add_mutually_exclusive_group(required=True)
    length.add_argument("--steps", type=int, help="optimiser steps")
    length.add_argument("--epochs", type=float, help="passes over the training images")
    t.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--base",
        default="dinov2_s14",
        help="architecture: registered name, authors' YAML, featlift JSON, model dir or Hub repo id",
    )
    t.add_argument("--backbone-weights", default=None, help="local backbone weights file")
    t.add_argument("--no-pretrained-backbone", action="store_true", help="random-init backbone (tests)")
    t.add_argument("--loss", default="l2", choices=["l2", "l1", "cosine"])
    t.add_argument("--noise", type=float, default=0.0, help="std of noise added to the input features")
    t.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    t.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    t.add_argument("--val-fraction", type=float, default=0.1, help="share of images held out for evaluation")
    t.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (default: at the end)")
    t.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        help="checkpoint every N steps (default: at the end, and on SIGINT/SIGTERM)",
    )
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    t.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    t.add_argument("--feature-cache", default=None, metavar="DIR", help="cache backbone features here across epochs")
    t.add_argument("--push-to-hub", default=None, metavar="REPO", help="publish the result to this Hub repo")
    t.set_defaults(func=_cmd_train)

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
    e.add_argument("--image-size", type=int, default=448, help="shorter side resize + centre crop (default 448)")
    e.add_argument("--epochs", type=int, default=20)
    e.add_argument("--lr", type=float, default=5e-4)
    e.add_argument("--batch-size", type=int, default=2)
    e.add_argument("--max-train", type=int, default=None, help="use only the first N training images")
    e.add_argument("--max-val", type=int, default=None, help="use only the first N validation images")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    e.add_argument("--tile", type=int, default=None, help="tile size (backbone cells) for featlift upsamplers")
    e.add_argument("--save-predictions", default=None, metavar="DIR", help="write DIR/UPSAMPLER/ID.png and DIR/target")
    e.add_argument("--out", default=None, help="results JSON (a picture grid goes next to it as .png)")
    e.add_argument("--picture", default=None, help="where to write the picture grid (default: next to --out)")
    e.add_argument("--video-stride", type=int, default=4, help="video: feature pooling before propagation")
    e.add_argument(
        "--cache-dir", default=None, metavar="DIR", help="cache backbone features here (keyed on image, crop, backbone)"
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
    e.set_defaults(func=_cmd_eval)

    from .demo.command import add_parser as add_demo_parser
    from .export.command import add_parser as add_export_parser

    add_export_parser(sub)
    add_demo_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except (FeatliftError, ValueError, TypeError, OSError, RuntimeError, MemoryError) as err:
        print(f"featlift: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
