"""The linear probe: a 1x1 convolution trained on frozen pixel-dense features, then evaluated.

Every setting comes from the run's protocol (:mod:`.protocols`; a :class:`~.protocols.ProbeProtocol`):
AdamW (``lr``, ``betas``, ``weight_decay``), the learning-rate ``schedule`` stepped every step, ``epochs``,
the global ``batch_size``, the horizontal ``flip`` probability (one draw per batch; image and target
flipped before any feature is computed, so the backbone and the upsampler's guidance see the flipped
image), and the probe's precision (float32 in every published protocol). What depends on the task (the
target, the loss, the prediction, the metric, saved files) comes from its :class:`~.tasks.Task`.
Predictions are made at the label resolution (outputs resized bilinearly first when the sizes differ).

Data order: with ``shuffle`` epoch ``e`` visits the training set in a permutation drawn from ``(seed, e)``
alone (in file order without), cut into global batches; the flip of batch ``i`` is drawn from
``(seed, e, i)``. Under ``torchrun`` each global batch is split across the processes, the probe is wrapped
in DistributedDataParallel, and the segmentation loss is normalised by the global count of labelled
pixels, so the gradient of every step, and hence the probe and its metrics, equal a single process's (up
to floating-point summation order); the depth loss is each process's own share, averaged. Evaluation
shards the validation set and the metrics sum their states across processes.

With a checkpoint path the probe, optimiser and schedule are saved after every epoch; ``resume``
continues from the last saved epoch, which gives the same probe as an uninterrupted run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, default_collate

from .._atomic import atomic_write
from .._distributed import Dist, shard
from ..errors import CheckpointError
from .datasets.transform import flip_batch
from .protocols import ProbeProtocol, lr_factor, task_default
from .tasks import Task, at_label_size, get_task
from .upsamplers import FeatureSource

__all__ = ["evaluate_probe", "slug", "train_probe"]

logger = logging.getLogger(__name__)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True) -> list[list[int]]:
    """The global batches of ``epoch``: a permutation of ``range(n)`` drawn from ``(seed, epoch)`` (file
    order without ``shuffle``), cut into runs of ``batch_size`` (the last may be shorter)."""
    if shuffle:
        state = np.random.SeedSequence([seed, epoch]).generate_state(1)[0]
        order = torch.randperm(n, generator=torch.Generator().manual_seed(int(state))).tolist()
    else:
        order = list(range(n))
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def _flip_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, epoch, index, 1]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def share(batch: list[int], d: Dist) -> list[int]:
    return [batch[i] for i in shard(len(batch), d)]


def _autocast(device: torch.device, protocol: ProbeProtocol):
    """The probe's precision: float32 (every published protocol), or bf16 autocast on CUDA."""
    enabled = device.type == "cuda" and protocol.probe_dtype == "bfloat16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def save_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(path: Path, protocol: ProbeProtocol, outputs: int, channels: int) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several kinds for a damaged or foreign file
        raise CheckpointError(f"{path}: not a readable probe checkpoint ({err}); delete it to start over") from err
    want = {"epochs": protocol.epochs, "outputs": outputs, "channels": channels}
    found = {key: state.get(key) for key in want}
    if found != want:
        raise CheckpointError(f"{path}: saved for {found}, this run has {want}; delete it or match the settings")
    return state


