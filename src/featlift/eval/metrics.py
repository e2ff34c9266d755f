"""Dense-probe metrics: semantic segmentation (mIoU, pixel accuracy) and monocular depth (RMSE, AbsRel, δ1).

Both metrics accumulate over a whole validation set and sync across DDP processes through torchmetrics
(the optional ``eval`` extra, imported on first use). Call :meth:`update` once per batch, :meth:`compute`
once at the end, :meth:`reset` before the next evaluation.

Segmentation follows the usual benchmark definition: one ``[K, K]`` confusion matrix over every counted pixel
of the set (rows = target class, columns = predicted class, pixels whose target is ``ignore_index`` left out);
IoU of class ``k`` = TP / (TP + FP + FN) from that matrix; mIoU = the mean over the classes whose union
TP + FP + FN is non-zero (a class absent from both targets and predictions reports ``None`` and does not count);
pixel accuracy = trace / counted pixels. No per-image averaging.

Depth errors are pixel-weighted over the whole set (every valid pixel of every image weighs the same, so large
images weigh more than small ones; this is not the per-image mean some papers report). A pixel is valid where
its target is finite and ``> 0``. Predictions are clamped to at least :data:`MIN_DEPTH` (1e-3 m) before any
error is computed, so that ratios stay finite.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from typing import Any

import torch
from torch import Tensor

from featlift.errors import require

__all__ = ["DELTA1_THRESHOLD", "MIN_DEPTH", "DepthMetric", "SegmentationMetric"]

logger = logging.getLogger(__name__)

MIN_DEPTH = 1e-3
"""Predictions are clamped to at least this many metres before the depth errors are computed."""

DELTA1_THRESHOLD = 1.25
"""δ1 counts the valid pixels with ``max(pred / target, target / pred) < DELTA1_THRESHOLD``."""


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


@functools.cache
def _depth_sums_class() -> type:
    tm = require_torchmetrics()

    class _DepthSums(tm.Metric):
        """Sum states over every valid pixel; ``dist_reduce_fx="sum"`` makes them add up across processes."""

        full_state_update = False
        is_differentiable = False
        higher_is_better = None

        def __init__(self) -> None:
            super().__init__()
            zero = torch.zeros((), dtype=torch.float64)
            self.add_state("sq_err", default=zero.clone(), dist_reduce_fx="sum")
            self.add_state("abs_rel", default=zero.clone(), dist_reduce_fx="sum")
            self.add_state("delta1", default=zero.clone(), dist_reduce_fx="sum")
            self.add_state("count", default=zero.clone(), dist_reduce_fx="sum")

        def update(self, sq_err: Tensor, abs_rel: Tensor, delta1: Tensor, count: Tensor) -> None:
            self.sq_err += sq_err
            self.abs_rel += abs_rel
            self.delta1 += delta1
            self.count += count

        def compute(self) -> dict[str, Tensor]:
            return {"sq_err": self.sq_err, "abs_rel": self.abs_rel, "delta1": self.delta1, "count": self.count}

    return _DepthSums


class DepthMetric(_Summed):
    """Depth errors over every valid pixel of a set: RMSE (metres), AbsRel, δ1.

    ``update(pred, target)``: float ``[B, H, W]`` depths in metres on the same grid. A pixel counts where
    ``target`` is finite and ``> 0``; ``pred`` there must be finite (else ``ValueError``) and is clamped to at
    least :data:`MIN_DEPTH` first. ``compute()`` returns ``{"rmse", "abs_rel", "delta1"}`` as floats:

    - ``rmse = sqrt(Σ (p - t)² / N)``, ``abs_rel = Σ |p - t| / t / N``,
      ``delta1 = #{max(p / t, t / p) < 1.25} / N``, with N the valid pixels of the whole set (pixel-weighted,
      not a mean of per-image values). Sums are kept in float64.

    Args:
        device: where the sums live (default CPU); inputs are moved there.
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self._hold(_depth_sums_class()(), device)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch: ``pred`` and ``target`` float ``[B, H, W]`` metres (see the class docstring)."""
        _check_same_shape(pred, target, "DepthMetric.update")
        for name, t in (("pred", pred), ("target", target)):
            if not t.dtype.is_floating_point:
                raise ValueError(f"DepthMetric.update: {name} must be a float tensor of metres, got {t.dtype}")
        pred = pred.detach().to(device=self.device, dtype=torch.float64)
        target = target.detach().to(device=self.device, dtype=torch.float64)
        valid = torch.isfinite(target) & (target > 0)
        p = pred[valid]
        t = target[valid]
        if not bool(torch.isfinite(p).all()):
            raise ValueError(
                f"DepthMetric.update: pred is NaN or infinite at {int((~torch.isfinite(p)).sum())} valid pixels"
            )
        p = p.clamp(min=MIN_DEPTH)
        ratio = torch.maximum(p / t, t / p)
        self._state.update(
            ((p - t) ** 2).sum(),
            ((p - t).abs() / t).sum(),
            (ratio < DELTA1_THRESHOLD).sum().to(torch.float64),
            torch.tensor(float(p.numel()), dtype=torch.float64, device=self.device),
        )

    def compute(self) -> dict[str, float]:
        """``{"rmse": float, "abs_rel": float, "delta1": float}``; ``ValueError`` when no pixel was valid."""
        # Sync first (every process must join, even one that saw no batch), then check.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sums = {k: float(v) for k, v in self._state.compute().items()}
        n = sums["count"]
        if n == 0:
            raise ValueError("DepthMetric.compute: no valid pixel (no update, or no target finite and > 0)")
        return {
            "rmse": math.sqrt(sums["sq_err"] / n),
            "abs_rel": sums["abs_rel"] / n,
            "delta1": sums["delta1"] / n,
        }
