"""The Local Attender's core operation, behind one seam.

Given attention logits at the fine resolution and values (features) at the coarse resolution,
the output pixel ``(y, x)`` is the softmax-weighted sum of the values at the coarse cell
``(y // scale, x // scale)`` shifted by each neighbourhood offset, with edge cells repeated
(replicate padding)::

    out[b, c, y, x] = sum_k softmax_k(logits[b, :, y, x]) * values[b, c, clamp(y // s + dy_k), clamp(x // s + dx_k)]

Every output vector is therefore a convex combination of input feature vectors.

:func:`local_attend` is the one entry point the model uses; it picks an implementation by device and
dtype (:func:`resolve_impl`):

- ``"bagged"`` (:mod:`featlift.ops._bagged`): one embedding bag per output pixel, PyTorch's FBGEMM
  kernels; one pass over the output, bfloat16 read and written as such. CPU default (float32, bfloat16,
  float16).
- ``"fused"`` (:mod:`featlift.ops._fused`): banded PyTorch, cache-sized scratch, any device; the default
  where the others do not apply (MPS, CUDA without Triton, float64 on the CPU).
- ``"triton"`` (:mod:`featlift.ops._triton`): one fused kernel launch. CUDA default.
- ``"portable"`` (:mod:`featlift.ops._portable`): standard ops only (a batched matrix product over the
  stacked shifts), what the ONNX export and ``export_pt2(portable=True)`` trace.
- ``"reference"``: :func:`local_attend_reference`, the plain, obviously correct formulation (it stacks
  all shifted copies); the oracle the others are tested against.

A kernel that compiles but misbehaves on some GPU, driver or Triton release must not strand anyone, so
``"auto"`` only trusts the Triton kernel after a self-test. What differs between launches is the dtype
and the index width (32-bit, or 64-bit for tensors past 2**31 elements: two compiled variants), so the
self-test is keyed on the device, the dtype and the width: on the first call with a new key the kernel
runs in that variant on a small random input and is compared with the fused path. Any exception or
mismatch logs one warning and sends calls with that key to the fused path for the rest of the process;
other dtypes and widths keep their own verdicts. ``impl=`` other than ``"auto"``, or the environment
variable ``FEATLIFT_ATTEND_IMPL`` (``auto``, ``bagged``, ``fused``, ``triton`` or ``reference``), force a
choice and skip the self-test. The variable is read once, and the verdicts kept, by one :class:`AttendPolicy` (:func:`attend_policy`); tests and
embedders install their own with :func:`use_attend_policy`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping

import torch
from einops import rearrange, repeat
from torch import Tensor

from .._neighbourhood import Offsets, neighbourhood_offsets
from ._bagged import bagged_forward, bagged_supported
from ._fused import accumulation_dtype, fused_backward, fused_forward
from ._portable import portable_local_attend
from ._triton import needs_wide, triton_available, triton_forward

__all__ = [
    "ENV_VAR",
    "IMPLS",
    "AttendPolicy",
    "attend_policy",
    "check_impl",
    "local_attend",
    "local_attend_reference",
    "neighbourhood_offsets",
    "resolve_impl",
    "use_attend_policy",
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
    if 0 in values.shape[1:]:
        raise ValueError(
            f"values of shape {tuple(values.shape)} have no channels or no cells; local_attend needs C, h and w "
            "of at least 1"
        )
    if (hh, ww) != (h * scale, w * scale):
        raise ValueError(
            f"logits are {hh}x{ww} but values {h}x{w} at scale {scale} need logits of {h * scale}x{w * scale}"
        )


IMPLS = ("auto", "reference", "fused", "bagged", "triton", "portable")
ENV_VAR = "FEATLIFT_ATTEND_IMPL"


def _check_bagged(values: Tensor, source: str) -> None:
    """A RuntimeError naming the fix unless the embedding-bag path serves ``values``."""
    if not bagged_supported(values.device, values.dtype):
        raise RuntimeError(
            f"the embedding-bag local attend runs on the CPU in float32, bfloat16 or float16, not on "
            f"{values.device} in {values.dtype} ({source}); use impl='fused' or 'auto', or unset {ENV_VAR}"
        )


def check_impl(impl: str) -> str:
    """``impl`` itself if it names an implementation (one of :data:`IMPLS`), else a ValueError."""
    if impl not in IMPLS:
        raise ValueError(f"unknown local-attend implementation {impl!r}; choose one of {IMPLS}")
    return impl


def _cuda_with_triton(device: torch.device) -> bool:
    return device.type == "cuda" and triton_available(device)


class AttendPolicy:
    """What ``impl="auto"`` means in this process, and the Triton self-test's verdicts.

    Args:
        forced: an implementation that ``"auto"`` stands for without a self-test (``"auto"``: decide by
            device and self-test). :meth:`from_environment` takes it from ``FEATLIFT_ATTEND_IMPL``.
        source: who forced it, for error messages.
        candidate: whether ``"auto"`` considers the Triton kernel on a device (default: CUDA with Triton).
        kernel: the Triton forward, ``kernel(logits, values, offsets, scale, *, wide) -> [B, C, H, W]``
            (``wide``: 64-bit index arithmetic), used by the self-test and by the op.

    One policy serves the process (:func:`attend_policy`, built from the environment on first use); tests
    and embedders inject their own with :func:`use_attend_policy`. Verdicts are kept per device, dtype and
    index width; a failure logs one warning and sends calls with that key to the fused path for the
    policy's lifetime.
    """

    def __init__(
        self,
        forced: str = "auto",
        *,
        source: str | None = None,
        candidate: Callable[[torch.device], bool] = _cuda_with_triton,
        kernel: Callable[..., Tensor] = triton_forward,
    ) -> None:
        self.forced = check_impl(forced)
        self.source = source or f"forced={forced!r}"
        self.candidate = candidate
        self.kernel = kernel
        self._invalid: str | None = None
        self._verdicts: dict[tuple[str, torch.dtype, bool], bool] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ, **options) -> AttendPolicy:
        """A policy forced by the environment variable :data:`ENV_VAR` when it is set to something other
        than ``auto`` (read here, once). A value naming no implementation raises a ValueError when
        ``"auto"`` is resolved."""
        raw = environ.get(ENV_VAR, "")
        env = raw.strip().lower() or "auto"
        policy = cls(env if env in IMPLS else "auto", source=f"{ENV_VAR}={env}", **options)
        if env not in IMPLS:  # raised when "auto" is resolved: an explicit impl= never reads the variable
            policy._invalid = (
                f"environment variable {ENV_VAR}={raw!r} is not a local-attend implementation; "
                f"set it to one of {', '.join(IMPLS)}, or unset it"
            )
        return policy

    def requested(self, impl: str) -> tuple[str, str]:
        """The implementation asked for and who asked: ``impl`` unless it is ``"auto"``, then the policy's.

        Raises:
            ValueError: an unknown ``impl``, or ``"auto"`` under an environment variable naming none.
        """
        if check_impl(impl) != "auto":
            return impl, f"impl={impl!r}"
        if self._invalid is not None:
            raise ValueError(self._invalid)
        return self.forced, (self.source if self.forced != "auto" else "impl='auto'")

    def verdict(
        self, device: torch.device | str, dtype: torch.dtype = torch.float32, wide: bool = False
    ) -> bool | None:
        """Whether the kernel passed its self-test on ``device`` in ``dtype`` with 32-bit (``wide=False``)
        or 64-bit index arithmetic: None when that test never ran."""
        return self._verdicts.get((str(device), dtype, bool(wide)))

    def _self_test_problem(self, device: torch.device, dtype: torch.dtype, wide: bool) -> str | None:
        """Run the kernel once on a small input on ``device`` in ``dtype`` (64-bit indexing when ``wide``)
        and compare it with the fused path.

        The input has three images, an odd channel count spanning two channel blocks, a non-square map
        whose pixel count is not a multiple of the pixel block, scale 2 and the 17-offset neighbourhood.
        Returns None when the two agree, otherwise why not.
        """
        gen = torch.Generator().manual_seed(0)
        values = torch.randn(3, 67, 5, 7, generator=gen).to(device=device, dtype=dtype)
        logits = (4 * torch.randn(3, 17, 10, 14, generator=gen)).to(device=device, dtype=dtype)
        offsets = neighbourhood_offsets(17)
        try:
            got = self.kernel(logits, values, offsets, 2, wide=wide)
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
            return (
                f"its {dtype} output differs from the fused path by up to {err.max().item():.3g} (tolerance {tol:.3g})"
            )
        return None

    @torch.compiler.disable
    def auto(self, device: torch.device, dtype: torch.dtype, wide: bool = False) -> str:
        """On a candidate device (CUDA with Triton): ``"triton"`` if the kernel passed its self-test there in
        ``dtype`` with that index width, else ``"fused"``. Elsewhere ``"bagged"`` where it applies (the
        CPU in float32, bfloat16 or float16, see :func:`~featlift.ops._bagged.bagged_supported`), else
        ``"fused"``. Each test runs once, never under autograd."""
        if not self.candidate(device):
            return "bagged" if bagged_supported(device, dtype) else "fused"
        key = (str(device), dtype, bool(wide))
        with self._lock, torch.no_grad():
            if key not in self._verdicts:
                problem = self._self_test_problem(device, dtype, bool(wide))
                self._verdicts[key] = problem is None
                if problem is not None:
                    logger.warning(
                        "the Triton local-attend kernel failed its self-test on %s in %s with %s-bit indexing "
                        "(%s); using the fused PyTorch path for such calls from now on. Set %s=fused to skip "
                        "the test, or %s=triton to force the kernel.",
                        device,
                        dtype,
                        64 if wide else 32,
                        problem,
                        ENV_VAR,
                        ENV_VAR,
                    )
            return "triton" if self._verdicts[key] else "fused"

    def resolve(self, impl: str, values: Tensor) -> str:
        """The implementation ``impl`` stands for on ``values``' device and dtype, for a call with 32-bit
        indexing (see :func:`resolve_impl`)."""
        choice, source = self.requested(impl)
        if choice == "auto":
            return self.auto(values.device, values.dtype)
        if choice == "triton" and not triton_available(values.device):
            raise RuntimeError(
                f"the Triton local-attend kernel cannot run on {values.device} ({source}): it needs a CUDA "
                "device and the triton package (or TRITON_INTERPRET=1 for the CPU interpreter); use "
                f"impl='fused' or 'auto', or unset {ENV_VAR}"
            )
        if choice == "bagged":
            _check_bagged(values, source)
        return choice


# The process's policy, read from the environment once, when this module is imported (a value naming no
# implementation raises only when "auto" is resolved). A plain global read, so torch.compile traces it.
_POLICY: AttendPolicy = AttendPolicy.from_environment()
_POLICY_LOCK = threading.Lock()


def attend_policy() -> AttendPolicy:
    """The policy in force: the one :func:`use_attend_policy` installed, else the process's own, built
    from the environment when featlift's ops were imported."""
    return _POLICY


