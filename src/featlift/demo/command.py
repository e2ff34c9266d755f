"""The ``featlift demo`` subcommand: parse the options, load the model, serve the page
(:func:`featlift.demo.serve`).

Imported by the CLI for every command, so it imports neither gradio nor torch at module level.
"""

from __future__ import annotations

import argparse

from .._tensors import DTYPE_NAMES
from ..errors import ConfigError


def _run(args: argparse.Namespace) -> int:
    from . import _require_gradio, serve

    if args.max_pixels < 1:
        raise ConfigError(f"--max-pixels must be a positive number of pixels, got {args.max_pixels}")
    if args.max_upload_mb <= 0:
        raise ConfigError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    _require_gradio()  # before the model is loaded (or downloaded)
    from .._tensors import to_dtype
    from ..builder import load_upsampler

    up = load_upsampler(
        args.model,
        device=args.device,
        dtype=to_dtype(args.dtype),
        weights=args.weights,
        backbone_weights=args.backbone_weights,
        pretrained=not args.no_pretrained,
    )

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


def add_parser(sub) -> None:
    """Register ``featlift demo`` on the CLI's subparsers."""
    p = sub.add_parser(
        "demo",
        help="a local web page: upload a picture, compare featlift with bilinear (needs featlift[demo])",
        description=(
            "Serves a Gradio page: upload a picture (or pick an example) and see the backbone's bilinear features "
            "and featlift's pixel-dense features side by side (one PCA basis), click a pixel for cosine-similarity "
            "maps. The API endpoint /upsample does the same from gradio_client. Binds 127.0.0.1 unless --host "
            'says otherwise. Needs gradio: pip install "featlift[demo]".'
        ),
    )
    p.add_argument("--model", default="dinov2_s14", help="registered name, local model dir or Hub repo id")
    p.add_argument("--weights", default=None, help="local UPLiFT weights instead of the download")
    p.add_argument("--backbone-weights", default=None, help="local backbone weights instead of the download")
    p.add_argument("--no-pretrained", action="store_true", help="random weights (testing only)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--dtype", default="float32", choices=DTYPE_NAMES)
    p.add_argument(
        "--max-pixels",
        type=int,
        default=1024 * 1024,
        help="pictures with more pixels are downscaled to this (default 1048576 = 1024x1024)",
    )
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload in MB (default 20)")
    p.add_argument(
        "--folder",
        default=None,
        help="where uploads and results go; only its files are served (default: a new temporary folder, "
        "removed on exit)",
    )
    p.set_defaults(func=_run)
