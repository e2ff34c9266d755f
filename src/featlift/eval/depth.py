"""The depth probe's head, losses and saved predictions, as probe3d (``mbanani/probe3d``) defines them.

Head (:func:`decode`, :func:`outputs`), for a :class:`~featlift.eval.protocols.DepthProtocol`:

- ``"bins"``: the probe outputs K = ``protocol.bins`` channels ``x``; per pixel ``p = relu(x) + 0.1``,
  ``p = p / Σ_k p_k`` and ``depth = Σ_k p_k c_k`` with the bin centres ``c = linspace(min_depth, max_depth, K)``
  (uniform). The depth therefore always lies in ``[min_depth, max_depth]``.
- ``"linear"``: one channel, read as metres.

probe3d decodes at the probe's resolution and then resizes the *depth* bilinearly to the label's size.

Losses (:func:`depth_loss`), over the valid pixels of a batch (ground truth ``> 0``; ground truth deeper
than ``protocol.max_depth`` counts as invalid, as probe3d zeroes it):

- ``"sig+gradient"``: ``sig_weight * sig_loss + gradient_weight * gradient_loss``
  (:func:`sig_loss`, :func:`gradient_loss`; probe3d's ``DepthLoss`` with weights 10 and 0.5).
- ``"l1"``: the mean ``|pred - gt|`` (featlift's earlier probe).

Saved predictions: :func:`save_depth_png` writes 16-bit PNGs of whole millimetres. The evaluation scores
:func:`quantise_mm` of the prediction, which is exactly what the PNG holds, so the metrics can be recomputed
from the saved files and agree to the last digit.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .._atomic import atomic_write
from ..errors import DatasetFormatError
from .protocols import DEPTH_HEADS as HEADS
from .protocols import DEPTH_LOSSES as LOSSES

if TYPE_CHECKING:
    from .protocols import DepthProtocol

__all__ = [
    "BIN_EPS",
    "HEADS",
    "LOSSES",
    "MAX_PNG_METRES",
    "bin_centres",
    "decode",
    "depth_loss",
    "gradient_loss",
    "gradient_strides",
    "outputs",
    "quantise_mm",
    "read_depth_png",
    "save_depth_png",
    "sig_loss",
]

logger = logging.getLogger(__name__)


BIN_EPS = 0.1
"""Added to every bin's ``relu`` before normalising (probe3d's ``DepthBinPrediction``, after AdaBins)."""

MAX_PNG_METRES = 65.535
"""The deepest depth a 16-bit millimetre PNG holds; deeper predictions are saved (and scored) as this."""


# ----------------------------------------------------------------------------------------------
# The head
# ----------------------------------------------------------------------------------------------


def _head(protocol: DepthProtocol) -> str:
    head = getattr(protocol, "head", None)
    if head not in HEADS:
        raise ValueError(f"depth head: one of {HEADS}, got {head!r}; set the protocol's head to 'bins' or 'linear'")
    return head


def outputs(protocol: DepthProtocol) -> int:
    """How many channels the probe must output: ``protocol.bins`` for the bin head, 1 for the linear head."""
    return int(protocol.bins) if _head(protocol) == "bins" else 1


def bin_centres(protocol: DepthProtocol, device: torch.device | str | None = None, dtype=torch.float32) -> Tensor:
    """The K = ``protocol.bins`` bin centres in metres, ``linspace(min_depth, max_depth, K)``."""
    return torch.linspace(
        float(protocol.min_depth), float(protocol.max_depth), int(protocol.bins), device=device, dtype=dtype
    )


def decode(out: Tensor, protocol: DepthProtocol) -> Tensor:
    """The probe's output ``[B, C, H, W]`` as depth ``[B, H, W]`` in metres (see the module docstring).

    ``C`` must be :func:`outputs` (``protocol.bins`` for ``"bins"``, 1 for ``"linear"``). Half-precision
    outputs are decoded in float32. Differentiable.
    """
    if not isinstance(out, Tensor) or out.ndim != 4:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"depth decode: the probe output must be a [B, C, H, W] tensor, got {shape}")
    if not out.dtype.is_floating_point:
        raise ValueError(f"depth decode: the probe output must be a float tensor, got {out.dtype}")
    head = _head(protocol)
    want = outputs(protocol)
    if out.shape[1] != want:
        what = f"protocol.bins={want} channels" if head == "bins" else "1 channel (metres)"
        raise ValueError(
            f"depth decode: the {head!r} head needs {what}, the probe output has {out.shape[1]}; build the probe "
            f"with outputs(protocol) = {want} channels (or pick the protocol it was trained for)"
        )
    if out.dtype in (torch.float16, torch.bfloat16):
        out = out.float()
    if head == "linear":
        return out[:, 0]
    p = torch.relu(out) + BIN_EPS
    p = p / p.sum(dim=1, keepdim=True)
    return torch.einsum("bkhw,k->bhw", p, bin_centres(protocol, out.device, out.dtype))


# ----------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------


def _check_pair(pred: Tensor, gt: Tensor, what: str) -> None:
    if not isinstance(pred, Tensor) or not isinstance(gt, Tensor):
        raise TypeError(f"{what}: pred and gt must be torch tensors, got {type(pred).__name__} and {type(gt).__name__}")
    if pred.shape != gt.shape:
        raise ValueError(
            f"{what}: pred {tuple(pred.shape)} and gt {tuple(gt.shape)} differ in shape; resize the prediction "
            "to the label's size first"
        )
    if not pred.dtype.is_floating_point or not gt.dtype.is_floating_point:
        raise ValueError(f"{what}: pred and gt must be float tensors of metres, got {pred.dtype} and {gt.dtype}")


def _zero(pred: Tensor) -> Tensor:
    """A scalar 0 that still backpropagates (zero gradients) into ``pred``'s graph, even where ``pred`` is
    not finite: the sum over an empty slice."""
    return pred.reshape(-1)[:0].sum()


def _log_diff(pred: Tensor, gt: Tensor, valid: Tensor, eps: float) -> Tensor:
    """``log(pred + eps) - log(gt + eps)`` where ``valid``, 0 elsewhere. ``pred`` below 0 enters the log as 0
    (the bin head never predicts below ``min_depth``; a linear head's negative depths get no gradient)."""
    safe_gt = torch.where(valid, gt, torch.ones_like(gt))
    diff = torch.log(pred.clamp(min=0) + eps) - torch.log(safe_gt + eps)
    return torch.where(valid, diff, torch.zeros_like(diff))


def sig_loss(pred: Tensor, gt: Tensor, lam: float = 0.85, eps: float = 1e-3) -> Tensor:
    """The scale-invariant log loss (SigLoss, Eigen et al. 2014 as AdaBins / DINOv2 / probe3d use it), pooled
    over every valid pixel (``gt > 0``) of the batch, any shape::

        g = log(pred + eps) - log(gt + eps);  loss = sqrt(mean(g²) - lam * mean(g)²)

    Returns a differentiable scalar; 0 (with a gradient path) when no pixel is valid or the variance term
    is 0 (where the square root's gradient would be infinite).
    """
    _check_pair(pred, gt, "sig_loss")
    valid = gt > 0
    n = int(valid.sum())
    if n == 0:
        return _zero(pred)
    g = _log_diff(pred, gt, valid, eps)
    var = g.pow(2).sum() / n - lam * (g.sum() / n).pow(2)
    safe = var.clamp(min=torch.finfo(var.dtype).tiny)
    return torch.where(var > 0, safe.sqrt(), var * 0)


def gradient_strides(scales: int) -> list[int]:
    """The strides of :func:`gradient_loss`'s scales: 1, then ``2 * i`` for ``i = 1 .. scales - 1``
    (4 scales: 1, 2, 4, 6, as probe3d)."""
    if isinstance(scales, bool) or not isinstance(scales, int) or scales < 1:
        raise ValueError(f"gradient_loss: scales must be a positive int, got {scales!r}")
    return [1] + [2 * i for i in range(1, scales)]


def gradient_loss(pred: Tensor, gt: Tensor, scales: int = 4, eps: float = 1e-3) -> Tensor:
    """The multi-scale log-gradient matching loss (MegaDepth, as DINOv2 and probe3d use it) on ``[..., H, W]``.

    For each stride ``s`` of :func:`gradient_strides` (plain striding ``[..., ::s, ::s]``, no pooling):
    ``valid = gt > 0``, ``N`` = number of valid pixels (pooled over the batch), ``d = log(pred + eps) -
    log(gt + eps)`` on valid pixels (0 elsewhere); the vertical terms are ``|d[y] - d[y + 2]|`` (a step of
    *two* pixels) where both pixels are valid, the horizontal terms likewise along x; the scale adds
    ``(Σ vertical + Σ horizontal) / N``. The loss is the sum over the scales. A scale with no valid pixel
    adds 0 (probe3d would divide by zero there).
    """
    _check_pair(pred, gt, "gradient_loss")
    if pred.ndim < 2:
        raise ValueError(f"gradient_loss: pred and gt must be [..., H, W], got shape {tuple(pred.shape)}")
    total = _zero(pred)
    for s in gradient_strides(scales):
        p = pred[..., ::s, ::s]
        t = gt[..., ::s, ::s]
        valid = t > 0
        n = int(valid.sum())
        if n == 0:
            continue
        d = _log_diff(p, t, valid, eps)
        vertical = (d[..., :-2, :] - d[..., 2:, :]).abs() * (valid[..., :-2, :] & valid[..., 2:, :])
        horizontal = (d[..., :, :-2] - d[..., :, 2:]).abs() * (valid[..., :, :-2] & valid[..., :, 2:])
        total = total + (vertical.sum() + horizontal.sum()) / n
    return total


def depth_loss(pred: Tensor, gt: Tensor, protocol: DepthProtocol) -> Tensor:
    """The protocol's training loss for predicted depth ``pred`` and ground truth ``gt`` (both ``[B, H, W]``
    metres on the same grid), a differentiable scalar.

    Ground truth deeper than ``protocol.max_depth`` (and non-finite ground truth) counts as invalid; the
    caller's ``gt`` is not modified. ``protocol.loss``: ``"sig+gradient"`` = ``sig_weight * sig_loss(lam =
    sig_lambda) + gradient_weight * gradient_loss(scales = gradient_scales)``, ``"l1"`` = mean ``|pred - gt|``
    over the valid pixels. A batch with no valid pixel gives 0 with a gradient path (every parameter still
    gets a (zero) gradient, so DistributedDataParallel's step goes through).

    The losses are not sums over pixels (SigLoss pools a variance over the batch), so under
    DistributedDataParallel each process's loss is its own share's, as probe3d trains.
    """
    _check_pair(pred, gt, "depth_loss")
    if pred.ndim != 3:
        raise ValueError(f"depth_loss: pred and gt must be [B, H, W], got shape {tuple(pred.shape)}")
    loss = getattr(protocol, "loss", None)
    if loss not in LOSSES:
        raise ValueError(f"depth_loss: protocol.loss must be one of {LOSSES}, got {loss!r}")
    if pred.dtype in (torch.float16, torch.bfloat16):
        pred = pred.float()
    gt = gt.detach().to(pred.dtype)
    keep = torch.isfinite(gt) & (gt <= float(protocol.max_depth))
    gt = torch.where(keep, gt, torch.zeros_like(gt))  # a new tensor: the caller's gt is left as it was
    valid = gt > 0
    if not bool(valid.any()):
        return _zero(pred)
    if loss == "l1":
        return (pred - gt).abs()[valid].mean()
    sig = sig_loss(pred, gt, lam=float(protocol.sig_lambda))
    grad = gradient_loss(pred, gt, scales=int(protocol.gradient_scales))
    return float(protocol.sig_weight) * sig + float(protocol.gradient_weight) * grad


# ----------------------------------------------------------------------------------------------
# Saved predictions: 16-bit millimetre PNGs
# ----------------------------------------------------------------------------------------------


def _millimetres(depth: Any, what: str) -> np.ndarray:
    """``depth`` (metres) as whole millimetres, uint16, rounded half to even and clipped to 0..65535."""
    array = depth.detach().to("cpu", torch.float64).numpy() if isinstance(depth, Tensor) else np.asarray(depth)
    if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{what}: depth must be numbers of metres, got dtype {array.dtype}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError(
            f"{what}: depth holds {int((~np.isfinite(array)).sum())} NaN or infinite values; a 16-bit PNG cannot "
            "store them (a diverged probe? check the training loss)"
        )
    return np.clip(np.round(array * 1000.0), 0, 65535).astype(np.uint16)


def quantise_mm(depth: Tensor) -> Tensor:
    """``depth`` (metres, any shape) as it reads back from :func:`save_depth_png`: rounded to whole millimetres
    (half to even) and clipped to ``[0, MAX_PNG_METRES]``, same dtype and device.

    The evaluation scores this, not the raw prediction, so the metrics equal those recomputed from the saved
    PNGs (the change is at most 0.5 mm per pixel inside the range). Non-finite values raise ``ValueError``.
    """
    if not isinstance(depth, Tensor) or not depth.dtype.is_floating_point:
        raise ValueError(f"quantise_mm: depth must be a float tensor of metres, got {type(depth).__name__}")
    if not bool(torch.isfinite(depth).all()):
        raise ValueError(
            f"quantise_mm: depth holds {int((~torch.isfinite(depth)).sum())} NaN or infinite values; a 16-bit "
            "PNG cannot store them (a diverged probe? check the training loss)"
        )
    mm = torch.round(depth.to(torch.float64) * 1000.0).clamp(0, 65535)
    return (mm / 1000.0).to(depth.dtype)


def save_depth_png(path: str | os.PathLike, depth: Tensor | np.ndarray) -> None:
    """Write ``depth`` ``[H, W]`` (metres) to ``path`` as a 16-bit grey PNG of whole millimetres (rounded half
    to even, clipped to 0..65535), atomically; the parent folder is created. 0 reads as invalid in NYU's
    convention, so a prediction below 0.5 mm saves as "no depth"."""
    mm = _millimetres(depth, "save_depth_png")
    if mm.ndim != 2:
        raise ValueError(f"save_depth_png: depth must be [H, W], got shape {mm.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        Image.fromarray(mm).save(tmp, format="PNG")


def read_depth_png(path: str | os.PathLike) -> Tensor:
    """A 16-bit grey millimetre PNG as float32 metres ``[H, W]`` (0 = invalid); another kind of PNG raises
    :class:`~featlift.errors.DatasetFormatError` (a ``ValueError``)."""
    path = Path(path)
    with Image.open(path) as im:
        if im.mode not in ("I;16", "I;16B", "I;16L", "I"):
            raise DatasetFormatError(
                f"{path}: a depth PNG must be 16-bit grey (millimetres), got mode {im.mode}; save depths with "
                "save_depth_png (or as uint16 millimetres)"
            )
        mm = np.array(im).astype(np.float64)
    return torch.from_numpy(mm / 1000.0).to(torch.float32)
