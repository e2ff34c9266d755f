"""CPU time of the exported ONNX upsampler in ONNX Runtime against featlift's own PyTorch path.

The dinov2_s14 architecture with random weights (the weights do not change the time) is exported with
:func:`featlift.export.export_onnx` (or ``--onnx FILE`` is read), then, per size, both run on the same
random inputs in one process, round-robin, so machine drift hits them alike:

* ``featlift``: ``UPLiFT(image, features)`` under ``torch.inference_mode()``: the lean inference path with
  the library's CPU default for the local attend (``impl="auto"``: the embedding-bag path);
* ``onnxruntime``: ``InferenceSession.run`` on the CPU execution provider, all graph optimisations on.

Both get ``--threads`` threads. Times are medians over ``--repeats`` calls after one warm-up call each;
the ratio is onnxruntime / featlift (below 1: ONNX Runtime is faster). The largest absolute difference of
the two outputs is printed too, as a sanity check of the export.

    python benchmarks/bench_export.py                           # 224 448 px, 2 threads, 4 iterations
    python benchmarks/bench_export.py --sizes 224 --threads 4 --json export.json
    python benchmarks/bench_export.py --save d.onnx; python benchmarks/bench_export.py --onnx d.onnx --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

CHANNELS = 384
PATCH = 14


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448], help="image sides in pixels")
    parser.add_argument("--iters", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument("--onnx", default=None, help="time this file (written by --save) instead of exporting afresh")
    parser.add_argument("--save", default=None, help="also keep the exported file here")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    import torch

    try:
        import onnxruntime as ort
    except ImportError:
        sys.exit('bench_export needs onnxruntime: pip install "featlift[export]"')

    import featlift
    from featlift.export import export_onnx

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # random weights (the time does not depend on them), the same in every run
    model = featlift.build_upsampler("dinov2_s14")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.onnx or args.save or Path(tmp) / "dinov2_s14.onnx")
        export_s = float("nan")
        if not args.onnx:
            t0 = time.perf_counter()
            export_onnx(model, path, iters=args.iters, opset=args.opset)
            export_s = time.perf_counter() - t0
            print(f"exported {path.name} in {export_s:.1f}s ({path.stat().st_size / 1e6:.1f} MB)")
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        rows = [_measure(model, session, size, args) for size in args.sizes]

    print(f"{'size':>6} {'output':>9} {'featlift':>10} {'onnxruntime':>12} {'ort/featlift':>13} {'max |diff|':>11}")
    for row in rows:
        print(
            f"{row['size']:>5}px {row['output_side']:>7}^2 {row['featlift_s']:>9.3f}s {row['onnxruntime_s']:>11.3f}s "
            f"{row['ratio']:>12.2f}x {row['max_abs_diff']:>11.2e}"
        )
    if args.json:
        meta = {"threads": args.threads, "iters": args.iters, "opset": args.opset, "export_s": export_s}
        with open(args.json, "w") as fh:
            json.dump({**meta, "onnxruntime": ort.__version__, "torch": torch.__version__, "rows": rows}, fh, indent=2)


def _measure(model, session, size: int, args: argparse.Namespace) -> dict:
    import torch

    cells = size // PATCH
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, cells * PATCH, cells * PATCH, generator=gen)
    features = torch.randn(1, CHANNELS, cells, cells, generator=gen)
    feed = {"image": image.numpy(), "features": features.numpy()}

    def run_featlift():
        with torch.inference_mode():
            return model(image, features, iters=args.iters)

    def run_ort():
        return session.run(None, feed)[0]

    want, got = run_featlift(), run_ort()  # warm-up: thread pools, oneDNN primitives, ORT's allocator
    diff = (torch.from_numpy(got) - want).abs().max().item()
    del want, got
    times = {"featlift": [], "onnxruntime": []}
    for _ in range(args.repeats):
        for name, call in (("featlift", run_featlift), ("onnxruntime", run_ort)):
            t0 = time.perf_counter()
            out = call()
            times[name].append(time.perf_counter() - t0)
            del out
    featlift_s, ort_s = statistics.median(times["featlift"]), statistics.median(times["onnxruntime"])
    return {
        "size": size,
        "output_side": cells * 2**args.iters,
        "featlift_s": featlift_s,
        "onnxruntime_s": ort_s,
        "ratio": ort_s / featlift_s,
        "times_s": times,
        "max_abs_diff": diff,
    }


if __name__ == "__main__":
    main()
