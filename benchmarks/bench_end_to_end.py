"""The whole call as a user feels it: ``up(image)`` from a 448x448 picture to features at its own size.

Reported, in one process and round-robin so machine drift hits every variant alike (medians over
``--repeats`` after a warm-up):

* ``own size``: ``up(image)``, features at the picture's size (448x448);
* ``native``: ``up(image, output_size="native")``, the upsampler's own grid (512x512 for DINOv2-S/14);
* the phases of the own-size call: pre-processing (picture -> normalised tensor), backbone, upsampler
  (UPLiFT alone, on precomputed backbone features) and the final resize;
* the resize's numerical trade: the own-size output against the antialiased resize of the native
  output (what featlift returned before; see ``featlift._upsampler.resize_features``);
* with ``--cli N``: ``featlift upsample`` (JPEG files, ``--save-dtype float16``) as images per second
  against the in-memory ``up()`` rate measured in the same run: the dataset rate from runs on N and 2N
  pictures (fixed start-up costs cancel), and the whole command on N pictures.

Ratios are the figures to compare; absolute times mean something only on a quiet machine or a GPU.

    python benchmarks/bench_end_to_end.py                     # 448 px, CPU, dinov2_s14 random weights
    python benchmarks/bench_end_to_end.py --size 448 --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def _picture(size: int):
    """A deterministic photo-like RGB picture: smooth gradients, shapes with sharp edges, fine noise."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([120 + 80 * x, 100 + 60 * y, 140 - 50 * x * y], axis=2)
    image = Image.fromarray((base + rng.normal(0, 8, base.shape)).clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = (int(v) for v in rng.integers(0, size - 60, 2))
        w, h = (int(v) for v in rng.integers(20, 120, 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x0 + w, y0 + h), fill=colour)
    return image


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="dinov2_s14")
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--cli", type=int, default=0, metavar="N", help="also time featlift upsample on N pictures")
    parser.add_argument("--workers", type=int, default=2, help="--workers for the CLI run")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    import torch

    import featlift
    from featlift._images import resize_to_patch_multiple, to_image_tensor
    from featlift._upsampler import resize_features

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    up = featlift.load_upsampler(args.model, pretrained=False, device=args.device, dtype=getattr(torch, args.dtype))
    device = up.device
    picture = _picture(args.size)

    with torch.inference_mode():
        pixels = to_image_tensor(picture)[None]
        image = up.normalize(resize_to_patch_multiple(pixels, up.patch))
        lowres = up.backbone(image)
        native = up.uplift(image, lowres, iters=up.iters)

    def preprocess():
        return up.normalize(resize_to_patch_multiple(to_image_tensor(picture)[None], up.patch))

    calls = {
        "own size": lambda: up(picture),
        "native": lambda: up(picture, output_size="native"),
        "pre-processing": preprocess,
        "backbone": lambda: up.backbone(image),
        "upsampler": lambda: up.uplift(image, lowres, iters=up.iters),
        "resize": lambda: resize_features(native, (args.size, args.size)),
    }
    times: dict[str, list[float]] = {name: [] for name in calls}
    with torch.inference_mode():
        for fn in calls.values():  # warm-up
            fn()
        for _ in range(args.repeats):
            for name, fn in calls.items():
                _sync(device)
                start = time.perf_counter()
                fn()
                _sync(device)
                times[name].append(time.perf_counter() - start)
        median = {name: statistics.median(values) for name, values in times.items()}

        own = up(picture).float()
        before = torch.nn.functional.interpolate(
            native.float(), size=(args.size, args.size), mode="bilinear", align_corners=False, antialias=True
        )
        delta = (own - before).abs()
    report = {
        "model": args.model,
        "size": args.size,
        "device": str(device),
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "native_grid": list(native.shape[-2:]),
        "seconds": median if device.type == "cuda" else None,
        "own_size_over_native": median["own size"] / median["native"],
        "whole_call_over_upsampler": median["own size"] / median["upsampler"],
        "phase_shares_of_own_size": {
            name: median[name] / median["own size"] for name in ("pre-processing", "backbone", "upsampler", "resize")
        },
        "resize_vs_antialiased": {
            "max_abs": delta.max().item(),
            "mean_abs": delta.mean().item(),
            "feature_rms": before.pow(2).mean().sqrt().item(),
        },
    }
    if args.cli:
        report["cli"] = _cli_rate(args, picture, up)
    print(f"{args.model} at {args.size} px on {device} ({args.dtype}, {report['threads']} threads)")
    print(f"  up(image) / up(image, output_size='native'):  {report['own_size_over_native']:.3f}x  (target <= 1.1)")
    print(f"  whole call / upsampler alone:                 {report['whole_call_over_upsampler']:.3f}x")
    for name, share in report["phase_shares_of_own_size"].items():
        print(f"    {name:<16} {100 * share:5.1f}% of the whole call")
    r = report["resize_vs_antialiased"]
    print(
        f"  own-size output vs the antialiased resize: max |d| {r['max_abs']:.4f}, mean |d| {r['mean_abs']:.5f} "
        f"(feature RMS {r['feature_rms']:.3f})"
    )
    if args.cli:
        c = report["cli"]
        print(
            f"  featlift upsample, float16 files, dataset rate (2N - N images, N = {c['images']}): "
            f"{c['cli_rate']:.3f} img/s vs up() {c['memory_rate']:.3f} img/s in memory = {c['ratio']:.3f}x "
            "(target >= 0.85)"
        )
        print(
            f"  featlift upsample, whole command on {c['images']} images (model loading included): "
            f"{c['whole_command_rate']:.3f} img/s = {c['whole_command_ratio']:.3f}x; {c['file_bytes'] / 1e6:.1f} MB a file"
        )
    if device.type == "cuda":
        print("  seconds: " + ", ".join(f"{name} {value:.4f}" for name, value in median.items()))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
    return report


