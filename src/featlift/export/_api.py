"""``export_onnx`` and ``export_pt2``: an upsampler as an ONNX graph or a ``torch.export`` ExportedProgram."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from pathlib import Path

import torch

from .._atomic import atomic_write
from .._builder import LoadOptions
from .._tensors import to_dtype
from ..errors import ConfigError, require
from ._graph import OUTPUT, ExportTarget, load_target

__all__ = ["DEFAULT_OPSET", "ONNX_DTYPES", "PT2_DTYPES", "export_onnx", "export_pt2", "standard_domains"]

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 18
MIN_OPSET = 18  # torch's ONNX exporter (torch.export based) targets opset 18 and newer
ONNX_DTYPES = ("float32", "float16")
PT2_DTYPES = ("float32", "float16", "bfloat16")
EXAMPLE_CELLS = (4, 6)  # backbone cells (rows, cols) of the example inputs traced; any size then runs
# Above this many bytes of weights the ONNX file keeps them in a side file (protobuf's 2 GiB limit).
_EXTERNAL_DATA_BYTES = 1_800_000_000


def _output_path(path: str | os.PathLike) -> Path:
    text = os.fspath(path)
    if text.endswith(("/", os.sep)):  # Path() would drop the slash and write a file of the folder's name
        raise ConfigError(
            f"{text} names a folder (it ends in a slash); pass the path of the file to write, such as "
            f"{os.path.join(text, 'model.onnx')}"
        )
    path = Path(text)
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; pass the path of the file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _opset(opset: int) -> int:
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not isinstance(opset, int) or isinstance(opset, bool) or not MIN_OPSET <= opset <= newest:
        raise ConfigError(
            f"opset must be an integer from {MIN_OPSET} (the oldest torch's ONNX exporter writes) to {newest} "
            f"(the newest the installed onnx knows), got {opset!r}"
        )
    return opset


@contextlib.contextmanager
def _quiet_exporter():
    """Route the exporters' progress prints to the debug log and silence their advisory warnings."""
    buffer = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(buffer):
        warnings.filterwarnings("ignore", module=r"torch\.onnx.*")
        warnings.filterwarnings("ignore", module=r"onnxscript.*")
        try:
            yield
        finally:
            for line in buffer.getvalue().splitlines():
                if line.strip():
                    logger.debug("%s", line)


def standard_domains(model_proto) -> set[str]:
    """The operator domains an ONNX model's nodes use, the default domain written as ``""``
    (functions included): ``{""}`` for a graph of standard ONNX ops only."""
    domains = set()
    nodes = list(model_proto.graph.node)
    for function in model_proto.functions:
        nodes.extend(function.node)
    for node in nodes:
        domains.add("" if node.domain == "ai.onnx" else node.domain)
    return domains


def _export_program(target: ExportTarget, cells: tuple[int, int]):
    """``torch.export`` of the target's graph with dynamic batch and spatial sizes.

    Traced without autograd first, so UPLiFT takes its lean inference path (BatchNorm folded, the deepest
    guidance map computed only on the subgrids read: about a quarter less work in ONNX Runtime); where
    that path does not trace with symbolic sizes, the plain path, which computes the same function.
    """
    args = target.example_inputs(cells)
    shapes = target.dynamic_shapes()
    with _quiet_exporter():
        try:
            with torch.no_grad():
                return torch.export.export(target.graph, args, dynamic_shapes=shapes, strict=False)
        except Exception as err:  # the plain path below is exact too; if it fails as well, that error is raised
            reason = " ".join(str(err).split())[:300]
            logger.info("lean path did not trace (%s: %s); exporting the plain path", type(err).__name__, reason)
        return torch.export.export(target.graph, args, dynamic_shapes=shapes, strict=False)


def _axis_names(program, target: ExportTarget) -> dict[str, str]:
    """The exported program's shape symbols -> readable names: ``batch``, ``h`` and ``w`` (the feature
    grid; the image is ``patch`` times that)."""
    from torch.export.graph_signature import InputKind

    users = [spec.arg.name for spec in program.graph_signature.input_specs if spec.kind == InputKind.USER_INPUT]
    nodes = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    axes = {0: "batch", 2: "h", 3: "w"}
    mapping = {}
    for user in users:
        shape = nodes[user].meta["val"].shape
        for axis, name in axes.items():
            size = shape[axis]
            if isinstance(size, torch.SymInt):
                symbols = size.node.expr.free_symbols
                if len(symbols) == 1:
                    mapping.setdefault(str(next(iter(symbols))), name)
    return mapping


