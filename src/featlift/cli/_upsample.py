"""``featlift upsample``: pixel-dense features of image files, written as ``.safetensors``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .._tensors import DTYPE_NAMES
from ._args import add_iters, add_model, add_runtime, add_tile, grid, load_options, non_negative_int, positive_int

NAME = "upsample"
HELP = "write pixel-dense features of images as .safetensors"
DESCRIPTION = (
    "Writes OUT/<path relative to the folder given>.safetensors per image (photos/a/x.png given as "
    "photos -> OUT/a/x.png.safetensors; a file given by name -> OUT/x.png.safetensors), and with "
    "--pca OUT/....pca.png. Files are written atomically; images whose outputs exist are skipped, so "
    "an interrupted run resumes (--overwrite redoes them). Under torchrun the images are shared out "
    "across the processes, each on its own GPU. Exit status 1 if any image failed."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders (searched recursively)"
    )
    add_model(parser)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--size",
        type=grid("--size", also=("native",)),
        default=None,
        help="'native' or HxW such as 448x448 (default: each image's size)",
    )
    parser.add_argument("--pca", action="store_true", help="also write a PNG of the first three principal components")
    add_runtime(parser)
    parser.add_argument(
        "--save-dtype",
        default=None,
        choices=DTYPE_NAMES,
        help="stored dtype (default: the --dtype computed in, float32 with --head; float16 halves float32 "
        "files; bfloat16 too, with float32's range)",
    )
    parser.add_argument(
        "--head",
        default=None,
        metavar="FILE",
        help="a .safetensors linear map (weight [K, C] or [K, C, 1, 1], optional bias [K]; e.g. a PCA basis or a "
        "probe) applied per tile: only its K channels are stored",
    )
    parser.add_argument("--batch-size", type=positive_int, default=1, help="same-size images per forward pass")
    parser.add_argument(
        "--workers", type=non_negative_int, default=2, help="DataLoader processes decoding images (0: in-process)"
    )
    add_iters(parser)
    add_tile(parser)
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="redo images whose outputs exist (default: skip them, so reruns resume)",
    )


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .._builder import load_upsampler
    from .._distributed import init_distributed, process_device
    from ..extract import extract, load_head, plan_jobs
    from ._args import torch_dtype

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
    up = load_upsampler(
        args.model,
        device=process_device(args.device, d),
        dtype=torch_dtype(args),
        iters=args.iters,
        tile=args.tile,
        options=load_options(args),
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
