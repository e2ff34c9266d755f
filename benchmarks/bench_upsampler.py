"""Time and peak memory of the UPLiFT upsampler alone (dinov2_s14 architecture, random weights, batch 1).

Variants, each measured in a fresh subprocess so peak-memory readings do not mix:

* ``featlift``: the library's default path.
* ``plain``: the same network with the plain attender formulation (all n shifted copies stacked).
* ``convs``: the network's convolutions alone, the attender replaced by a nearest upsample (the floor).

Times are medians over ``--repeats`` calls after one warm-up call. Peak memory is the most any one call
raised the process's RSS above where it started (CPU: the Linux peak-RSS mark, reset before each call
through /proc/self/clear_refs) or ``torch.cuda.max_memory_allocated`` above the allocation before the
call (GPU), reported as a multiple of the output tensor's bytes. Compare figures as ratios within one run.

    python benchmarks/bench_upsampler.py --sizes 224 448 --threads 2 --json bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

VARIANTS = ("featlift", "plain", "convs")


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


_HWM_RESETTABLE = None


def _reset_peak_rss() -> int:
    """Reset the process's peak-RSS mark to its current RSS (Linux clear_refs) and return that RSS.

    Where the mark cannot be reset, fall back to the lifetime peak, which can only overstate growth.
    """
    global _HWM_RESETTABLE
    import resource

    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        _HWM_RESETTABLE = True
        return _status_bytes("VmRSS")
    except OSError:
        _HWM_RESETTABLE = False
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak_rss() -> int:
    import resource

    if _HWM_RESETTABLE:
        return _status_bytes("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _worker(args: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F

    import featlift

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    model = featlift.build_upsampler("dinov2_s14", device=device, dtype=dtype)
    if args.variant == "plain":
        model.attender.impl = "reference"
    elif args.variant == "convs":
        # Everything but the weighted sum runs (logits included); the sum becomes a nearest upsample.
        model.attender.attend = lambda logits, values: F.interpolate(values, size=logits.shape[-2:], mode="nearest")

    cells = args.size // 14
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, cells * 14, cells * 14, generator=gen).to(device, dtype)
    features = torch.randn(1, 384, cells, cells, generator=gen).to(device, dtype)
    out_side = cells * 2**args.iters
    out_bytes = 384 * out_side * out_side * torch.finfo(dtype).bits // 8

    def call():
        with torch.inference_mode():
            return model(image, features, iters=args.iters)

    times = []
    if device.type == "cuda":
        call()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _ in range(args.repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = call()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000)
            del out
        peak = torch.cuda.max_memory_allocated() - base
    else:
        call()  # warm-up: one-time allocations (thread pools, oneDNN primitives) are not the call's cost
        peaks = []
        for _ in range(args.repeats):
            base = _reset_peak_rss()
            t0 = time.perf_counter()
            out = call()
            times.append(time.perf_counter() - t0)
            peaks.append(_peak_rss() - base)
            del out
        peak = max(peaks)
    return {
        "size": args.size,
        "variant": args.variant,
        "time_s": statistics.median(times),
        "peak_bytes": peak,
        "output_bytes": out_bytes,
        "output_pixels": out_side * out_side,
    }


def _worker_env() -> dict:
    """glibc keeps freed blocks below its (dynamic) mmap threshold in the heap, so RSS would carry the
    previous call's memory. A fixed 128 KiB threshold maps every tensor-sized block and unmaps it on
    free: RSS then tracks live memory and the peak is the call's own."""
    env = dict(os.environ)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--iters", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument(
        "--max-plain-size",
        type=int,
        default=448,
        help="skip the plain variant above this size (it needs n x the output)",
    )
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(_worker(args)))
        return

    rows = []
    for size in args.sizes:
        for variant in args.variants:
            if variant == "plain" and size > args.max_plain_size:
                continue
            cmd = [sys.executable, __file__, "--worker", "--size", str(size), "--variant", variant]
            cmd += ["--iters", str(args.iters), "--threads", str(args.threads), "--repeats", str(args.repeats)]
            cmd += ["--device", args.device, "--dtype", args.dtype]
            result = subprocess.run(cmd, capture_output=True, text=True, env=_worker_env())
            if result.returncode != 0:
                print(f"{size}px {variant}: failed\n{result.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))

    print(f"{'size':>6} {'variant':>9} {'time':>10} {'x convs':>8} {'peak/out':>9} {'ns/px':>8}")
    for row in rows:
        floor = next((r for r in rows if r["size"] == row["size"] and r["variant"] == "convs"), None)
        ratio = row["time_s"] / floor["time_s"] if floor else float("nan")
        row["time_vs_convs"] = ratio
        row["peak_vs_output"] = row["peak_bytes"] / row["output_bytes"]
        row["ns_per_pixel"] = row["time_s"] / row["output_pixels"] * 1e9
        print(
            f"{row['size']:>5}px {row['variant']:>9} {row['time_s']:>9.3f}s {ratio:>7.2f}x "
            f"{row['peak_vs_output']:>8.2f}x {row['ns_per_pixel']:>8.1f}"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "device": args.device,
                    "dtype": args.dtype,
                    "threads": args.threads,
                    "iters": args.iters,
                    "rows": rows,
                },
                fh,
                indent=2,
            )


if __name__ == "__main__":
    main()
