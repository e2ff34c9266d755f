"""The memory guard's estimate against the measured peak of real ``Upsampler`` calls (CPU).

Each case runs in a fresh subprocess with glibc's mmap threshold fixed at 128 KiB, so that freed tensors
leave RSS at once and RSS tracks live memory. The measured figure is the rise of the peak-RSS mark
(reset through /proc/self/clear_refs) above the RSS at the start of the call, after one warm-up call
on a small image. The guard is useful when ``estimate / measured`` is at least 1 (it does not let a call
through that then runs out of memory) and not much more (it does not refuse calls that would fit).

    python benchmarks/bench_memory.py                 # all cases
    python benchmarks/bench_memory.py --cases dinov2-448-own vae-256-native
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

# name: (model, image size, output size ("own", "native"), tile, head classes, dtype)
CASES = {
    "dinov2-448-native": ("dinov2_s14", 448, "native", None, 0, "float32"),
    "dinov2-448-own": ("dinov2_s14", 448, "own", None, 0, "float32"),
    "dinov2-301x227-own": ("dinov2_s14", (227, 301), "own", None, 0, "float32"),
    "dinov2-896-native": ("dinov2_s14", 896, "native", None, 0, "float32"),
    "dinov2-896-tiled-head": ("dinov2_s14", 896, "own", 16, 21, "float32"),
    "dinov2-448-own-bf16": ("dinov2_s14", 448, "own", None, 0, "bfloat16"),
    "dinov2-448-native-bf16": ("dinov2_s14", 448, "native", None, 0, "bfloat16"),
    "dinov3-512-own": ("dinov3_splus16", 512, "own", None, 0, "float32"),
    "vae-256-native": ("sd15_vae", 256, "native", None, 0, "float32"),
}


def _worker(name: str, threads: int) -> dict:
    import torch

    import featlift
    from featlift._peak_memory import PeakMemory

    torch.set_num_threads(threads)
    model, size, output, tile, classes, dtype = CASES[name]
    torch.manual_seed(0)
    up = featlift.load_upsampler(model, pretrained=False, device="cpu", dtype=getattr(torch, dtype))
    h, w = (size, size) if isinstance(size, int) else size
    image = torch.rand(3, h, w)
    head = torch.nn.Conv2d(up.uplift.channels, classes, 1).to(up.dtype) if classes else None
    kwargs = {"output_size": "native" if output == "native" else None, "tile": tile, "head": head}
    up(torch.rand(3, 56, 56), **kwargs)  # warm-up: lazy initialisation stays out of the reading
    estimate = up.estimate_memory(1, (h, w), **kwargs)
    with PeakMemory("cpu") as peak:
        out = up(image, **kwargs)
    if peak.peak is None:
        sys.exit("bench_memory measures peak memory through Linux's /proc/self/clear_refs; run it on Linux")
    measured = peak.peak
    return {
        "case": name,
        "output_shape": list(out.shape),
        "estimate": estimate.total,
        "measured": measured,
        "ratio": estimate.total / measured,
        "parts": estimate.parts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, args.threads)))
        return
    rows = []
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "HF_HUB_OFFLINE": "1"}
    print(f"{'case':24} {'output':>22} {'measured':>10} {'estimate':>10} {'estimate/measured':>18}")
    for name in args.cases:
        cmd = [sys.executable, __file__, "--worker", name, "--threads", str(args.threads)]
        result = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            print(f"{name:24} failed: {result.stderr.strip().splitlines()[-1]}")
            continue
        row = json.loads(result.stdout.strip().splitlines()[-1])
        rows.append(row)
        shape = "x".join(map(str, row["output_shape"]))
        print(
            f"{name:24} {shape:>22} {row['measured'] / 1e6:>8.0f}MB {row['estimate'] / 1e6:>8.0f}MB "
            f"{row['ratio']:>18.2f}"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
