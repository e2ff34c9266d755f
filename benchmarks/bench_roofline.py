"""The upsampler against the machine's own roofline: float32 and bfloat16 in one run.

One process measures, round-robin (so drift on a shared machine hits every figure alike):

* the machine's matrix-product rate in float32 and in bfloat16 (``--matmul-size`` square matrices):
  the roofline, what this device's compute units deliver on the friendliest work there is;
* the featlift upsampler (dinov2_s14 architecture, random weights, batch 1, ``--iters`` 2x steps) at
  ``--size`` px in float32 and bfloat16, and the same network's convolutions alone (``convs``: the
  attender's weighted sum replaced by a nearest upsample, as in ``bench_upsampler.py``).

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` on one float32 call, by part of the network,
plus what it cannot see: the attender's weighted sum runs inside the custom op ``featlift::local_attend``,
so it is counted by hand from the shapes of each call, 2*n*C per output pixel (n multiplies and n adds
per channel) plus 5*n for the softmax (max, subtract, exp, sum, divide). Each time is then read as an
achieved rate (GFLOP/s) and as a share of the roofline of its own dtype, printed as markdown tables.
The attender's part is memory-bound, so a share well under 100% is expected there; the convolutions
are where bfloat16 hardware (AMX, AVX512-BF16, tensor cores) should show. On CUDA the float32 matmul
runs without TF32 (PyTorch's default) while cuDNN's float32 convolutions use it (also the default), so
a float32 share can pass 100%: the table adds the matmul rate with TF32 allowed to compare them with.

    python benchmarks/bench_roofline.py                          # 448 px, CPU, torch's thread count
    python benchmarks/bench_roofline.py --threads 16 --json roofline.json
    python benchmarks/bench_roofline.py --profile                # + self time by op of one bf16 call
    python benchmarks/bench_roofline.py --onednn-verbose         # + which oneDNN kernel each conv got
    python benchmarks/bench_roofline.py --device cuda            # GPU: cuBLAS/cuDNN rates as the roofline

``--profile`` prints a ``torch.profiler`` table (self CPU time by op; self device time on CUDA) of one
bfloat16 featlift call made after the warm-ups.

Which kernel each convolution gets (CPU): oneDNN describes every primitive it runs when the environment
variable ``ONEDNN_VERBOSE=1`` is set, one CSV line per execution on stdout, for example::

    onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core_amx,forward_training,src:bf16::blocked:acdb::f0 ...,mb1_ic64oc64_ih256oh256kh3...,1.23

where the seventh field is the implementation (``brg_conv_fwd:avx512_core_amx``: AMX tiles;
``...:avx512_core_bf16``: AVX512-BF16; ``jit:avx512_core`` or ``gemm:ref``: no bfloat16 hardware) and
the last one the time in ms. By hand::

    ONEDNN_VERBOSE=1 python benchmarks/bench_roofline.py --repeats 1 --dtypes bfloat16 | grep ',exec,cpu,convolution'

(the log then covers the warm-ups and the FLOP-counting call too). ``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16``
(or ``AVX512_CORE``) keeps oneDNN off AMX (or off bfloat16 instructions) for a comparison.
``--onednn-verbose`` does this for you: per dtype it runs one child process that makes one warm-up call,
then one call with oneDNN's verbose mode on (``torch.backends.mkldnn.verbose``, the same switch as the
variable), and summarises the log: executions and time per primitive and implementation, and how many
of the network's convolutions (counted as PyTorch dispatches them) ran outside oneDNN (they do not
appear in its log: PyTorch's own kernels).

Noise: on a machine shared with other work, read the figures as ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from collections import defaultdict

from _common import Stopwatch, build_variant, random_inputs, synchronize

DTYPES = ("float32", "bfloat16")
SOFTMAX_FLOPS_PER_LOGIT = 5  # max, subtract, exp, sum, divide
CONV_PRIMITIVES = ("convolution", "deconvolution")  # oneDNN's kinds for a convolution (transposed too)
# The ATen ops a convolution reaches the dispatcher as (conv2d under inference mode, convolution otherwise).
ATEN_CONVOLUTIONS = frozenset(
    {"convolution", "_convolution", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d"}
)


# -- FLOPs ------------------------------------------------------------------------------------------


def attend_flops(logits_shape, values_shape) -> int:
    """FLOPs of one ``local_attend`` call counted by hand: per output pixel, 2*n*C for the weighted sum
    and SOFTMAX_FLOPS_PER_LOGIT * n for the softmax. Shapes [B, n, H, W] and [B, C, h, w]."""
    b, n, h, w = logits_shape
    c = values_shape[1]
    return b * h * w * (2 * n * c + SOFTMAX_FLOPS_PER_LOGIT * n)


def count_flops(model, image, features, iters: int) -> dict:
    """FLOPs of one inference call of a featlift ``UPLiFT`` ``model``.

    Returns ``parts`` (label -> FLOPs: FlopCounterMode's count per top-level part of the network, plus
    the attender's weighted sum counted by hand), ``counted`` (FlopCounterMode's total), ``by_hand``
    and ``total``.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    attender = model.attender
    shapes = []
    shadowed = vars(attender).get("attend")
    original = attender.attend

    def recording(logits, values, channels_last=False):
        shapes.append((tuple(logits.shape), tuple(values.shape)))
        return original(logits, values, channels_last=channels_last)

    attender.attend = recording
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(image, features, iters=iters)
    finally:
        if shadowed is None:
            del attender.attend
        else:
            attender.attend = shadowed
    parts = {f"{name} (FlopCounterMode)": flops for name, flops in _by_part(counter.get_flop_counts()).items()}
    counted = counter.get_total_flops()
    if counted != sum(parts.values()):
        parts["outside any module (FlopCounterMode)"] = counted - sum(parts.values())
    by_hand = sum(attend_flops(lg, v) for lg, v in shapes)
    parts["attender weighted sum + softmax (by hand)"] = by_hand
    return {"parts": parts, "counted": counted, "by_hand": by_hand, "total": counted + by_hand}