def train_probe(
    source: FeatureSource,
    dataset,
    *,
    task: str | Task,
    outputs: int | None = None,
    protocol: ProbeProtocol | None = None,
    ignore_index: int = 255,
    progress: bool = False,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    dist: Dist | None = None,
) -> nn.Conv2d:
    """Train a ``Conv2d(source.channels, outputs, 1)`` on ``source``'s features of ``dataset``.

    ``dataset`` items are dicts with ``"image"`` [3, S, S] and the task's target [S, S] (``"label"`` for
    ``seg``, ``"depth"`` for ``depth``). ``outputs`` defaults to what the task asks of ``dataset`` and
    ``protocol`` (default: the task's default protocol). The data order, the flips and the probe's
    initialisation derive from ``protocol.seed`` alone, so every upsampler compared sees the same batches.
    ``checkpoint`` saves the training state after every epoch (by the main process); ``resume`` continues
    from it when it exists. ``dist`` (:func:`featlift._distributed.init_distributed`) splits every batch
    across processes.
    """
    task = get_task(task)
    protocol = task_default(task.name) if protocol is None else protocol
    outputs = task.outputs(dataset, protocol) if outputs is None else outputs
    d = dist or Dist()
    generator = torch.Generator().manual_seed(protocol.seed)
    probe = nn.Conv2d(source.channels, outputs, 1)
    with torch.no_grad():  # torch's default initialisation, drawn from the seed
        bound = 1 / source.channels**0.5
        probe.weight.uniform_(-bound, bound, generator=generator)
        probe.bias.uniform_(-bound, bound, generator=generator)
    probe = probe.to(source.device)
    steps_per_epoch = -(-len(dataset) // protocol.batch_size)
    total = protocol.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(
        probe.parameters(), lr=protocol.lr, betas=tuple(protocol.betas), weight_decay=protocol.weight_decay
    )

    def factor(step: int) -> float:
        return lr_factor(protocol.schedule, step, steps_per_epoch, protocol.epochs, protocol.warmup_epochs)

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    start = 0
    path = Path(checkpoint) if checkpoint is not None else None
    if resume and path is not None and path.is_file():
        state = _load_checkpoint(path, protocol, outputs, source.channels)
        probe.load_state_dict(state["probe"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        start = int(state["epoch"])
        logger.info("%s: resuming the probe after epoch %d of %d (%s)", source.name, start, protocol.epochs, path)
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
    for epoch in range(start, protocol.epochs):
        batches = epoch_batches(len(dataset), protocol.batch_size, protocol.seed, epoch, protocol.shuffle)
        for index, batch_ids in enumerate(batches):
            mine = share(batch_ids, d)
            if mine:
                batch = default_collate([dataset[i] for i in mine])
                images, target = batch["image"], task.target(batch)
                if protocol.flip > 0:  # the same draw on every process: it derives from the global batch
                    images, target, _ = flip_batch(
                        images, target, protocol.flip, _flip_generator(protocol.seed, epoch, index)
                    )
                target = target.to(source.device)
                feats = source.features(images)  # sources run their own precision (``amp``)
            else:  # this process's share of a short last batch is empty; it still joins the step
                feats = torch.zeros(0, source.channels, 1, 1, device=source.device)
            with _autocast(source.device, protocol):
                out = model(feats)
            if mine:
                loss_sum, count = task.loss_terms(at_label_size(out.float(), target), target, protocol, ignore_index)
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
                    "epochs": protocol.epochs,
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


@torch.no_grad()
def evaluate_probe(
    source: FeatureSource,
    probe: nn.Module,
    dataset,
    *,
    task: str | Task,
    metric,
    protocol: ProbeProtocol | None = None,
    save_dir: str | Path | None = None,
    keep: int = 0,
    progress: bool = False,
    dist: Dist | None = None,
) -> tuple[dict, list[dict]]:
    """Run the probe on ``dataset`` and return ``(metric.compute(), kept)``.

    ``metric`` has ``update(pred, target)`` / ``compute()`` (:mod:`featlift.eval.metrics`). With
    ``save_dir``, each prediction goes to ``save_dir/<slug(source.name)>/<id>.png`` and the target as
    evaluated to ``save_dir/target/<id>.png`` in the task's format (segmentation: 8-bit class indices, 255 =
    ignored; depth: 16-bit millimetres, 0 = invalid), so the metric can be recomputed from the files.
    ``kept`` holds the first ``keep`` items (image, target, prediction) for pictures. Under ``dist`` each
    process evaluates a contiguous share of ``dataset`` (the main process the first items) and
    ``metric.compute()`` sums the shares.
    """
    task = get_task(task)
    protocol = task_default(task.name) if protocol is None else protocol
    d = dist or Dist()
    probe = probe.to(source.device).eval()
    loader = DataLoader(Subset(dataset, shard(len(dataset), d)), batch_size=protocol.eval_batch_size, shuffle=False)
    kept: list[dict] = []
    items = loader
    if progress and d.main:
        from tqdm import tqdm

        items = tqdm(loader, unit="batch", desc=f"eval {source.name}", leave=False)
    for batch in items:
        target = task.as_saved(task.target(batch).to(source.device))
        out = at_label_size(source.predict(batch["image"], probe).to(source.device).float(), target)
        pred = task.predict(out, protocol)
        metric.update(pred, target)
        for i, item_id in enumerate(batch["id"]):
            if save_dir is not None:
                task.save(Path(save_dir) / slug(source.name) / f"{item_id}.png", pred[i])
                task.save(Path(save_dir) / "target" / f"{item_id}.png", target[i])
            if len(kept) < keep:
                kept.append(
                    {"id": item_id, "image": batch["image"][i], "target": target[i].cpu(), "pred": pred[i].cpu()}
                )
    return metric.compute(), kept
