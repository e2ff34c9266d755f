"""Time and peak memory of the UPLiFT upsampler alone (dinov2_s14 architecture, random weights, batch 1).

Variants, each measured in fresh subprocesses so readings do not mix:

* ``featlift``: the library's default path.
* ``plain``: the same network with the plain attender formulation (all n shifted copies stacked).
* ``convs``: the network's convolutions alone (the floor): everything runs, logits included, but the
  attender's weighted sum is replaced by a nearest upsample of its values.
* ``tiled``: featlift with ``tile=--tile`` cells and a ``--head-classes`` linear head applied per tile,
  so the output holds class scores, not features (the 4096 px case).

Times are medians over ``--repeats`` calls after one warm-up call per variant; featlift, convs and
tiled are timed in one process, round-robin, so machine drift affects them alike. On CPU, peak memory comes from a
second subprocess run with glibc's mmap threshold fixed at 128 KiB, so that freed tensors leave RSS at
once and RSS tracks live memory; the figure is the largest rise of the peak-RSS mark (reset through
/proc/self/clear_refs before each call) above the RSS at the start of the call. On GPU it is
``torch.cuda.max_memory_allocated`` above the allocation before the call, and times come from CUDA
events. Memory is reported as a multiple of the output tensor's bytes (for ``tiled``: of the
pixel-dense feature map the call never holds). Compare figures as ratios within one run.

    python benchmarks/bench_upsampler.py --json bench.json                 # 224 448 896 1344, CPU
    python benchmarks/bench_upsampler.py --sizes 4096 --variants tiled     # 4096 px, tiled + 21 classes
    python benchmarks/bench_upsampler.py --device cuda --dtypes float32 bfloat16
    python benchmarks/bench_upsampler.py --device cuda:1 --sizes 448 2048 --variants featlift

Every CUDA event, synchronisation and peak-memory reading names the ``--device`` given (see
``benchmarks/_common.py``), so ``cuda:1`` is timed correctly while ``cuda:0`` is the current device.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from _common import CHANNELS, VARIANTS, Stopwatch, build_variant, random_inputs, synchronize


def _worker(args: argparse.Namespace) -> list[dict]:
    """Time the listed variants round-robin in one process (so drift hits them alike), or measure the
    peak memory of one variant."""
    import torch

    from featlift._peak_memory import PeakMemory

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    variants = args.variant.split(",")
    built = {v: build_variant(v, device, dtype, tile=args.tile, head_classes=args.head_classes) for v in variants}

    image, features = random_inputs(args.size, device, dtype)
    out_side = features.shape[-1] * 2**args.iters
    elem = torch.finfo(dtype).bits // 8

    def call(variant):
        model, kwargs = built[variant]
        with torch.inference_mode():
            return model(image, features, iters=args.iters, **kwargs)

    times = {v: [] for v in variants}
    peaks = {v: [] for v in variants}
    out_bytes = {}
    for v in variants:  # warm-up: thread pools, oneDNN primitives and kernels are set up once
        out = call(v)
        out_bytes[v] = out.numel() * out.element_size()
        del out
    synchronize(device)
    for _ in range(args.repeats):
        for v in variants:
            with PeakMemory(device) as peak, Stopwatch(device) as watch:
                out = call(v)
            times[v].append(watch.seconds)
            peaks[v].append(float("nan") if peak.peak is None else peak.peak)
            del out
    return [
        {
            "size": args.size,
            "variant": v,
            "dtype": args.dtype,
            "time_s": statistics.median(times[v]),
            "times_s": times[v],
            "peak_bytes": max(peaks[v]),
            "output_bytes": out_bytes[v],
            "feature_bytes": CHANNELS * out_side * out_side * elem,
            "output_pixels": out_side * out_side,
        }
        for v in variants
    ]


def _run_worker(args: argparse.Namespace, size: int, variants: list[str], dtype: str, memory: bool) -> list[dict]:
    cmd = [sys.executable, __file__, "--worker", "--size", str(size), "--variant", ",".join(variants)]
    cmd += ["--dtype-one", dtype, "--iters", str(args.iters), "--threads", str(args.threads)]
    cmd += ["--repeats", str(args.repeats), "--device", args.device]
    cmd += ["--tile", str(args.tile), "--head-classes", str(args.head_classes)]
    env = dict(os.environ)
    if memory:
        env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        print(f"{size}px {variants} {dtype}: failed\n{result.stderr[-2000:]}", file=sys.stderr)
        return []
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448, 896, 1344])
    parser.add_argument("--variants", nargs="+", default=["featlift", "plain", "convs"], choices=VARIANTS)
    parser.add_argument("--iters", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--dtypes",
        nargs="+",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="default: float32 on CPU; float32 and bfloat16 on CUDA",
    )
    parser.add_argument("--max-plain-size", type=int, default=448, help="skip the plain variant above this size")
    parser.add_argument("--tile", type=int, default=64, help="tile size in coarse cells for the tiled variant")
    parser.add_argument("--head-classes", type=int, default=21, help="linear head width for the tiled variant")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--dtype-one", dest="dtype", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(_worker(args)))
        return

    dtypes = args.dtypes or (["float32", "bfloat16"] if args.device.startswith("cuda") else ["float32"])
    rows = []
    for dtype in dtypes:
        for size in args.sizes:
            variants = [v for v in args.variants if not (v == "plain" and size > args.max_plain_size)]
            timed = [v for v in variants if v != "plain"]  # plain is too slow to interleave; it runs alone
            found = _run_worker(args, size, timed, dtype, memory=False) if timed else []
            if "plain" in variants:
                found += _run_worker(args, size, ["plain"], dtype, memory=False)
            for row in found:
                if args.device == "cpu":  # memory from a separate run with exact RSS accounting
                    mem = _run_worker(args, size, [row["variant"]], dtype, memory=True)
                    row["peak_bytes"] = mem[0]["peak_bytes"] if mem else float("nan")
                rows.append(row)

    print(f"{'size':>6} {'variant':>9} {'dtype':>9} {'time':>10} {'x convs':>8} {'peak/out':>9} {'ns/px':>8}")
    for row in rows:
        floor = next(
            (r for r in rows if (r["size"], r["dtype"], r["variant"]) == (row["size"], row["dtype"], "convs")), None
        )
        row["time_vs_convs"] = row["time_s"] / floor["time_s"] if floor else float("nan")
        row["peak_vs_output"] = row["peak_bytes"] / row["output_bytes"]
        row["peak_vs_features"] = row["peak_bytes"] / row["feature_bytes"]
        row["ns_per_pixel"] = row["time_s"] / row["output_pixels"] * 1e9
        time_text = f"{row['time_s'] * 1e3:>8.2f}ms" if args.device != "cpu" else f"{row['time_s']:>9.3f}s"
        note = (
            f"  (peak = {row['peak_vs_features']:.3f}x the pixel-dense features)" if row["variant"] == "tiled" else ""
        )
        print(
            f"{row['size']:>5}px {row['variant']:>9} {row['dtype']:>9} {time_text} {row['time_vs_convs']:>7.2f}x "
            f"{row['peak_vs_output']:>8.2f}x {row['ns_per_pixel']:>8.1f}{note}"
        )
    if args.json:
        meta = {"device": args.device, "threads": args.threads, "iters": args.iters, "tile": args.tile}
        with open(args.json, "w") as fh:
            json.dump({**meta, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