@contextlib.contextmanager
def use_attend_policy(policy: AttendPolicy) -> Iterator[AttendPolicy]:
    """Make ``policy`` the one in force inside the ``with`` block (the previous one comes back after)."""
    global _POLICY
    with _POLICY_LOCK:
        previous, _POLICY = _POLICY, policy
    try:
        yield policy
    finally:
        with _POLICY_LOCK:
            _POLICY = previous


def resolve_impl(impl: str, values: Tensor) -> str:
    """The implementation ``impl`` stands for on ``values``' device and dtype, under :func:`attend_policy`.

    An explicit ``impl`` other than ``"auto"`` is used as given. For ``"auto"``, the environment variable
    ``FEATLIFT_ATTEND_IMPL`` (``auto``, ``bagged``, ``fused``, ``triton`` or ``reference``; read once per
    process) decides when set to something other than ``auto``; otherwise ``"auto"`` picks the Triton
    kernel on CUDA when Triton is installed and the kernel passes its self-test on that device (see the
    module docstring), the embedding-bag path on the CPU in float32, bfloat16 and float16, and the fused
    PyTorch path everywhere else (MPS, CUDA without Triton, a failed self-test, float64).

    Raises:
        ValueError: an unknown ``impl`` or value of ``FEATLIFT_ATTEND_IMPL``.
        RuntimeError: Triton is forced but cannot run on this device, or the embedding-bag path is forced
            off the CPU or in a dtype it does not serve (float64).
    """
    return attend_policy().resolve(impl, values)


