"""Seconds per request of the featlift demo (``featlift demo``), with random weights (nothing downloaded).

Two readings on one picture (the demo's "garden" example resized to ``--size`` px square):

* ``engine``: the demo's computation in-process, in a worker thread as in the app (``DemoEngine.upsample``: read the file, upsample,
  PCA pictures, keep the features for clicks), and the upsampler call alone within it; then one click
  (``DemoEngine.similarity``: both similarity maps).
* ``http``: the whole request through the running app from ``gradio_client`` (upload, queue, the same
  computation, PNG encoding, download), unless ``--no-http``.

Medians over ``--repeats`` requests after one warm-up request.

    python benchmarks/bench_demo.py                         # dinov2_s14 architecture, 448 px, CPU
    python benchmarks/bench_demo.py --size 896 --device cuda --json demo.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dinov2_s14", help="registered name or model dir (random weights)")
    parser.add_argument("--size", type=int, default=448, help="picture side in pixels")
    parser.add_argument("--output", default="own size", choices=["own size", "native", "max side"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-http", action="store_true", help="skip the reading through the web app")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()

    temp = tempfile.mkdtemp(prefix="featlift-bench-demo-")

    import torch

    import featlift
    from featlift.demo import DemoEngine
    from featlift.demo._pictures import example_images

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    up = featlift.load_upsampler(args.model, pretrained=False, device=args.device)
    photo = Path(temp) / "picture.png"
    example_images()["garden"].resize((args.size, args.size)).save(photo)
    engine = DemoEngine(up)

    def engine_readings():
        engine.upsample(photo, args.output)  # warm-up
        requests, calls, clicks = [], [], []
        for _ in range(args.repeats):
            result = engine.upsample(photo, args.output)
            requests.append(result.total_seconds)
            calls.append(result.seconds)
            start = time.perf_counter()
            engine.similarity(result.token, args.size // 3, args.size // 2)
            clicks.append(time.perf_counter() - start)
        return result, requests, calls, clicks

    # In a worker thread, as the app runs requests (on a busy CPU, torch in the main thread can run
    # markedly slower than in a worker thread, so the two readings would not compare otherwise).
    with ThreadPoolExecutor(1) as pool:
        result, requests, calls, clicks = pool.submit(engine_readings).result()
    report = {
        "model": args.model,
        "weights": "random",
        "size": args.size,
        "output": args.output,
        "output_shape": list(result.output_shape),
        "device": str(up.device),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "engine_request_s": statistics.median(requests),
        "upsampler_call_s": statistics.median(calls),
        "click_s": statistics.median(clicks),
        "peak_bytes": result.peak_bytes,
        "estimate_bytes": result.estimate_bytes,
    }

    if not args.no_http:
        from gradio_client import Client, handle_file

        from featlift.demo import build_app

        app = build_app(up, folder=temp)
        try:
            _, url, _ = app.launch(server_port=_free_port(), prevent_thread_lock=True, quiet=True)
            client = Client(url, verbose=False, download_files=temp)
            client.predict(handle_file(str(photo)), args.output, api_name="/upsample")  # warm-up
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                client.predict(handle_file(str(photo)), args.output, api_name="/upsample")
                times.append(time.perf_counter() - start)
            report["http_request_s"] = statistics.median(times)
        finally:
            app.close()

    print(
        f"{args.model} (random weights), {args.size}x{args.size} px, output {args.output} "
        f"{report['output_shape']}, {report['device']}, {report['threads']} threads "
        f"({report['cpu_count']} CPUs), median of {args.repeats}:"
    )
    print(f"  upsampler call        {report['upsampler_call_s']:.2f} s")
    print(f"  demo request (engine) {report['engine_request_s']:.2f} s")
    if "http_request_s" in report:
        print(f"  demo request (HTTP)   {report['http_request_s']:.2f} s   <- seconds per request")
    print(f"  click (two maps)      {report['click_s']:.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