def _cli_rate(args, picture, up) -> dict:
    """``featlift upsample`` on JPEG copies of the picture vs ``up()`` on it in memory.

    The command runs twice, on N and on 2N pictures; the dataset rate is N over the difference of the two
    times, which cancels what a run pays once (model loading, the first call's warm-up, worker start-up).
    The whole-command rate of the N-picture run is reported too.
    """
    import shutil
    import tempfile
    from pathlib import Path

    import torch

    from featlift.cli import main as cli

    folder = Path(tempfile.mkdtemp(prefix="featlift-bench-"))
    try:
        seconds = {}
        for n in (args.cli, 2 * args.cli):
            (folder / f"in{n}").mkdir()
            for i in range(n):
                picture.save(folder / f"in{n}" / f"{i:04d}.jpg", quality=95)
            argv = ["upsample", str(folder / f"in{n}"), "--out", str(folder / f"out{n}"), "--model", args.model]
            argv += ["--no-pretrained", "--device", args.device, "--dtype", args.dtype, "--save-dtype", "float16"]
            argv += ["--workers", str(args.workers)]
            start = time.perf_counter()
            if cli(argv) != 0:
                raise RuntimeError("featlift upsample failed")
            seconds[n] = time.perf_counter() - start
        with torch.inference_mode():
            start = time.perf_counter()
            for _ in range(args.cli):
                up(picture)
            memory_seconds = time.perf_counter() - start
        files = sorted((folder / f"out{args.cli}").glob("*.safetensors"))
        dataset_seconds = seconds[2 * args.cli] - seconds[args.cli]
        return {
            "images": args.cli,
            "cli_rate": args.cli / dataset_seconds,
            "whole_command_rate": args.cli / seconds[args.cli],
            "memory_rate": args.cli / memory_seconds,
            "ratio": memory_seconds / dataset_seconds,
            "whole_command_ratio": memory_seconds / seconds[args.cli],
            "file_bytes": files[0].stat().st_size,
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
