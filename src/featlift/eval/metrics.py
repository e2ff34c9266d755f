"""Dense-probe metrics: semantic segmentation (mIoU, pixel accuracy) and monocular depth (δ1-3, RMSE, AbsRel).

Both metrics accumulate over a whole validation set and sync across DDP processes through torchmetrics
(the optional ``eval`` extra, imported on first use). Call :meth:`update` once per batch, :meth:`compute`
once at the end, :meth:`reset` before the next evaluation.

Segmentation follows the usual benchmark definition: one ``[K, K]`` confusion matrix over every counted pixel
of the set (rows = target class, columns = predicted class, pixels whose target is ``ignore_index`` left out);
IoU of class ``k`` = TP / (TP + FP + FN) from that matrix; mIoU = the mean over the classes whose union
TP + FP + FN is non-zero (a class absent from both targets and predictions reports ``None`` and does not count);
pixel accuracy = trace / counted pixels. No per-image averaging.

Depth follows probe3d (``mbanani/probe3d``, ``evals/utils/metrics.py``): every error is computed per image over
that image's valid pixels (target finite, ``> 0`` and ``<= max_depth``), then averaged over the images, so every
image weighs the same whatever its size (this is not a pixel-weighted mean over the set). Each is reported as
predicted ("scale-aware") and after a per-image least-squares scale and shift ("aligned"). Images without a
valid pixel are skipped.
"""

from __future__ import annotations

import functools
import logging
import warnings
from typing import Any

import torch
from torch import Tensor

from featlift.errors import require

__all__ = ["DELTA1_THRESHOLD", "DEPTH_KEYS", "PRED_FLOOR", "DepthMetric", "SegmentationMetric"]

logger = logging.getLogger(__name__)

PRED_FLOOR = 1e-9
"""In ``target / pred`` the prediction is floored at this many metres (probe3d's ``clamp(min=1e-9)``)."""

DELTA1_THRESHOLD = 1.25
"""δK counts the valid pixels with ``max(pred / target, target / pred) < DELTA1_THRESHOLD ** K``."""


def require_torchmetrics() -> Any:
    return require("torchmetrics", feature="featlift's evaluation metrics", extra="eval")