def _by_part(counts: dict[str, dict]) -> dict[str, int]:
    """FLOPs per top-level part of the network from FlopCounterMode's per-module counts.

    Those counts are inclusive (a module's holds its submodules') and list only modules whose
    ``forward`` ran: the attender's 1x1 conv appears as ``UPLiFT.attender.to_logits`` without an
    ``UPLiFT.attender``, because the model calls ``attender.logits``. So each module's own share is its
    count minus those of the nearest listed modules below it, and the shares are summed by the second
    component of the name (the root module's own share as "NAME itself")."""
    inclusive = {name: sum(by_op.values()) for name, by_op in counts.items() if name != "Global"}

    def parent(name: str) -> str | None:
        while "." in name:
            name = name.rsplit(".", 1)[0]
            if name in inclusive:
                return name
        return None

    own = dict(inclusive)
    for name, flops in inclusive.items():
        above = parent(name)
        if above is not None:
            own[above] -= flops
    parts: dict[str, int] = defaultdict(int)
    for name, flops in own.items():
        parts[name.split(".")[1] if "." in name else f"{name} itself"] += flops
    return {name: flops for name, flops in parts.items() if flops}


# -- oneDNN's verbose log ---------------------------------------------------------------------------


def parse_onednn_line(line: str) -> dict | None:
    """One primitive execution from a oneDNN verbose line (v3 ``onednn_verbose,v1,primitive,exec,...``,
    with or without a timestamp, or v2 ``dnnl_verbose,exec,...``): kind, implementation, source dtype
    and time in ms. None for every other line (creation, info, graph API, program output)."""
    fields = line.strip().split(",")
    if not fields or fields[0] not in ("onednn_verbose", "dnnl_verbose") or "exec" not in fields:
        return None
    at = fields.index("exec")
    if "graph" in fields[1:at] or len(fields) < at + 6:
        return None
    src = re.search(r"\bsrc[_:]([a-z0-9]+)", fields[at + 5])
    try:
        ms = float(fields[-1])
    except ValueError:
        return None
    return {"kind": fields[at + 2], "impl": fields[at + 3], "src": src.group(1) if src else "?", "ms": ms}


def summarise_onednn(lines) -> list[dict]:
    """Executions grouped by (kind, implementation, source dtype): calls and total ms, most time first
    (ties in name order)."""
    groups: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for line in lines:
        found = parse_onednn_line(line)
        if found is not None:
            groups[(found["kind"], found["impl"], found["src"])].append(found["ms"])
    rows = [
        {"kind": kind, "impl": impl, "src": src, "calls": len(ms), "ms": sum(ms)}
        for (kind, impl, src), ms in groups.items()
    ]
    return sorted(rows, key=lambda r: (-r["ms"], r["kind"], r["impl"], r["src"]))