def local_attend(
    logits: Tensor, values: Tensor, offsets: Offsets, scale: int, *, impl: str = "auto", channels_last: bool = False
) -> Tensor:
    """Softmax over ``logits`` and weighted sum of shifted ``values``; see the module docstring.

    Args:
        logits: [B, n, h*scale, w*scale], one channel per offset.
        values: [B, C, h, w] coarse features.
        offsets: the n ``(dy, dx)`` offsets, from :func:`neighbourhood_offsets`.
        scale: integer upsampling factor.
        impl: ``"auto"`` (default), ``"bagged"`` (embedding bags, CPU), ``"fused"`` (banded PyTorch, any
            device), ``"triton"`` (CUDA kernel),
            ``"portable"`` (standard ops, for export) or ``"reference"`` (the plain oracle); see :func:`resolve_impl`. With ``"auto"``, the
            environment variable ``FEATLIFT_ATTEND_IMPL`` may force one of the others.
        channels_last: lay the output out [B, H, W, C] in memory (what the model asks for on the CPU,
            where its convs run channels_last); default plain NCHW strides. Every implementation
            honours it; the bagged and fused paths write that layout directly, the others convert.

    Returns:
        [B, C, h*scale, w*scale] in ``values.dtype``; half-precision inputs accumulate in float32.

    Memory: the output plus cache-sized scratch (bagged, fused) or nothing else (Triton). Gradients flow to
    both inputs through an explicit backward, and ``torch.compile`` sees the op as one opaque node
    (``torch.ops.featlift.local_attend``).
    """
    _check_inputs(logits, values, offsets, scale)
    policy = attend_policy()
    choice, _ = policy.requested(impl)
    if choice == "auto":
        # Decided inside the op, at run time on the device it runs on: the self-test never runs under a
        # compiler's tracing, and a graph exported on the CPU still takes the kernel on CUDA. Either
        # outcome writes the layout asked for.
        impl = "auto"
    else:
        impl = policy.resolve(impl, values)
    if impl in ("reference", "portable"):
        plain = local_attend_reference if impl == "reference" else portable_local_attend
        out = plain(logits, values, offsets, scale)
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
    policy = attend_policy()
    wide = needs_wide(logits, values, scale)
    if impl == "auto":
        impl = policy.auto(values.device, values.dtype, wide)
    if impl == "triton":
        out = policy.kernel(logits, values, _pairs(offsets), scale, wide=wide)  # always NCHW
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out
    if impl == "bagged":
        # a program traced with the choice forced may run elsewhere (another device, float64)
        _check_bagged(values, "impl='bagged', recorded when the call was traced")
        return bagged_forward(logits, values, _pairs(offsets), scale, channels_last=channels_last)
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