def _check_same_shape(pred: Tensor, target: Tensor, what: str) -> None:
    if not isinstance(pred, Tensor) or not isinstance(target, Tensor):
        raise TypeError(
            f"{what}: pred and target must be torch tensors, got {type(pred).__name__} and {type(target).__name__}"
        )
    if pred.ndim != 3 or target.ndim != 3:
        raise ValueError(
            f"{what}: pred and target must be [B, H, W], got shapes {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if pred.shape != target.shape:
        raise ValueError(
            f"{what}: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape; "
            "resize the prediction to the label's resolution first"
        )


class _Summed:
    """A metric whose state is a torchmetrics ``Metric`` (:attr:`_state`), summed across DDP processes."""

    def _hold(self, state, device: torch.device | str | None) -> None:
        self._state = state if device is None else state.to(device)

    @property
    def device(self) -> torch.device:
        return self._state.device

    def reset(self) -> None:
        """Forget every update (start a new set)."""
        self._state.reset()


class SegmentationMetric(_Summed):
    """Confusion-matrix segmentation metric (mIoU, pixel accuracy, per-class IoU) over a whole set.

    Args:
        num_classes: K, the number of classes; valid labels are ``0 .. K-1``.
        ignore_index: target value whose pixels are left out (default 255); ``None`` counts every pixel. It must
            not be a valid class index.
        class_names: K distinct names, the keys of ``compute()["iou"]``; default ``"0" .. "K-1"``.
        device: where the confusion matrix lives (default CPU); move inputs there before :meth:`update`.

    ``update(pred, target)``: both int ``[B, H, W]`` on the same grid; ``pred`` holds class indices in
    ``0 .. K-1`` (anything else raises ``ValueError``), ``target`` class indices or ``ignore_index``.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = 255,
        class_names: list[str] | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if ignore_index is not None:
            if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
                raise ValueError(f"ignore_index must be an int or None, got {ignore_index!r}")
            if 0 <= ignore_index < num_classes:
                raise ValueError(
                    f"ignore_index={ignore_index} is also a valid class index (num_classes={num_classes}); "
                    "remap that class's labels to a value outside 0..num_classes-1 (e.g. 255) instead"
                )
        if class_names is None:
            class_names = [str(k) for k in range(num_classes)]
        else:
            class_names = [str(name) for name in class_names]
            if len(class_names) != num_classes:
                raise ValueError(f"class_names has {len(class_names)} names for num_classes={num_classes}")
            if len(set(class_names)) != num_classes:
                raise ValueError("class_names must be distinct (they key the per-class IoU)")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = class_names
        require_torchmetrics()  # a clear MissingDependencyError when the eval extra is missing
        from torchmetrics.classification import MulticlassConfusionMatrix

        # The inputs are checked here (clear ValueErrors), so torchmetrics' own (slower) validation is skipped.
        self._hold(MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index, validate_args=False), device)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch: ``pred`` and ``target`` int ``[B, H, W]`` (see the class docstring)."""
        _check_same_shape(pred, target, "SegmentationMetric.update")
        for name, t in (("pred", pred), ("target", target)):
            if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
                raise ValueError(
                    f"SegmentationMetric.update: {name} must hold integer class indices, got dtype {t.dtype} "
                    "(take the argmax over the class dimension first)"
                )
        if pred.numel() == 0:
            return
        k = self.num_classes
        pred = pred.to(device=self.device, dtype=torch.int64)
        target = target.to(device=self.device, dtype=torch.int64)
        counted = (
            target != self.ignore_index if self.ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
        )
        bad_target = counted & ((target < 0) | (target >= k))
        if bool(bad_target.any()):
            values = torch.unique(target[bad_target])[:8].tolist()
            raise ValueError(
                f"SegmentationMetric.update: target holds values {values} outside 0..{k - 1} that are not "
                f"ignore_index={self.ignore_index}"
            )
        bad_pred = (pred < 0) | (pred >= k)
        if bool(bad_pred.any()):
            values = torch.unique(pred[bad_pred])[:8].tolist()
            raise ValueError(
                f"SegmentationMetric.update: pred holds values {values} outside 0..{k - 1}; predictions "
                "must be class indices (they are never dropped silently)"
            )
        self._state.update(pred, target)

    @property
    def confusion(self) -> Tensor:
        """``[K, K]`` int64 confusion matrix, rows = target class, columns = predicted class, summed over every
        update (and over every process under DDP)."""
        # Always through compute(): under DDP every process must join the sync, even one that saw no batch.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self._state.compute().to(torch.int64)

    def compute(self) -> dict[str, Any]:
        """``{"miou": float, "pixel_accuracy": float, "iou": {class_name: float | None}}``.

        Raises ``ValueError`` when no pixel was counted (no update, or every target pixel ignored).
        """
        cm = self.confusion.to(device="cpu", dtype=torch.float64)
        total = float(cm.sum())
        if total == 0:
            raise ValueError(
                "SegmentationMetric.compute: no pixel was counted (no update, or every target pixel was ignore_index)"
            )
        tp = torch.diagonal(cm)
        union = cm.sum(dim=0) + cm.sum(dim=1) - tp  # TP + FP + FN
        present = union > 0
        iou = torch.where(present, tp / union.clamp(min=1), torch.zeros_like(tp))
        per_class = {name: (float(iou[k]) if bool(present[k]) else None) for k, name in enumerate(self.class_names)}
        miou = float(iou[present].mean())
        return {"miou": miou, "pixel_accuracy": float(tp.sum() / total), "iou": per_class}


DEPTH_KEYS = ("d1", "d2", "d3", "rmse", "abs_rel")
"""The per-image depth errors; each is also reported after alignment, as ``KEY + "_aligned"``."""

_DEPTH_STATES = DEPTH_KEYS + tuple(f"{key}_aligned" for key in DEPTH_KEYS)


@functools.cache
def _depth_sums_class() -> type:
    tm = require_torchmetrics()

    class _DepthSums(tm.Metric):
        """Sums of per-image values and the image count; ``dist_reduce_fx="sum"`` adds them up across processes."""

        full_state_update = False
        is_differentiable = False
        higher_is_better = None

        def __init__(self) -> None:
            super().__init__()
            zero = torch.zeros((), dtype=torch.float64)
            for key in (*_DEPTH_STATES, "images"):
                self.add_state(key, default=zero.clone(), dist_reduce_fx="sum")

        def update(self, sums: dict[str, Tensor]) -> None:
            for key, value in sums.items():
                setattr(self, key, getattr(self, key) + value)

        def compute(self) -> dict[str, Tensor]:
            return {key: getattr(self, key) for key in (*_DEPTH_STATES, "images")}

    return _DepthSums


def _align(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """``s * pred + t`` per image, with the least-squares scale ``s`` and shift ``t`` over the valid pixels
    (minimising ``Σ (s p + t - g)²``); ``s = 1, t = 0`` where that system is singular (a constant prediction,
    one valid pixel). Inputs ``[B, H, W]`` float64."""
    w = valid.to(pred.dtype)
    n = w.sum(dim=(1, 2)).clamp(min=1)
    p_mean = (w * pred).sum(dim=(1, 2)) / n
    g_mean = (w * target.nan_to_num(0.0)).sum(dim=(1, 2)) / n
    pc = torch.where(valid, pred - p_mean[:, None, None], torch.zeros_like(pred))
    gc = torch.where(valid, target - g_mean[:, None, None], torch.zeros_like(target))
    spread = pc.pow(2).sum(dim=(1, 2))  # n * var(p) = det(normal equations) / n
    energy = torch.where(valid, pred, torch.zeros_like(pred)).pow(2).sum(dim=(1, 2))
    solvable = spread > 1e-12 * energy  # relative: rounding makes an exactly constant prediction's spread tiny
    scale = torch.where(solvable, (pc * gc).sum(dim=(1, 2)) / spread.clamp(min=1e-300), torch.ones_like(spread))
    shift = torch.where(solvable, g_mean - scale * p_mean, torch.zeros_like(spread))
    return pred * scale[:, None, None] + shift[:, None, None]


def _per_image(pred: Tensor, target: Tensor, valid: Tensor, n: Tensor) -> dict[str, Tensor]:
    """Each image's d1, d2, d3, rmse, abs_rel over its valid pixels (``[B]`` each; ``n`` = valid counts,
    at least 1)."""
    gt = torch.where(valid, target, torch.ones_like(target))
    p = torch.where(valid, pred, torch.ones_like(pred))
    thr = torch.maximum(gt / p.clamp(min=PRED_FLOOR), p / gt)
    w = valid.to(pred.dtype)

    def mean(x: Tensor) -> Tensor:
        return (x * w).sum(dim=(1, 2)) / n

    out = {f"d{k}": mean((thr < DELTA1_THRESHOLD**k).to(pred.dtype)) for k in (1, 2, 3)}
    out["rmse"] = mean((gt - p).pow(2)).sqrt()
    out["abs_rel"] = mean((p - gt).abs() / gt)
    return out


class DepthMetric(_Summed):
    """probe3d's depth metrics, per image then averaged over the images: δ1, δ2, δ3, RMSE (metres), AbsRel,
    scale-aware (the prediction as it is) and after a per-image scale-and-shift alignment.

    ``update(pred, target)``: float ``[B, H, W]`` depths in metres on the same grid. A pixel is valid where
    ``target`` is finite, ``> 0`` and ``<= max_depth`` (probe3d zeroes deeper ground truth); ``pred`` there
    must be finite (else ``ValueError``). For each image, over its valid pixels:

    - ``thr = max(t / p, p / t)`` (``p`` floored at :data:`PRED_FLOOR` in the denominator); ``dK`` = the fraction
      with ``thr < 1.25**K``;
    - ``rmse = sqrt(mean (t - p)²)``, ``abs_rel = mean |p - t| / t``;
    - the same after alignment: ``p -> s p + t0`` with the least-squares scale ``s`` and shift ``t0`` of that
      image (on depth, not inverse depth; ``s = 1, t0 = 0`` where the fit is singular), not clamped.

    ``compute()`` returns the mean over the counted images of each value: ``{"d1", "d2", "d3", "rmse",
    "abs_rel", "d1_aligned", "d2_aligned", "d3_aligned", "rmse_aligned", "abs_rel_aligned"}`` as floats plus
    ``"images"`` (int). Every image weighs the same, whatever its size or valid-pixel count. **An image with
    no valid pixel is skipped: it is not counted in ``images`` and adds nothing** (probe3d would count it with
    zeros; the NYU test frames all have depth). The per-image values are float64 and their sums are
    torchmetrics sum states, so under DDP the processes' sums and counts add up.

    Predictions are scored as given: to score what is saved, pass :func:`featlift.eval.depth.quantise_mm` of
    the prediction.

    Args:
        max_depth: ground truth deeper than this (metres) is invalid (default 10, probe3d's NYU setting;
            ``math.inf`` keeps every depth).
        device: where the sums live (default CPU); inputs are moved there.
    """

    def __init__(self, max_depth: float = 10.0, device: torch.device | str | None = None) -> None:
        if isinstance(max_depth, bool) or not isinstance(max_depth, (int, float)) or not max_depth > 0:
            raise ValueError(
                f"DepthMetric: max_depth must be a positive number of metres (math.inf for no limit), got {max_depth!r}"
            )
        self.max_depth = float(max_depth)
        self._hold(_depth_sums_class()(), device)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch of images: ``pred`` and ``target`` float ``[B, H, W]`` metres (see the class docstring)."""
        _check_same_shape(pred, target, "DepthMetric.update")
        for name, t in (("pred", pred), ("target", target)):
            if not t.dtype.is_floating_point:
                raise ValueError(f"DepthMetric.update: {name} must be a float tensor of metres, got {t.dtype}")
        pred = pred.detach().to(device=self.device, dtype=torch.float64)
        target = target.detach().to(device=self.device, dtype=torch.float64)
        valid = torch.isfinite(target) & (target > 0) & (target <= self.max_depth)
        bad = valid & ~torch.isfinite(pred)
        if bool(bad.any()):
            raise ValueError(
                f"DepthMetric.update: pred is NaN or infinite at {int(bad.sum())} valid pixels (a diverged probe? "
                "check the training loss)"
            )
        pred = torch.where(valid, pred, torch.zeros_like(pred))
        counts = valid.sum(dim=(1, 2))
        counted = counts > 0
        if not bool(counted.all()):
            logger.debug("DepthMetric.update: %d image(s) without a valid pixel skipped", int((~counted).sum()))
            if not bool(counted.any()):
                return
        pred, target, valid, counts = pred[counted], target[counted], valid[counted], counts[counted]
        n = counts.to(torch.float64)
        values = _per_image(pred, target, valid, n)
        values.update(
            {f"{key}_aligned": v for key, v in _per_image(_align(pred, target, valid), target, valid, n).items()}
        )
        sums = {key: v.sum() for key, v in values.items()}
        sums["images"] = n.new_tensor(float(n.numel()))
        self._state.update(sums)

    def compute(self) -> dict[str, float | int]:
        """The per-image means (see the class docstring) and ``"images"``; ``ValueError`` when no image was
        counted."""
        # Sync first (every process must join, even one that saw no batch), then check.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sums = {k: float(v) for k, v in self._state.compute().items()}
        images = round(sums.pop("images"))
        if images == 0:
            raise ValueError(
                "DepthMetric.compute: no image was counted (no update, or no target pixel finite, > 0 and "
                f"<= max_depth={self.max_depth})"
            )
        out: dict[str, float | int] = {key: sums[key] / images for key in _DEPTH_STATES}
        out["images"] = images
        return out