def _onednn_child(args: argparse.Namespace) -> None:
    """One warm-up call, then one call with oneDNN's verbose log on; the last stdout line is JSON with
    the number of convolutions PyTorch dispatched in that second call (any of ATEN_CONVOLUTIONS)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountConvolutions(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ in ATEN_CONVOLUTIONS:
                CountConvolutions.calls += 1
            return func(*args, **(kwargs or {}))

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype_one)
    model, _ = build_variant("featlift", "cpu", dtype)
    image, features = random_inputs(args.size, "cpu", dtype)
    with torch.inference_mode():
        model(image, features, iters=args.iters)
        sys.stdout.flush()
        with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON), CountConvolutions():
            model(image, features, iters=args.iters)
    print(json.dumps({"torch_convolutions": CountConvolutions.calls}), flush=True)


def _onednn_report(args: argparse.Namespace, dtype: str) -> dict:
    cmd = [sys.executable, __file__, "--onednn-child", "--dtype-one", dtype, "--size", str(args.size)]
    cmd += ["--iters", str(args.iters)] + (["--threads", str(args.threads)] if args.threads else [])
    result = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if result.returncode != 0:
        raise RuntimeError(f"the oneDNN verbose run ({dtype}) failed:\n{result.stderr[-2000:]}")
    lines = result.stdout.splitlines()
    rows = summarise_onednn(lines)
    dispatched = json.loads(lines[-1])["torch_convolutions"]
    in_onednn = sum(r["calls"] for r in rows if r["kind"] in CONV_PRIMITIVES)
    return {"dtype": dtype, "rows": rows, "torch_convolutions": dispatched, "onednn_convolutions": in_onednn}


def _print_onednn(report: dict) -> None:
    total = sum(r["ms"] for r in report["rows"]) or float("nan")
    print(f"\noneDNN primitives in one {report['dtype']} call (after a warm-up call):\n")
    print("| primitive | implementation | src dtype | executions | time (ms) | share of oneDNN time |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for r in report["rows"]:
        print(f"| {r['kind']} | `{r['impl']}` | {r['src']} | {r['calls']} | {r['ms']:.1f} | {r['ms'] / total:.1%} |")
    outside = report["torch_convolutions"] - report["onednn_convolutions"]
    print(
        f"\n{report['torch_convolutions']} convolutions dispatched by PyTorch; {report['onednn_convolutions']} "
        f"oneDNN (de)convolution executions; {max(outside, 0)} convolutions ran outside oneDNN (PyTorch's own kernels)."
    )


# -- the run ----------------------------------------------------------------------------------------


def _machine(device) -> str:
    import torch

    import featlift

    parts = [f"torch {torch.__version__}", f"device {device}"]
    if device.type == "cuda":
        parts.append(torch.cuda.get_device_name(device))
        parts.append(
            f"TF32 matmul {torch.backends.cuda.matmul.allow_tf32}, TF32 cuDNN {torch.backends.cudnn.allow_tf32}"
        )
    else:
        parts.append(f"{torch.get_num_threads()} threads")
        parts.append(f"ATen CPU capability {torch.backends.cpu.get_cpu_capability()}")
        parts.append(f"featlift.cpu_supports_bf16() {featlift.cpu_supports_bf16()}")
    return ", ".join(parts)


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _seconds(t: float, device) -> str:
    return f"{t * 1e3:.2f} ms" if device.type == "cuda" or t < 0.1 else f"{t:.3f} s"


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=448, help="input side in px (rounded down to whole patches)")
    parser.add_argument("--iters", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    parser.add_argument("--variants", nargs="+", default=["featlift", "convs"], choices=["featlift", "convs"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--matmul-size", type=int, default=4096)
    parser.add_argument(
        "--matmul-loops", type=int, default=None, help="products per timed reading (default: 1 on CPU, 20 on CUDA)"
    )
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table of one bf16 call")
    parser.add_argument("--profile-rows", type=int, default=25)
    parser.add_argument("--onednn-verbose", action="store_true", help="summarise oneDNN's kernels per dtype (CPU)")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--onednn-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dtype-one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.onednn_child:
        _onednn_child(args)
        return None

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.onednn_verbose and device.type != "cpu":
        parser.error("--onednn-verbose reads oneDNN's CPU kernels; run it with --device cpu")
    loops = args.matmul_loops or (20 if device.type == "cuda" else 1)
    machine = _machine(device)
    print(machine)

    flops_model, _ = build_variant("featlift", device, torch.float32)
    image, features = random_inputs(args.size, device, torch.float32)
    flops = count_flops(flops_model, image, features, args.iters)
    del flops_model
    side = features.shape[-1] * 2**args.iters
    conv_flops = flops["counted"]

    # what is timed: (name, dtype) -> a call
    calls = {}
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        gen = torch.Generator().manual_seed(1)
        a, b = (torch.randn(args.matmul_size, args.matmul_size, generator=gen).to(device, dtype) for _ in range(2))

        def matmul(a=a, b=b):
            for _ in range(loops):
                torch.mm(a, b)

        calls[("matmul", dtype_name)] = matmul
        if device.type == "cuda" and dtype_name == "float32":

            def matmul_tf32(matmul=matmul):
                allowed = torch.backends.cuda.matmul.allow_tf32
                torch.backends.cuda.matmul.allow_tf32 = True
                try:
                    matmul()
                finally:
                    torch.backends.cuda.matmul.allow_tf32 = allowed

            calls[("matmul TF32", dtype_name)] = matmul_tf32
        inputs = random_inputs(args.size, device, dtype)
        for variant in args.variants:
            model, _ = build_variant(variant, device, dtype)

            def run(model=model, inputs=inputs):
                with torch.inference_mode():
                    return model(*inputs, iters=args.iters)

            calls[(variant, dtype_name)] = run

    for call in calls.values():  # warm-up: thread pools, oneDNN primitives, cuDNN plans, Triton kernels
        call()
    synchronize(device)
    times = {key: [] for key in calls}
    for _ in range(args.repeats):
        for key, call in calls.items():
            with Stopwatch(device) as watch:
                call()
            times[key].append(watch.seconds)
    median = {key: statistics.median(t) for key, t in times.items()}
    matmul_flops = 2 * args.matmul_size**3 * loops
    roof = {d: matmul_flops / median[("matmul", d)] for d in args.dtypes}
    work = {"featlift": flops["total"], "convs": conv_flops}

    header = ("", *args.dtypes) + (("bfloat16 speed / float32 speed",) if len(args.dtypes) == 2 else ())

    def row(label, values, ratio=None):
        return (label, *values) + ((ratio,) if len(args.dtypes) == 2 else ())

    rows = [
        row(
            f"matmul {args.matmul_size}x{args.matmul_size}: GFLOP/s (the roofline)",
            [f"{roof[d] / 1e9:.1f}" for d in args.dtypes],
            f"{roof.get('bfloat16', 0) / roof.get('float32', 1):.2f}x",
        )
    ]
    results = {"roofline_gflops": {d: roof[d] / 1e9 for d in args.dtypes}, "variants": {}}
    if ("matmul TF32", "float32") in median:  # what cuDNN's float32 convolutions use unless TF32 is off
        tf32 = matmul_flops / median[("matmul TF32", "float32")]
        values = [f"{tf32 / 1e9:.1f}" if d == "float32" else "-" for d in args.dtypes]
        rows.append(row("matmul with TF32 allowed: GFLOP/s", values, ""))
        results["roofline_gflops"]["float32 TF32"] = tf32 / 1e9
    for variant in args.variants:
        t = {d: median[(variant, d)] for d in args.dtypes}
        rate = {d: work[variant] / t[d] for d in args.dtypes}
        speedup = f"{t.get('float32', 0) / t.get('bfloat16', 1):.2f}x" if len(args.dtypes) == 2 else None
        name = f"{variant} {side}x{side} ({work[variant] / 1e9:.1f} GFLOP)"
        rows.append(row(f"{name}: time", [_seconds(t[d], device) for d in args.dtypes], speedup))
        rows.append(row(f"{name}: GFLOP/s", [f"{rate[d] / 1e9:.1f}" for d in args.dtypes], ""))
        rows.append(row(f"{name}: share of the roofline", [f"{rate[d] / roof[d]:.1%}" for d in args.dtypes], ""))
        results["variants"][variant] = {
            "flops": work[variant],
            "time_s": t,
            "times_s": {d: times[(variant, d)] for d in args.dtypes},
            "gflops": {d: rate[d] / 1e9 for d in args.dtypes},
            "share_of_roofline": {d: rate[d] / roof[d] for d in args.dtypes},
        }
    print(
        f"\n{args.size} px input ({features.shape[-1]}x{features.shape[-1]} cells), {args.iters} iterations, "
        f"median of {args.repeats} round-robin readings:\n"
    )
    print(_table(rows, header))
    part_rows = [(label, f"{f / 1e9:.2f}", f"{f / flops['total']:.1%}") for label, f in flops["parts"].items()]
    part_rows.append(("total", f"{flops['total'] / 1e9:.2f}", "100%"))
    print("\nFLOPs of one call, by part:\n")
    print(_table(part_rows, ("part", "GFLOP", "share")))
    results.update(
        size=args.size,
        iters=args.iters,
        device=str(device),
        machine=machine,
        repeats=args.repeats,
        matmul_size=args.matmul_size,
        flops=flops,
    )

    if args.profile:
        profile_dtype = "bfloat16" if "bfloat16" in args.dtypes else args.dtypes[0]
        print(f"\ntorch.profiler, one {profile_dtype} {args.variants[0]} call after the warm-ups:\n")
        print(_profile(calls[(args.variants[0], profile_dtype)], device, args.profile_rows))
    if args.onednn_verbose:
        results["onednn"] = [_onednn_report(args, d) for d in args.dtypes]
        for report in results["onednn"]:
            _print_onednn(report)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return results


def _profile(call, device, rows: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        call()
        synchronize(device)
    sort_by = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort_by, row_limit=rows)


if __name__ == "__main__":
    main()