def _check_cells(cells) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in cells)
    except (TypeError, ValueError):
        raise ConfigError(f"example_cells must be (rows, cols) of backbone cells, got {cells!r}") from None
    if h < 2 or w < 2:
        raise ConfigError(f"example_cells must be at least 2x2 cells, got {cells!r}")
    return h, w


def export_onnx(
    model,
    path: str | os.PathLike,
    *,
    iters: int | None = None,
    opset: int = DEFAULT_OPSET,
    dtype: torch.dtype | str = torch.float32,
    with_backbone: bool = False,
    options: LoadOptions | None = None,
    example_cells: tuple[int, int] = EXAMPLE_CELLS,
    optimize: bool = True,
) -> Path:
    """Write an upsampler as an ONNX model that ONNX Runtime, TensorRT & co. run at any size.

    The graph (see :mod:`featlift.export._graph`):

    - default: inputs ``image`` [B, 3, H, W] (normalised as the backbone expects, H = h * patch,
      W = w * patch) and ``features`` [B, C, h, w] (the backbone's features);
    - ``with_backbone=True``: one input ``image`` [B, 3, H, W], RGB in [0, 1] with H and W multiples of
      the patch; the graph normalises it, runs the backbone and the upsampler;
    - output ``upsampled`` [B, C, h * 2**iters, w * 2**iters] (the native grid; 16x the cells for the
      published models' default 4 iterations).

    Batch, H and W are dynamic (symbols ``batch``, ``h``, ``w``). The Local Attender is written in
    standard ONNX ops (:func:`featlift.ops.portable_local_attend`, ``impl="portable"``): no custom op, so any
    runtime runs it. ``metadata_props`` record the conventions (``featlift.*`` keys: patch, channels,
    iters, input ranges, the UPLiFT config as JSON).

    Args:
        model: a registered name (``"dinov2_s14"``), a model directory, a config file or
            :class:`~featlift.UpliftConfig`, a Hub repo id (loaded as :func:`featlift.load_upsampler`
            does), or a :class:`~featlift.Upsampler` / :class:`~featlift.UPLiFT` object (copied, not
            changed; a bare UPLiFT cannot take ``with_backbone``).
        path: the ``.onnx`` file to write (parent folders are created; written atomically). Models with
            more than about 1.8 GB of weights keep them in ``path + ".data"`` beside it.
        iters: upsampling iterations baked into the graph (default: the model's, pixel density).
        opset: ONNX opset, 18 (default) up to the newest the installed ``onnx`` knows.
        dtype: ``torch.float32`` (default) or ``torch.float16`` (also as strings). In float16 the
            attender's softmax and sums still run in float32, inside the graph.
        with_backbone: export backbone + upsampler as one graph from ``image``, where the backbone's code
            traces with ``torch.export`` (featlift's tests export a timm ViT to ONNX, and a tiny model of
            every backbone source to ``.pt2``).
        options: where a model reference's weights come from (:class:`featlift.LoadOptions`, as in
            :func:`featlift.load_upsampler`; ``LoadOptions(pretrained=False)``: random weights, for tests).
        example_cells: (rows, cols) of backbone cells of the example input traced (any size runs later;
            at least 2x2).
        optimize: let torch's exporter fold constants and simplify the graph (onnxscript's optimiser).

    Returns:
        ``path``.

    Raises:
        MissingDependencyError: ``onnx`` or ``onnxscript`` is missing (``pip install "featlift[export]"``).
        ConfigError: a bad ``opset``, ``dtype``, ``iters`` or ``example_cells``, ``with_backbone`` without a
            backbone, loading options with a model object, or ``path`` is a directory.
        UnknownModelError, CheckpointError, DownloadError: loading ``model``.
        RuntimeError: the exporter failed, or wrote an op outside the standard ONNX domain.
    """
    for module in ("onnx", "onnxscript"):
        require(module, feature="ONNX export", extra="export")
    opset = _opset(opset)
    dtype = to_dtype(dtype, ONNX_DTYPES)
    cells, path = _check_cells(example_cells), _output_path(path)
    target = load_target(
        model, with_backbone=with_backbone, portable=True, iters=iters, dtype=dtype, device="cpu", options=options
    )
    program = _export_program(target, cells)
    with _quiet_exporter():
        onnx_program = torch.onnx.export(
            program,
            target.example_inputs(cells),
            dynamo=True,
            opset_version=opset,
            input_names=target.input_names,
            output_names=[OUTPUT],
            optimize=optimize,
            verbose=False,
        )
    onnx_program.rename_axes(_axis_names(program, target))
    domains = standard_domains(onnx_program.model_proto)
    if domains != {""}:
        raise RuntimeError(
            f"the exported graph uses operators outside the standard ONNX domain ({sorted(domains - {''})}); "
            "please report this as a featlift bug"
        )
    for key, value in target.metadata().items():
        onnx_program.model.metadata_props[key] = value
    weight_bytes = sum(t.numel() * t.element_size() for t in target.graph.state_dict().values())
    if weight_bytes > _EXTERNAL_DATA_BYTES:  # the side file is named after the final path: no temp file
        onnx_program.save(path, external_data=True)
    else:
        with atomic_write(path) as tmp:
            onnx_program.save(tmp, external_data=False)
    logger.info("wrote %s (opset %d, %s, %d iterations)", path, opset, target.dtype, target.iters)
    return path


