"""The Local Attender's core operation, behind one seam.

Given attention logits at the fine resolution and values (features) at the coarse resolution,
the output pixel ``(y, x)`` is the softmax-weighted sum of the values at the coarse cell
``(y // scale, x // scale)`` shifted by each neighbourhood offset, with edge cells repeated
(replicate padding)::

    out[b, c, y, x] = sum_k softmax_k(logits[b, :, y, x]) * values[b, c, clamp(y // s + dy_k), clamp(x // s + dx_k)]

Every output vector is therefore a convex combination of input feature vectors.

:func:`local_attend` is the one entry point the model uses; it picks an implementation by device and
dtype (:func:`resolve_impl`):

- ``"fused"`` (:mod:`featlift.ops._fused`): banded PyTorch, cache-sized scratch, any device. CPU default.
- ``"triton"`` (:mod:`featlift.ops._triton`): one fused kernel launch. CUDA default.
- ``"reference"``: :func:`local_attend_reference`, the plain, obviously correct formulation (it stacks
  all shifted copies); the oracle the other two are tested against.

A kernel that compiles but misbehaves on some GPU, driver or Triton release must not strand anyone, so
``"auto"`` only trusts the Triton kernel after a self-test: on first use on each device the kernel runs
on a small random input and is compared with the fused path (in float32 and in the dtype being used).
Any exception or mismatch logs one warning and sends that device to the fused path for the rest of the
process. ``impl=`` other than ``"auto"``, or the environment variable ``FEATLIFT_ATTEND_IMPL``
(``auto``, ``fused``, ``triton`` or ``reference``), force a choice and skip the self-test.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading

import torch
from einops import rearrange, repeat
from torch import Tensor

from .._neighbourhood import Offsets, neighbourhood_offsets
from ._fused import accumulation_dtype, fused_backward, fused_forward
from ._triton import triton_available, triton_forward

__all__ = [
    "ENV_VAR",
    "IMPLS",
    "check_impl",
    "local_attend",
    "local_attend_reference",
    "neighbourhood_offsets",
    "resolve_impl",
]

logger = logging.getLogger(__name__)


def _check_inputs(logits: Tensor, values: Tensor, offsets: Offsets, scale: int) -> None:
    if logits.dim() != 4 or values.dim() != 4:
        raise ValueError(
            f"local_attend expects logits [B, n, H, W] and values [B, C, h, w], "
            f"got shapes {tuple(logits.shape)} and {tuple(values.shape)}"
        )
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    if not logits.is_floating_point() or not values.is_floating_point():
        raise TypeError(
            f"local_attend needs floating-point tensors, got {logits.dtype} logits and {values.dtype} values"
        )
    if logits.device != values.device:
        raise ValueError(f"logits are on {logits.device} but values on {values.device}; move them to one device")
    b, n, hh, ww = logits.shape
    vb, _, h, w = values.shape
    if n != len(offsets):
        raise ValueError(f"logits have {n} channels but the neighbourhood has {len(offsets)} offsets")
    if b != vb:
        raise ValueError(f"batch mismatch: logits have {b} items, values {vb}")
    if (hh, ww) != (h * scale, w * scale):
        raise ValueError(
            f"logits are {hh}x{ww} but values {h}x{w} at scale {scale} need logits of {h * scale}x{w * scale}"
        )


IMPLS = ("auto", "reference", "fused", "triton")
ENV_VAR = "FEATLIFT_ATTEND_IMPL"


def check_impl(impl: str) -> str:
    """``impl`` itself if it names an implementation (one of :data:`IMPLS`), else a ValueError."""
    if impl not in IMPLS:
        raise ValueError(f"unknown local-attend implementation {impl!r}; choose one of {IMPLS}")
    return impl


def _requested_impl(impl: str) -> tuple[str, str]:
    """The implementation asked for, and who asked: ``impl=`` unless it is ``"auto"``, then the
    environment variable :data:`ENV_VAR` when it is set to something other than ``"auto"``."""
    if check_impl(impl) != "auto":
        return impl, f"impl={impl!r}"
    raw = os.environ.get(ENV_VAR, "")
    env = raw.strip().lower()
    if env in ("", "auto"):
        return "auto", "impl='auto'"
    if env not in IMPLS:
        raise ValueError(
            f"environment variable {ENV_VAR}={raw!r} is not a local-attend implementation; "
            f"set it to one of {', '.join(IMPLS)}, or unset it"
        )
    return env, f"{ENV_VAR}={env}"


def _triton_candidate(device: torch.device) -> bool:
    """Whether ``"auto"`` considers the Triton kernel on ``device`` (then subject to the self-test)."""
    return device.type == "cuda" and triton_available(device)


@dataclasses.dataclass
class _DeviceCheck:
    usable: bool = True
    tested: set[torch.dtype] = dataclasses.field(default_factory=set)


# str(device) -> the self-test's verdict on that device; guarded by _CHECK_LOCK.
_DEVICE_CHECKS: dict[str, _DeviceCheck] = {}
_CHECK_LOCK = threading.Lock()


def _self_test_problem(device: torch.device, dtype: torch.dtype) -> str | None:
    """Run the Triton kernel once on a small input on ``device`` and compare it with the fused path.

    The input has an odd channel count spanning two channel blocks, a non-square map whose pixel count
    is not a multiple of the pixel block, scale 2 and the 17-offset neighbourhood. Returns None when
    the two agree, otherwise why not.
    """
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(2, 67, 5, 7, generator=gen).to(device=device, dtype=dtype)
    logits = (4 * torch.randn(2, 17, 10, 14, generator=gen)).to(device=device, dtype=dtype)
    offsets = neighbourhood_offsets(17)
    try:
        got = triton_forward(logits, values, offsets, 2)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # surface asynchronous launch errors here, not later
    except Exception as err:  # compilation, launch or driver failures: all mean "do not use it"
        message = str(err).strip().splitlines()
        return f"{type(err).__name__}: {message[0] if message else 'no details'}"
    want = fused_forward(logits, values, offsets, 2, channels_last=False)
    if not isinstance(got, Tensor) or got.shape != want.shape or got.dtype != want.dtype:
        shape = tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__
        return f"it returned {shape} {getattr(got, 'dtype', '')}, expected {tuple(want.shape)} {want.dtype}"
    tol = 2 * torch.finfo(dtype).eps if dtype in (torch.float16, torch.bfloat16) else 1e-4
    err = (got.double() - want.double()).abs()
    bound = tol * (1 + want.double().abs())
    if not bool(torch.isfinite(got).all()) or bool((err > bound).any()):
        return f"its {dtype} output differs from the fused path by up to {err.max().item():.3g} (tolerance {tol:.3g})"
    return None


@torch.compiler.disable
def _auto_impl(device: torch.device, dtype: torch.dtype) -> str:
    """``"triton"`` if the kernel passed its self-test on ``device`` (float32 and ``dtype``), else
    ``"fused"``. Tests run once per device and dtype; the first failure logs one warning and sends the
    device to the fused path for good."""
    with _CHECK_LOCK, torch.no_grad():
        check = _DEVICE_CHECKS.setdefault(str(device), _DeviceCheck())
        for wanted in dict.fromkeys((torch.float32, dtype)):
            if not check.usable or wanted in check.tested:
                continue
            check.tested.add(wanted)
            problem = _self_test_problem(device, wanted)
            if problem is not None:
                check.usable = False
                logger.warning(
                    "the Triton local-attend kernel failed its self-test on %s (%s); using the fused PyTorch "
                    "path on this device from now on. Set %s=fused to skip the test, or %s=triton to force "
                    "the kernel.",
                    device,
                    problem,
                    ENV_VAR,
                    ENV_VAR,
                )
        return "triton" if check.usable else "fused"


def resolve_impl(impl: str, values: Tensor) -> str:
    """The implementation ``impl`` stands for on ``values``' device and dtype.

    An explicit ``impl`` other than ``"auto"`` is used as given. For ``"auto"``, the environment variable
    ``FEATLIFT_ATTEND_IMPL`` (``auto``, ``fused``, ``triton`` or ``reference``) decides when set to
    something other than ``auto``; otherwise ``"auto"`` picks the Triton kernel on CUDA when Triton is
    installed and the kernel passes its self-test on that device (see the module docstring), and the
    fused PyTorch path everywhere else (CPU, MPS, CUDA without Triton, a failed self-test).

    Raises:
        ValueError: an unknown ``impl`` or value of ``FEATLIFT_ATTEND_IMPL``.
        RuntimeError: Triton is forced but cannot run on this device.
    """
    choice, source = _requested_impl(impl)
    if choice == "auto":
        return _auto_impl(values.device, values.dtype) if _triton_candidate(values.device) else "fused"
    if choice == "triton" and not triton_available(values.device):
        raise RuntimeError(
            f"the Triton local-attend kernel cannot run on {values.device} ({source}): it needs a CUDA device "
            "and the triton package (or TRITON_INTERPRET=1 for the CPU interpreter); use impl='fused' or "
            f"'auto', or unset {ENV_VAR}"
        )
    return choice


def local_attend(
    logits: Tensor, values: Tensor, offsets: Offsets, scale: int, *, impl: str = "auto", channels_last: bool = False
) -> Tensor:
    """Softmax over ``logits`` and weighted sum of shifted ``values``; see the module docstring.

    Args:
        logits: [B, n, h*scale, w*scale], one channel per offset.
        values: [B, C, h, w] coarse features.
        offsets: the n ``(dy, dx)`` offsets, from :func:`neighbourhood_offsets`.
        scale: integer upsampling factor.
        impl: ``"auto"`` (default), ``"fused"`` (banded PyTorch, any device), ``"triton"`` (CUDA kernel)
            or ``"reference"`` (the plain oracle); see :func:`resolve_impl`. With ``"auto"``, the
            environment variable ``FEATLIFT_ATTEND_IMPL`` may force one of the others.
        channels_last: lay the output out [B, H, W, C] in memory (what the model asks for on the CPU,
            where its convs run channels_last); default plain NCHW strides. Every implementation
            honours it; the fused path writes that layout directly, the others convert.

    Returns:
        [B, C, h*scale, w*scale] in ``values.dtype``; half-precision inputs accumulate in float32.

    Memory: the output plus cache-sized scratch (fused) or nothing else (Triton). Gradients flow to
    both inputs through an explicit backward, and ``torch.compile`` sees the op as one opaque node
    (``torch.ops.featlift.local_attend``).
    """
    _check_inputs(logits, values, offsets, scale)
    choice, _ = _requested_impl(impl)
    if choice == "auto" and _triton_candidate(values.device):
        # Decided inside the op, at run time: the self-test then never runs under a compiler's tracing;
        # either outcome writes the layout asked for.
        impl = "auto"
    else:
        impl = resolve_impl(impl, values)
    if impl == "reference":
        out = local_attend_reference(logits, values, offsets, scale)
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out
    flat = [v for pair in offsets for v in pair]
    return torch.ops.featlift.local_attend(logits, values, flat, scale, impl, bool(channels_last))


def _pairs(flat: list[int]) -> Offsets:
    return tuple(zip(flat[0::2], flat[1::2], strict=True))


# The output layout is an argument, fixed when the call is made (or traced): a compiler may hand the op
# inputs in another layout than it traced with, and the output must still match the fake kernel.
@torch.library.custom_op("featlift::local_attend", mutates_args=())
def _local_attend_op(
    logits: Tensor, values: Tensor, offsets: list[int], scale: int, impl: str, channels_last: bool
) -> Tensor:
    if impl == "auto":
        impl = _auto_impl(values.device, values.dtype)
    if impl == "triton":
        out = triton_forward(logits, values, _pairs(offsets), scale)  # always NCHW
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out
    return fused_forward(logits, values, _pairs(offsets), scale, channels_last=channels_last)


@_local_attend_op.register_fake
def _(logits: Tensor, values: Tensor, offsets: list[int], scale: int, impl: str, channels_last: bool) -> Tensor:
    b, c, h, w = values.shape
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty((b, c, h * scale, w * scale), dtype=values.dtype, device=values.device, memory_format=layout)


def _setup_context(ctx, inputs, output) -> None:
    logits, values, offsets, scale, _, _ = inputs
    ctx.save_for_backward(logits, values)
    ctx.offsets = _pairs(offsets)
    ctx.scale = scale


def _backward(ctx, grad_out: Tensor):
    logits, values = ctx.saved_tensors
    d_logits, d_values = fused_backward(grad_out, logits, values, ctx.offsets, ctx.scale)
    return d_logits, d_values, None, None, None, None


_local_attend_op.register_autograd(_backward, setup_context=_setup_context)


def local_attend_reference(logits: Tensor, values: Tensor, offsets: Offsets, scale: int) -> Tensor:
    """The plain formulation: stack every shifted, upsampled copy and take the weighted sum.

    Uses n times the output's memory; it exists as the oracle that faster paths are tested against.
    """
    _check_inputs(logits, values, offsets, scale)
    _, _, h, w = values.shape
    acc = accumulation_dtype(values.dtype)
    weights = torch.softmax(logits.to(acc), dim=1)  # [B, n, H, W]
    rows = torch.arange(h, device=values.device)
    cols = torch.arange(w, device=values.device)
    copies = []
    for dy, dx in offsets:
        shifted = values.to(acc)[:, :, (rows + dy).clamp(0, h - 1)][:, :, :, (cols + dx).clamp(0, w - 1)]
        copies.append(repeat(shifted, "b c h w -> b c (h sy) (w sx)", sy=scale, sx=scale))
    stacked = rearrange(copies, "n b c h w -> b n c h w")
    return (stacked * weights[:, :, None]).sum(dim=1).to(values.dtype)
