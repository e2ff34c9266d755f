"""What differs between the probe tasks, in one object each: which item key is the target, how many
outputs the probe has, its loss, how its output becomes a prediction, the metric, and how predictions are
saved. The probe loop (:mod:`.probe`) and the run (:mod:`.run`) ask the :class:`Task` and never branch on
the task's name.

- ``seg``: ``label`` targets (255 = ignored); cross-entropy over the labelled pixels, normalised by their
  count over the whole global batch; argmax; mIoU from one confusion matrix; 8-bit PNG class indices.
- ``depth``: ``depth`` targets in metres (0 = invalid, deeper than the protocol's ``max_depth`` invalid);
  the protocol's head (:func:`featlift.eval.depth.decode`) and loss; per-image metrics averaged over
  images; 16-bit PNG millimetres. Predictions are rounded to whole millimetres before they are scored, so
  the saved files give back exactly the reported numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .._atomic import atomic_write
from .depth import decode, depth_loss, outputs, quantise_mm, save_depth_png
from .metrics import DepthMetric, SegmentationMetric
from .protocols import ProbeProtocol

__all__ = ["TASKS", "Task", "get_task"]


def at_label_size(out: Tensor, target: Tensor) -> Tensor:
    """``out`` [B, K, h, w] resized bilinearly to the target's [H, W] where they differ."""
    if out.shape[-2:] == target.shape[-2:]:
        return out
    return F.interpolate(out, size=target.shape[-2:], mode="bilinear", align_corners=False)


def save_png8(path: Path, values: Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        Image.fromarray(values.to(torch.uint8).cpu().numpy()).save(tmp, format="PNG")


@dataclass(frozen=True)
class Task:
    """One probe task (see the module docstring)."""

    name: str
    target_key: str
    outputs: Callable[[Any, ProbeProtocol], int]  # (dataset, protocol) -> probe output channels
    loss_terms: Callable[[Tensor, Tensor, ProbeProtocol, int], tuple[Tensor, Tensor]]
    predict: Callable[[Tensor, ProbeProtocol], Tensor]  # probe output at label size -> prediction
    as_saved: Callable[[Tensor], Tensor]  # a target as its saved file holds it (what the metric scores)
    metric: Callable[[Any, ProbeProtocol, torch.device], Any]
    save: Callable[[Path, Tensor], None]  # one prediction or target as a file
    colour: Callable[[Tensor, Tensor], np.ndarray]  # (prediction or target, target) -> RGB uint8 [H, W, 3]

    def target(self, batch: dict) -> Tensor:
        return batch[self.target_key]


# --------------------------------------------------------------------------------------------------
# Segmentation
# --------------------------------------------------------------------------------------------------


def _seg_loss(out: Tensor, target: Tensor, protocol: ProbeProtocol, ignore_index: int) -> tuple[Tensor, Tensor]:
    """The summed cross-entropy over the labelled pixels, and their count (the loop divides by the global
    count: the mean over the batch's labelled pixels, as JAFAR and NAF compute it)."""
    valid = target != ignore_index
    loss = F.cross_entropy(out.float(), target, ignore_index=ignore_index, reduction="sum")
    return loss, valid.sum()


def _seg_metric(dataset, protocol: ProbeProtocol, device: torch.device):
    return SegmentationMetric(dataset.num_classes, dataset.ignore_index, dataset.class_names, device=device)


def _class_colours(values: Tensor, target: Tensor) -> np.ndarray:
    """Class indices in a fixed pseudo-random palette; ignored pixels (255) black."""
    colours = np.random.default_rng(0).integers(40, 256, size=(256, 3), dtype=np.uint8)
    colours[255] = 0
    return colours[values.clamp(0, 255).to(torch.int64).numpy()]


SEGMENTATION = Task(
    name="seg",
    target_key="label",
    outputs=lambda dataset, protocol: dataset.num_classes,
    loss_terms=_seg_loss,
    predict=lambda out, protocol: out.argmax(1),
    as_saved=lambda target: target,
    metric=_seg_metric,
    save=save_png8,
    colour=_class_colours,
)


# --------------------------------------------------------------------------------------------------
# Depth
# --------------------------------------------------------------------------------------------------


def _depth_loss(out: Tensor, target: Tensor, protocol, ignore_index: int) -> tuple[Tensor, Tensor]:
    """The protocol's depth loss of this batch, weighing one (a process's share under torchrun: the
    processes' losses are averaged)."""
    loss = depth_loss(decode(out.float(), protocol), target.float(), protocol)
    return loss, torch.ones((), dtype=torch.int64, device=loss.device)


def _depth_predict(out: Tensor, protocol) -> Tensor:
    return quantise_mm(decode(out.float(), protocol))


def _depth_as_saved(target: Tensor) -> Tensor:
    """Ground truth in whole millimetres, as its 16-bit PNG holds it (at most 0.5 mm from the raw value),
    so the saved files give back exactly the reported numbers."""
    return quantise_mm(torch.nan_to_num(target.float(), nan=0.0, posinf=0.0, neginf=0.0))


def _depth_metric(dataset, protocol, device: torch.device):
    return DepthMetric(max_depth=protocol.max_depth, device=device)


def _depth_grey(values: Tensor, target: Tensor) -> np.ndarray:
    """Depth as grey from near (black) to far (white), over the target's valid range."""
    valid = target[target > 0]
    lo, hi = (float(valid.min()), float(valid.max())) if valid.numel() else (0.0, 1.0)
    grey = ((values.float().numpy() - lo) / max(hi - lo, 1e-6)).clip(0, 1)
    return np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=2)


DEPTH = Task(
    name="depth",
    target_key="depth",
    outputs=lambda dataset, protocol: outputs(protocol),
    loss_terms=_depth_loss,
    predict=_depth_predict,
    as_saved=_depth_as_saved,
    metric=_depth_metric,
    save=save_depth_png,
    colour=_depth_grey,
)

TASKS: dict[str, Task] = {t.name: t for t in (SEGMENTATION, DEPTH)}


def get_task(name: str | Task) -> Task:
    """The task ``name`` (a :class:`Task` is returned as it is)."""
    if isinstance(name, Task):
        return name
    if name not in TASKS:
        raise ValueError(f"unknown probe task {name!r}; choose one of {tuple(TASKS)}")
    return TASKS[name]
