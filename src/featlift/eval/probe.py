"""The linear probe: a 1x1 convolution trained on frozen pixel-dense features, then evaluated.

Protocol defaults (the field's, as JAFAR and NAF run it; every one is a :class:`ProbeConfig` field):
AdamW with lr 5e-4 (weight decay 0.01, AdamW's default), a cosine schedule over all steps, batch 2,
20 epochs. Segmentation trains with cross-entropy that skips the ignore label; depth regresses metres
with an L1 loss over valid pixels (depth > 0). Predictions are made at the label resolution
(logits resized bilinearly first when the sizes differ), the argmax taken after.

Data order: epoch ``e`` visits the training set in a permutation drawn from ``(seed, e)`` alone, cut
into global batches of ``batch_size``. Under ``torchrun`` each global batch is split across the
processes, the probe is wrapped in DistributedDataParallel, and the loss is normalised by the global
count of valid pixels, so the gradient of every step, and hence the probe and its metrics, equal a
single process's (up to floating-point summation order). Evaluation shards the validation set and the
metrics sum their states across processes.

With a checkpoint path the probe, optimiser and schedule are saved after every epoch; ``resume``
continues from the last saved epoch, which gives the same probe as an uninterrupted run.
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
from torch.utils.data import DataLoader, Subset, default_collate

from .._atomic import atomic_write
from .._distributed import Dist, shard
from ..errors import CheckpointError
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
    batch_size: int = 2  # global: split across torchrun processes
    eval_batch_size: int = 1
    seed: int = 0
    amp: bool = True  # bf16 autocast for the probe on CUDA (ignored on the CPU)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")


def _target(batch: dict, task: str) -> Tensor:
    return batch["label"] if task == "seg" else batch["depth"]


def _loss_sum(out: Tensor, target: Tensor, task: str, ignore_index: int) -> tuple[Tensor, Tensor]:
    """The summed per-pixel loss over the valid pixels, and their count."""
    out = out.float()
    if task == "seg":
        valid = target != ignore_index
        return F.cross_entropy(out, target, ignore_index=ignore_index, reduction="sum"), valid.sum()
    valid = target > 0
    return (out[:, 0] - target).abs()[valid].sum(), valid.sum()


def _at_label_size(out: Tensor, target: Tensor) -> Tensor:
    if out.shape[-2:] == target.shape[-2:]:
        return out
    return F.interpolate(out, size=target.shape[-2:], mode="bilinear", align_corners=False)


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown probe task {task!r}; choose one of {TASKS}")


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The global batches of ``epoch``: a permutation of ``range(n)`` drawn from ``(seed, epoch)``, cut
    into runs of ``batch_size`` (the last may be shorter)."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(1)[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(state))).tolist()
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def share(batch: list[int], d: Dist) -> list[int]:
    return [batch[i] for i in shard(len(batch), d)]


def _autocast(device: torch.device, config: ProbeConfig):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and config.amp)


def save_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(path: Path, config: ProbeConfig, outputs: int, channels: int) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several kinds for a damaged or foreign file
        raise CheckpointError(f"{path}: not a readable probe checkpoint ({err}); delete it to start over") from err
    want = {"epochs": config.epochs, "outputs": outputs, "channels": channels}
    found = {key: state.get(key) for key in want}
    if found != want:
        raise CheckpointError(f"{path}: saved for {found}, this run has {want}; delete it or match the settings")
    return state


def train_probe(
    source: FeatureSource,
    dataset,
    *,
    task: str,
    outputs: int,
    config: ProbeConfig = ProbeConfig(),
    ignore_index: int = 255,
    progress: bool = False,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    dist: Dist | None = None,
) -> nn.Conv2d:
    """Train a ``Conv2d(source.channels, outputs, 1)`` on ``source``'s features of ``dataset``.

    ``dataset`` items are dicts with ``"image"`` [3, S, S] and ``"label"`` [S, S] (``task="seg"``) or
    ``"depth"`` [S, S] (``task="depth"``). The data order and the probe's initialisation derive from
    ``config.seed`` alone, so every upsampler compared sees the same batches. ``checkpoint`` saves the
    training state after every epoch (by the main process); ``resume`` continues from it when it exists.
    ``dist`` (:func:`featlift._distributed.init_distributed`) splits every batch across processes.
    """
    _check_task(task)
    d = dist or Dist()
    generator = torch.Generator().manual_seed(config.seed)
    probe = nn.Conv2d(source.channels, outputs, 1)
    with torch.no_grad():
        bound = 1 / source.channels**0.5
        probe.weight.uniform_(-bound, bound, generator=generator)
        probe.bias.uniform_(-bound, bound, generator=generator)
    probe = probe.to(source.device)
    steps_per_epoch = -(-len(dataset) // config.batch_size)
    total = config.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(probe.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total, 1))
    start = 0
    path = Path(checkpoint) if checkpoint is not None else None
    if resume and path is not None and path.is_file():
        state = _load_checkpoint(path, config, outputs, source.channels)
        probe.load_state_dict(state["probe"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        start = int(state["epoch"])
        logger.info("%s: resuming the probe after epoch %d of %d (%s)", source.name, start, config.epochs, path)
    model = probe
    if d.active:
        from torch.nn.parallel import DistributedDataParallel

        ids = [source.device.index] if source.device.type == "cuda" else None
        model = DistributedDataParallel(probe, device_ids=ids)
    bar = None
    if progress and d.main:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start * steps_per_epoch, unit="step", desc=f"probe {source.name}", leave=False)
    model.train()
    for epoch in range(start, config.epochs):
        for batch_ids in epoch_batches(len(dataset), config.batch_size, config.seed, epoch):
            mine = share(batch_ids, d)
            if mine:
                batch = default_collate([dataset[i] for i in mine])
                target = _target(batch, task).to(source.device)
                feats = source.features(batch["image"])  # sources run their own bf16 (``amp``)
            else:  # this process's share of a short last batch is empty; it still joins the step
                feats = torch.zeros(0, source.channels, 1, 1, device=source.device)
            with _autocast(source.device, config):
                out = model(feats)
            if mine:
                loss_sum, count = _loss_sum(_at_label_size(out.float(), target), target, task, ignore_index)
            else:
                loss_sum, count = out.float().sum(), torch.zeros((), dtype=torch.int64, device=source.device)
            total_count = d.sum(count).clamp(min=1)
            # DDP averages the processes' gradients: scaling by the world size makes that their sum
            loss = loss_sum * d.world / total_count
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item() / d.world:.4f}")
        if path is not None and d.main:
            save_checkpoint(
                path,
                {
                    "epoch": epoch + 1,
                    "epochs": config.epochs,
                    "outputs": outputs,
                    "channels": source.channels,
                    "probe": probe.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                },
            )
    if bar is not None:
        bar.close()
    d.barrier()
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
    dist: Dist | None = None,
) -> tuple[dict, list[dict]]:
    """Run the probe on ``dataset`` and return ``(metric.compute(), kept)``.

    ``metric`` has ``update(pred, target)`` / ``compute()`` (:mod:`featlift.eval.metrics`). With
    ``save_dir``, segmentation predictions go to ``save_dir/<slug(source.name)>/<id>.png`` and the labels as
    evaluated to ``save_dir/target/<id>.png`` (8-bit class indices, 255 = ignored), so the metric can be
    recomputed from the files. ``kept`` holds the first ``keep`` items (image, target, prediction) for
    pictures. Under ``dist`` each process evaluates a contiguous share of ``dataset`` (the main process
    the first items) and ``metric.compute()`` sums the shares.
    """
    _check_task(task)
    d = dist or Dist()
    probe = probe.to(source.device).eval()
    loader = DataLoader(Subset(dataset, shard(len(dataset), d)), batch_size=config.eval_batch_size, shuffle=False)
    kept: list[dict] = []
    items = loader
    if progress and d.main:
        from tqdm import tqdm

        items = tqdm(loader, unit="batch", desc=f"eval {source.name}", leave=False)
    for batch in items:
        target = _target(batch, task).to(source.device)
        out = _at_label_size(source.predict(batch["image"], probe).to(source.device).float(), target)
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
