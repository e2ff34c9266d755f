"""The local-attend op alone: every implementation on the shapes of UPLiFT's last step, with the memory
traffic it achieves.

For each implementation it reports the median time and the effective bandwidth: the bytes the op must
move at least once (logits read, values read, output written) divided by the time. On CUDA it also
prints that bandwidth as a fraction of the device's theoretical peak (memory clock x bus width x 2).
Compare implementations within one run.

    python benchmarks/bench_attend.py                                  # CPU: bagged vs fused vs reference
    python benchmarks/bench_attend.py --device cuda --dtype bfloat16   # triton vs fused vs reference
    python benchmarks/bench_attend.py --device cuda:1                  # waits for and times cuda:1 itself

On CUDA the times come from events on the ``--device``'s own stream, read after synchronising that
device (not the current one; ``benchmarks/_common.py``).
"""

from __future__ import annotations

import argparse
import json
import statistics

from _common import Stopwatch


def _peak_bandwidth(device) -> float | None:
    import torch

    props = torch.cuda.get_device_properties(device)
    clock_khz = getattr(props, "memory_clock_rate", None)
    bus_bits = getattr(props, "memory_bus_width", None)
    if not clock_khz or not bus_bits:
        return None
    return 2 * clock_khz * 1e3 * bus_bits / 8  # double data rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--coarse", type=int, default=256, help="side of the coarse grid (256: a 448 px image)")
    parser.add_argument("--channels", type=int, default=384)
    parser.add_argument("--neighbourhood", type=int, default=17)
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--layout", default="auto", choices=["auto", "nchw", "channels_last"])
    parser.add_argument("--impls", nargs="+", default=None, help="default: every one that runs on the device")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    import torch

    from featlift.ops import local_attend, neighbourhood_offsets, triton_available

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    layout = args.layout
    if layout == "auto":  # what the model's plan uses: channels_last on CPU, NCHW on CUDA
        layout = "channels_last" if device.type == "cpu" else "nchw"
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    out_cl = layout == "channels_last"  # inputs and output in the same layout, as in the model
    h = w = args.coarse
    s, n = args.scale, args.neighbourhood
    values = torch.randn(args.batch, args.channels, h, w, device=device).to(dtype).contiguous(memory_format=fmt)
    logits = torch.randn(args.batch, n, h * s, w * s, device=device).to(dtype).contiguous(memory_format=fmt)
    offsets = neighbourhood_offsets(n)
    bagged = ["bagged"] if device.type == "cpu" else []  # every --dtype here is one it serves
    impls = args.impls or (["triton"] if triton_available(device) else []) + bagged + ["fused", "portable", "reference"]
    elem = values.element_size()
    moved = (logits.numel() + values.numel() + args.batch * args.channels * h * s * w * s) * elem

    rows = []
    reference = None
    for impl in impls:
        if impl == "reference" and values.numel() * n * s * s * 4 > 8 << 30:
            print(f"{impl:>10}: skipped (its stacked tensor would exceed 8 GiB)")
            continue
        with torch.inference_mode():
            out = local_attend(logits, values, offsets, s, impl=impl, channels_last=out_cl)
            times = []
            for _ in range(args.repeats):
                with Stopwatch(device) as watch:
                    out = local_attend(logits, values, offsets, s, impl=impl, channels_last=out_cl)
                times.append(watch.seconds)
        if reference is None:
            reference = out.float()
            err = 0.0
        else:
            err = (out.float() - reference).abs().max().item()
        t = statistics.median(times)
        row = {"impl": impl, "time_s": t, "bandwidth_gbs": moved / t / 1e9, "max_abs_diff_vs_first": err}
        if device.type == "cuda":
            peak = _peak_bandwidth(device)
            row["fraction_of_peak"] = moved / t / peak if peak else None
        rows.append(row)
        del out

    base = rows[-1]["time_s"] if rows else float("nan")
    print(f"shape: values {tuple(values.shape)} {layout}, logits {tuple(logits.shape)}, {args.dtype}, {device}")
    for row in rows:
        extra = f"  {row['fraction_of_peak']:.1%} of peak" if row.get("fraction_of_peak") else ""
        print(
            f"{row['impl']:>10}: {row['time_s'] * 1e3:9.2f} ms  {base / row['time_s']:7.1f}x vs {rows[-1]['impl']}  "
            f"{row['bandwidth_gbs']:8.1f} GB/s effective  max diff {row['max_abs_diff_vs_first']:.2e}{extra}"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