def export_pt2(
    model,
    path: str | os.PathLike,
    *,
    iters: int | None = None,
    dtype: torch.dtype | str = torch.float32,
    with_backbone: bool = False,
    device: str | torch.device | None = None,
    portable: bool = False,
    options: LoadOptions | None = None,
    example_cells: tuple[int, int] = EXAMPLE_CELLS,
) -> Path:
    """Write an upsampler as a ``torch.export`` ExportedProgram (``torch.export.save``), dynamic in batch
    and spatial size. Load and run it with::

        import featlift.ops  # registers the featlift::local_attend op the program calls
        program = torch.export.load("uplift.pt2")
        upsampled = program.module()(image, features)

    Inputs and output are those of :func:`export_onnx`. By default the Local Attender stays the library's
    custom op ``featlift::local_attend`` (its fake kernel lets ``torch.export`` trace it), which chooses its
    implementation when the program runs, on the device it runs on, as :func:`featlift.ops.local_attend`
    does (Triton on CUDA after its self-test, embedding bags on the CPU, fused PyTorch elsewhere; a program
    exported on the CPU takes the kernel on CUDA): the loading process must import featlift. ``FEATLIFT_ATTEND_IMPL`` at export time
    fixes the choice in the program instead. ``portable=True`` writes it in standard
    ATen ops instead, so the program runs without featlift installed (slower, more memory).

    The file also carries the ``featlift.*`` metadata of the ONNX export as JSON, read with
    ``torch.export.load(path, extra_files={"featlift.json": ""})`` (the dict is filled in), plus
    ``featlift.attender``: ``"featlift::local_attend"`` or ``"portable"``.

    Args:
        model, iters, with_backbone, options, example_cells: as in :func:`export_onnx`.
        path: the ``.pt2`` file to write (parent folders are created; written atomically).
        dtype: ``torch.float32`` (default), ``torch.float16`` or ``torch.bfloat16`` (also as strings).
        device: where the program's weights live and it runs (default: the model's device; a model
            reference loads on the CPU).
        portable: standard ops for the attender instead of featlift's custom op.

    Returns:
        ``path``.

    Raises:
        ConfigError, UnknownModelError, CheckpointError, DownloadError: as :func:`export_onnx`.
    """
    dtype = to_dtype(dtype, PT2_DTYPES)
    cells, path = _check_cells(example_cells), _output_path(path)
    target = load_target(
        model, with_backbone=with_backbone, portable=portable, iters=iters, dtype=dtype, device=device, options=options
    )
    program = _export_program(target, cells)
    meta = {**target.metadata(), "featlift.attender": "portable" if portable else "featlift::local_attend"}
    buffer = io.BytesIO()  # torch.export.save wants a name ending in .pt2 or a buffer: not the temp name
    torch.export.save(program, buffer, extra_files={"featlift.json": json.dumps(meta, indent=2)})
    with atomic_write(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())
    logger.info("wrote %s (%s, %d iterations)", path, target.dtype, target.iters)
    return path
