"""``featlift export``: an upsampler as an ONNX model or a ``torch.export`` program."""

from __future__ import annotations

import argparse
from pathlib import Path

from .._tensors import DTYPE_NAMES
from ..errors import ConfigError
from ._args import add_iters, add_model, add_runtime, grid, int_at_least, load_options

FORMATS = {"onnx": ".onnx", "pt2": ".pt2"}


NAME = "export"
HELP = "export an upsampler as ONNX or a torch.export program (.pt2)"
DESCRIPTION = (
    "Writes MODEL's upsampler as an ONNX model (inputs 'image' [B,3,H,W] normalised for the backbone and "
    "'features' [B,C,H/p,W/p], output 'upsampled') or a torch.export ExportedProgram, dynamic in batch "
    "and spatial size. --with-backbone puts the backbone into the graph: then the only input is 'image', "
    "RGB in [0, 1]. The output is the upsampler's native grid, h * 2**iters by w * 2**iters."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model(parser, positional=True)
    parser.add_argument(
        "--format", choices=sorted(FORMATS), default=None, help="onnx or pt2 (default: from --out's suffix)"
    )
    parser.add_argument("--out", required=True, help="the file to write (.onnx or .pt2)")
    add_iters(parser)
    parser.add_argument("--opset", type=int_at_least(18), default=None, help="ONNX opset (default 18; 18 or newer)")
    add_runtime(parser, dtypes=DTYPE_NAMES, device_help="pt2: where the program's weights live (default cpu)")
    parser.add_argument(
        "--no-optimize",
        action="store_true",
        help="onnx: skip onnxscript's graph optimiser (faster export, larger graph; runtimes optimise anyway)",
    )
    parser.add_argument("--with-backbone", action="store_true", help="export backbone + upsampler as one graph")
    parser.add_argument(
        "--portable",
        action="store_true",
        help="pt2: the attender in standard ops (runs without featlift; default: featlift's custom op)",
    )
    parser.add_argument(
        "--example-cells",
        type=grid("--example-cells", minimum=2),
        default=(4, 6),
        metavar="HxW",
        help="backbone cells of the example input traced (default 4x6; any size runs afterwards)",
    )


def _format(args: argparse.Namespace) -> str:
    """``--format``, or the one ``--out``'s suffix names."""
    if args.format is not None:
        return args.format
    suffix = Path(args.out).suffix.lower()
    for name, ext in FORMATS.items():
        if suffix == ext:
            return name
    raise ConfigError(
        f"--format is missing and {args.out!r} does not end in .onnx or .pt2; pass --format onnx or --format pt2"
    )


def run(args: argparse.Namespace) -> int:
    from ..export import DEFAULT_OPSET, export_onnx, export_pt2

    fmt = _format(args)
    common = {
        "iters": args.iters,
        "dtype": args.dtype,
        "with_backbone": args.with_backbone,
        "options": load_options(args),
        "example_cells": args.example_cells,
    }
    if fmt == "onnx":
        if args.device not in (None, "cpu"):
            raise ConfigError("--device applies to --format pt2 only (ONNX graphs are traced on the CPU)")
        if args.portable:
            raise ConfigError("--portable applies to --format pt2 only (ONNX graphs are always portable)")
        opset = DEFAULT_OPSET if args.opset is None else args.opset
        path = export_onnx(args.model, args.out, opset=opset, optimize=not args.no_optimize, **common)
    else:
        if args.opset is not None or args.no_optimize:
            raise ConfigError("--opset and --no-optimize apply to --format onnx only")
        path = export_pt2(args.model, args.out, device=args.device, portable=args.portable, **common)
    print(f"wrote {path}")
    return 0
