"""``featlift demo``: parse the options, load the model, serve the page (:func:`featlift.demo.serve`)."""

from __future__ import annotations

import argparse

from ._args import add_model, add_runtime, at_least, number_above, positive_int

NAME = "demo"
HELP = "a local web page: upload a picture, compare featlift with bilinear (needs featlift[demo])"
DESCRIPTION = (
    "Serves a Gradio page: upload a picture (or pick an example) and see the backbone's bilinear features "
    "and featlift's pixel-dense features side by side (one PCA basis), click a pixel for cosine-similarity "
    "maps. The API endpoint /upsample does the same from gradio_client. Binds 127.0.0.1 unless --host "
    'says otherwise. Needs gradio: pip install "featlift[demo]".'
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model(parser)
    add_runtime(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=at_least(0, below=65536), default=7860, help="port (default 7860)")
    parser.add_argument(
        "--max-pixels",
        type=positive_int,
        default=1024 * 1024,
        help="pictures with more pixels are downscaled to this (default 1048576 = 1024x1024)",
    )
    parser.add_argument("--max-upload-mb", type=number_above(0), default=20.0, help="largest upload in MB (default 20)")
    parser.add_argument(
        "--folder",
        default=None,
        help="where uploads and results go; only its files are served (default: a new temporary folder, "
        "removed on exit)",
    )


def run(args: argparse.Namespace) -> int:
    from ..errors import require

    require("gradio", feature="the featlift demo", extra="demo")  # before the model is loaded (or downloaded)
    from .._builder import load_upsampler
    from ..demo._serve import serve
    from ._args import load_options, torch_dtype

    up = load_upsampler(args.model, device=args.device, dtype=torch_dtype(args), options=load_options(args))

    def ready(url: str) -> None:
        print(f"featlift demo of {args.model} on {up.device}: {url}  (Ctrl+C to stop)", flush=True)

    serve(
        up,
        host=args.host,
        port=args.port,
        folder=args.folder,
        max_pixels=args.max_pixels,
        max_file_bytes=int(args.max_upload_mb * 1e6),
        on_ready=ready,
    )
    return 0
