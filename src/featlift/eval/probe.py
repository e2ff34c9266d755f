"""The linear probe: a 1x1 convolution trained on frozen pixel-dense features, then evaluated.

Protocol defaults (the field's, as JAFAR and NAF run it; every one is a :class:`ProbeConfig` field):
AdamW with lr 5e-4 (weight decay 0.01, AdamW's default), a cosine schedule over all steps, batch 2,
20 epochs. Segmentation trains with cross-entropy that skips the ignore label; depth regresses metres
with an L1 loss over valid pixels (depth > 0). Predictions are made at the label resolution
(logits resized bilinearly first when the sizes differ), the argmax taken after.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..atomic import atomic_write
from .upsamplers import FeatureSource

__all__ = ["TASKS", "ProbeConfig", "evaluate_probe", "slug", "train_probe"]

logger = logging.getLogger(__name__)

TASKS = ("seg", "depth")


@dataclass(frozen=True)
class ProbeConfig:
    """How the probe is trained and evaluated."""

    epochs: int = 20
    lr: float = 5e-4
    weight_decay: float = 0.01  # AdamW's default
    batch_size: int = 2
    eval_batch_size: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")


def _target(batch: dict, task: str) -> Tensor:
    return batch["label"] if task == "seg" else batch["depth"]


def _loss(out: Tensor, target: Tensor, task: str, ignore_index: int) -> Tensor:
    if task == "seg":
        return F.cross_entropy(out, target, ignore_index=ignore_index)
    valid = target > 0
    if not valid.any():
        return out.sum() * 0.0
    return (out[:, 0] - target).abs()[valid].mean()


def _at_label_size(out: Tensor, target: Tensor) -> Tensor:
    if out.shape[-2:] == target.shape[-2:]:
        return out
    return F.interpolate(out, size=target.shape[-2:], mode="bilinear", align_corners=False)


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown probe task {task!r}; choose one of {TASKS}")


def train_probe(
    source: FeatureSource,
    dataset,
    *,
    task: str,
    outputs: int,
    config: ProbeConfig = ProbeConfig(),
    ignore_index: int = 255,
    progress: bool = False,
) -> nn.Conv2d:
    """Train a ``Conv2d(source.channels, outputs, 1)`` on ``source``'s features of ``dataset``.

    ``dataset`` items are dicts with ``"image"`` [3, S, S] and ``"label"`` [S, S] (``task="seg"``) or
    ``"depth"`` [S, S] (``task="depth"``). The data order and the probe's initialisation derive from
    ``config.seed`` alone, so every upsampler compared sees the same batches.
    """
    _check_task(task)
    generator = torch.Generator().manual_seed(config.seed)
    probe = nn.Conv2d(source.channels, outputs, 1)
    with torch.no_grad():
        bound = 1 / source.channels**0.5
        probe.weight.uniform_(-bound, bound, generator=generator)
        probe.bias.uniform_(-bound, bound, generator=generator)
    probe = probe.to(source.device)
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, generator=generator)
    total = config.epochs * len(loader)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total, 1))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="step", desc=f"probe {source.name}", leave=False)
    probe.train()
    for _epoch in range(config.epochs):
        for batch in loader:
            feats = source.features(batch["image"])
            target = _target(batch, task).to(source.device)
            loss = _loss(_at_label_size(probe(feats), target), target, task, ignore_index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
    if bar is not None:
        bar.close()
    return probe.eval()


def slug(name: str) -> str:
    """``name`` as a single folder name (``/`` and ``:`` of paths and ``hub:`` specs become ``_``)."""
    return "".join("_" if c in "/\\:" else c for c in name).strip("._") or "upsampler"


def _save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


@torch.no_grad()
def evaluate_probe(
    source: FeatureSource,
    probe: nn.Module,
    dataset,
    *,
    task: str,
    metric,
    config: ProbeConfig = ProbeConfig(),
    save_dir: str | Path | None = None,
    keep: int = 0,
    progress: bool = False,
) -> tuple[dict, list[dict]]:
    """Run the probe on ``dataset`` and return ``(metric.compute(), kept)``.

    ``metric`` has ``update(pred, target)`` / ``compute()`` (:mod:`featlift.eval.metrics`). With
    ``save_dir``, segmentation predictions go to ``save_dir/<slug(source.name)>/<id>.png`` and the labels as
    evaluated to ``save_dir/target/<id>.png`` (8-bit class indices, 255 = ignored), so the metric can be
    recomputed from the files. ``kept`` holds the first ``keep`` items (image, target, prediction) for
    pictures.
    """
    _check_task(task)
    probe = probe.to(source.device).eval()
    loader = DataLoader(dataset, batch_size=config.eval_batch_size, shuffle=False)
    kept: list[dict] = []
    items = loader
    if progress:
        from tqdm import tqdm

        items = tqdm(loader, unit="batch", desc=f"eval {source.name}", leave=False)
    for batch in items:
        target = _target(batch, task).to(source.device)
        out = _at_label_size(source.predict(batch["image"], probe).to(source.device), target)
        pred = out.argmax(1) if task == "seg" else out[:, 0]
        metric.update(pred, target)
        for i, item_id in enumerate(batch["id"]):
            if save_dir is not None and task == "seg":
                _save_png(Path(save_dir) / slug(source.name) / f"{item_id}.png", pred[i].to(torch.uint8).cpu().numpy())
                _save_png(Path(save_dir) / "target" / f"{item_id}.png", target[i].to(torch.uint8).cpu().numpy())
            if len(kept) < keep:
                kept.append(
                    {"id": item_id, "image": batch["image"][i], "target": target[i].cpu(), "pred": pred[i].cpu()}
                )
    return metric.compute(), kept
