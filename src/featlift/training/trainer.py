"""Train an UPLiFT upsampler for any backbone (every source, your own module too): one process, or many through torchrun (DDP).

Every random draw derives from ``(seed, step)``, or ``(seed, step, rank)`` where it is per process:

- the data order (one seeded permutation per epoch), the depth and the flips: ``(seed, step)``;
- the noise on the input features (``noise_std``): drawn for the whole global batch from a
  ``(seed, step)`` generator on the training device, each process taking its rows;
- the model's own noise channels (configs with ``decoder.noise_channels``, the VAE layout): a
  ``(seed, step, rank)`` generator on the training device, passed into the model call.

A run resumed from a checkpoint therefore continues where it stopped with the same parameters, bit for
bit, as the uninterrupted run, provided everything else is the same: the same hardware and device kind
(kernels and float summation order differ between CPUs, GPUs and thread counts), the same versions of
PyTorch, timm and featlift, the same image list in the same order with unchanged files, the same config
(``--base``, ``--backbone``, backbone weights, image size, depths, loss, noise, learning rate), and the
same number of processes. Checkpoints hold the UPLiFT parameters, the optimiser state, the step, the run's
seed and batch layout, and the global RNG states of each process (torch, CUDA, ``random``, numpy), which
are restored on resume only when the number of processes matches. They do not hold the backbone, the
data (files are read again), the feature cache, the held-out history of the interrupted run (its
``metrics.json`` then lists only the evaluations after the resume) or the DataLoader workers' state
(workers draw nothing featlift relies on). A resume refuses another seed or global batch; other changes
are not detected.

N processes with per-process batch B see the same global batches, depths, flips and feature noise as one
process with batch N * B, and so train exactly like it (up to float summation order). With noise
channels that equality is statistical, not bitwise: each process draws the channels for its own images.

SIGINT and SIGTERM (Ctrl-C, a cluster's pre-emption notice) stop the run at the end of the current step:
every process agrees on the step, rank 0 writes ``checkpoint.pt``, and :func:`train` returns with
``metrics["interrupted"]``. Every file is written atomically (:func:`featlift._atomic.atomic_write`), so
a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .._atomic import atomic_write
from .._distributed import Dist, init_distributed, process_device
from .._feature_cache import FeatureCache
from .._lookup import resolve_model
from .._registry import list_upsamplers
from ..backbones import Backbone, agreed_normalisation, create_backbone, load_backbone
from ..backbones._normalisation import normalise
from ..config import BackboneConfig, UpliftConfig
from ..errors import ConfigError
from ..modeling.uplift import UPLiFT
from ._card import model_card
from ._checkpoint import CHECKPOINT_NAME, resume, save_checkpoint
from ._sampling import StreamSampler, generator, set_rng_state
from ._signals import StopSignals, agreed_signal, ignore_stop_signals
from .config import TrainConfig
from .data import DataError, ImageDataset, list_images
from .objective import depth_targets, downsample, feature_distance, multi_depth_loss

__all__ = ["build", "evaluate", "train"]

logger = logging.getLogger(__name__)


# -- model -------------------------------------------------------------------------------------------


def _backbone(cfg: TrainConfig) -> Backbone:
    """The frozen backbone ``cfg`` names: a registered variant's (through the one resolver), else whatever
    :func:`~featlift.backbones.create_backbone` builds (``SOURCE:NAME``, a bare timm name, a UserModule)."""
    options = {"pretrained": cfg.pretrained_backbone, "weights": cfg.backbone_weights, "trust_repo": cfg.trust_repo}
    if isinstance(cfg.backbone, str) and cfg.backbone in list_upsamplers():
        config = resolve_model(cfg.backbone).config.backbone
        backbone = load_backbone(config, **options)
        backbone.check_stride(cfg.stride)
        return backbone
    return create_backbone(cfg.backbone, stride=cfg.stride, **options)


def build(cfg: TrainConfig, device: torch.device) -> tuple[Backbone, UpliftConfig]:
    """(frozen backbone, UPLiFT config for it): the ``base`` architecture with the backbone's source, name,
    stride, channels and normalisation (written into ``config.json``, so :func:`featlift.load_upsampler`
    rebuilds the backbone), and where the stride is not the base's, the derived guidance patch
    (:meth:`~featlift.config.UpliftConfig.for_backbone`)."""
    base = resolve_model(cfg.base).config
    backbone = _backbone(cfg)
    if backbone.normalisation is None:
        raise ConfigError(
            f"backbone.mean: the {backbone.source} backbone {backbone.name!r} states no image normalisation (its "
            "library publishes none for that name), so the upsampler cannot record one. Fix: use a name whose "
            "statistics are published, or wrap the model as a featlift.backbones.UserModule stating mean and std"
        )
    # The one normalisation rule, resolved when the backbone was built and written into config.json: the
    # saved model states it.
    mean, std = backbone.normalisation
    bb_cfg = BackboneConfig(
        channels=backbone.channels, patch=backbone.patch, name=backbone.name, source=backbone.source, mean=mean, std=std
    )
    config = dataclasses.replace(
        base.for_backbone(bb_cfg), description=f"UPLiFT trained by featlift for {backbone.name}"
    )
    return backbone.to(device).eval(), config


# -- evaluation --------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    model: UPLiFT,
    backbone,
    config: UpliftConfig,
    dataset,
    device,
    batch_size: int,
    depths: int,
    generator: torch.Generator | None = None,
) -> dict:
    """Held-out error per depth: UPLiFT's last step and bilinear upsampling of the same coarse features,
    both against the full image's features (mean squared error). ``generator`` feeds the model's noise
    channels, if it has any.

    ``backbone`` is a featlift :class:`~featlift.backbones.Backbone`; images are normalised with its
    statistics, which must agree with ``config``'s (:func:`~featlift.backbones.agreed_normalisation`; a
    backbone stating none takes the config's). The backbone object is not changed."""
    stats = agreed_normalisation(backbone.normalisation, config.backbone)  # the caller's backbone is left alone
    was_training = model.training
    model.eval()
    sums = {d: [0.0, 0.0] for d in range(1, depths + 1)}
    count = 0
    for start in range(0, len(dataset), batch_size):
        images = torch.stack([dataset[i] for i in range(start, min(len(dataset), start + batch_size))]).to(device)
        images = normalise(images, stats)
        full = backbone(images)
        for d in range(1, depths + 1):
            coarse = backbone(downsample(images, 2**d))
            up = model(downsample(images, 2**d), coarse, iters=d, generator=generator)
            bil = F.interpolate(coarse.float(), size=full.shape[-2:], mode="bilinear", align_corners=False)
            sums[d][0] += feature_distance(up, full).item() * len(images)
            sums[d][1] += feature_distance(bil, full).item() * len(images)
        count += len(images)
    model.train(was_training)
    out = {}
    for d, (u, b) in sums.items():
        out[f"depth{d}"] = {
            "uplift": u / max(count, 1),
            "bilinear": b / max(count, 1),
            "ratio": u / b if b else float("nan"),
        }
    return out


# -- the run: setup -----------------------------------------------------------------------------------


@dataclass
class _Run:
    """A training run between setup and finish: processes, model, optimiser, data, and resume state."""

    cfg: TrainConfig
    d: Dist
    device: torch.device
    backbone: Backbone
    config: UpliftConfig  # the trained model's config (backbone patch, channels and normalisation stated)
    model: UPLiFT
    net: torch.nn.Module  # the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    train_ds: ImageDataset
    val_ds: ImageDataset | None
    loader: DataLoader
    cache: FeatureCache | None
    settings: dict  # seed and batch layout, stored in checkpoints and checked on resume
    start: int  # first step to run (0, or the checkpoint's step)
    rng_states: list[dict] | None  # per-process global RNG states to restore (resume), else None

    @property
    def total(self) -> int:
        return self.settings["total_steps"]

    @property
    def global_batch(self) -> int:
        return self.settings["global_batch"]

    @property
    def out(self) -> Path:
        """The output folder: config.json, model.safetensors, checkpoint.pt, metrics.json, README.md."""
        return Path(self.cfg.out)

    @property
    def checkpoint_path(self) -> Path:
        return self.out / CHECKPOINT_NAME

    @property
    def amp(self) -> bool:
        """bf16 autocast around the backbone and the model (CUDA only)."""
        return self.device.type == "cuda" and self.cfg.amp

    def batches(self):
        """The loader's iterator; the global RNG states are restored after it is made (drawing the
        loader's base seed uses the global RNG)."""
        batches = iter(self.loader)
        if self.rng_states is not None:
            set_rng_state(self.rng_states[self.d.rank])
        return batches

    def checkpoint(self, step: int) -> None:
        save_checkpoint(self.checkpoint_path, self.model, self.optimizer, step, self.settings, self.d)

    def evaluate(self, step: int) -> dict:
        """Held-out figures after ``step`` steps (rank 0, with a validation set)."""
        draws = generator(self.cfg.seed, step, "eval", 0, self.device)
        return evaluate(
            self.model,
            self.backbone,
            self.config,
            self.val_ds,
            self.device,
            self.cfg.batch_size,
            self.cfg.depths,
            draws,
        )


def _setup(cfg: TrainConfig) -> _Run:
    """Processes, data split, backbone, model, optimiser (restored from the checkpoint on resume), loader."""
    d = init_distributed(cfg.device)
    device = process_device(cfg.device, d)
    if device.type == "cuda" and d.world > 1:
        torch.cuda.set_device(device)  # object collectives (checkpoint RNG states) use the current device
    out = Path(cfg.out)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)

    files = list_images(cfg.data)  # before the (possibly large) backbone is loaded
    backbone, config = build(cfg, device)
    multiple = config.patch * 2**cfg.depths
    if cfg.image_size % multiple:
        raise ValueError(
            f"image_size {cfg.image_size} must be divisible by patch x 2**depths = {multiple} "
            f"(e.g. {max(multiple, round(cfg.image_size / multiple) * multiple)})"
        )

    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    n_val = min(len(files) - 1, math.ceil(cfg.val_fraction * len(files))) if cfg.val_fraction > 0 else 0
    val_ds = ImageDataset([files[i] for i in order[:n_val]], cfg.image_size) if n_val else None
    train_files = [files[i] for i in order[n_val:]]
    if not train_files:
        raise DataError(f"no training images left after holding out {n_val} for evaluation")
    train_ds = ImageDataset(train_files, cfg.image_size)

    global_batch = cfg.batch_size * d.world
    total = cfg.steps if cfg.steps is not None else math.ceil(cfg.epochs * len(train_ds) / global_batch)
    settings = {
        "seed": cfg.seed,
        "batch_size": cfg.batch_size,
        "world": d.world,
        "global_batch": global_batch,
        "total_steps": total,
    }

    torch.manual_seed(cfg.seed)
    model = UPLiFT(config).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    start, rng_states = 0, None
    if cfg.resume:
        start, rng_states = resume(out / CHECKPOINT_NAME, settings, model, optimizer, d)

    net = model
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        if device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    sampler = StreamSampler(len(train_ds), cfg.batch_size, d, cfg.seed, start, total)
    loader = DataLoader(
        train_ds,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.workers,
        worker_init_fn=ignore_stop_signals if cfg.workers else None,
    )
    cache = FeatureCache(cfg.feature_cache) if cfg.feature_cache else None
    # The fields in their declared order (see _Run).
    return _Run(
        cfg,
        d,
        device,
        backbone,
        config,
        model,
        net,
        optimizer,
        train_ds,
        val_ds,
        loader,
        cache,
        settings,
        start,
        rng_states,
    )


# -- the run: the loop --------------------------------------------------------------------------------


def _train_step(run: _Run, step: int, batch: torch.Tensor) -> tuple[float, int]:
    """One optimiser step on this process's ``batch``; returns (loss, depth)."""
    cfg, d, device = run.cfg, run.d, run.device
    choices = generator(cfg.seed, step, "choices")
    depth = int(torch.randint(1, cfg.depths + 1, (1,), generator=choices))
    flips = torch.rand(run.global_batch, generator=choices) < 0.5
    first = d.rank * cfg.batch_size
    mine = flips[first : first + cfg.batch_size][: len(batch)]
    batch = torch.where(mine.view(-1, 1, 1, 1), batch.flip(-1), batch)
    images = run.backbone.normalise(batch.to(device, non_blocking=True))
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.amp):
        targets = depth_targets(run.backbone, images, depth, run.cache, "bf16-autocast" if run.amp else "")
        noise = None
        if cfg.noise_std:  # the global batch's draw, this process's rows: DDP equals one big batch
            shape = (run.global_batch, *targets[0].shape[1:])
            gen = generator(cfg.seed, step, "feature_noise", 0, device)
            noise = torch.randn(shape, generator=gen, device=device)[first : first + len(batch)]
        loss, _ = multi_depth_loss(
            run.net,
            targets,
            images,
            kind=cfg.loss,
            noise_std=cfg.noise_std,
            noise=noise,
            generator=generator(cfg.seed, step, "noise_channels", d.rank, device),
        )
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    return loss.item(), depth


@dataclass
class _LoopEnd:
    done: int  # steps completed
    loss: float  # the last step's loss (NaN when no step ran)
    signal: int  # the signal that stopped the run early (0: it ran to the end)


def _loop(run: _Run, stop: StopSignals, metrics: dict, progress: bool) -> _LoopEnd:
    """Steps ``run.start`` to ``run.total`` with the periodic checkpoints and evaluations; stops early at
    the end of a step when any process received a signal."""
    cfg, d = run.cfg, run.d
    batches = run.batches()
    bar = None
    if progress and d.main:
        from tqdm import tqdm

        bar = tqdm(total=run.total, initial=run.start, unit="step", desc="training")
    t0, seen = time.perf_counter(), 0
    end = _LoopEnd(done=run.start, loss=float("nan"), signal=0)
    for step, batch in zip(range(run.start, run.total), batches, strict=False):
        end.loss, depth = _train_step(run, step, batch)
        seen += len(batch) * d.world
        end.done = done = step + 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{end.loss:.4f}", depth=depth, img_s=f"{seen / (time.perf_counter() - t0):.1f}")
        end.signal = agreed_signal(stop, d, run.device)
        if end.signal and done < run.total:
            break
        end.signal = 0
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < run.total:
            run.checkpoint(done)
        if d.main and run.val_ds is not None and cfg.eval_every and done % cfg.eval_every == 0 and done < run.total:
            result = run.evaluate(done)
            metrics["history"].append({"step": done, **result})
            logger.info("step %d held-out: %s", done, result)
    if bar is not None:
        bar.close()
    return end


# -- the run: finish ----------------------------------------------------------------------------------


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def _finish_interrupted(run: _Run, end: _LoopEnd, metrics: dict) -> dict:
    """After a signal: checkpoint at the step reached, report it in ``metrics["interrupted"]``."""
    name = signal.Signals(end.signal).name
    run.checkpoint(end.done)
    metrics["interrupted"] = {"step": end.done, "signal": name, "checkpoint": str(run.checkpoint_path)}
    metrics["steps"] = run.total
    metrics["final_loss"] = end.loss
    logger.warning("%s: stopped at step %d of %d; checkpoint in %s", name, end.done, run.total, run.checkpoint_path)
    run.d.barrier()
    return metrics


def _finish(run: _Run, end: _LoopEnd, metrics: dict) -> dict:
    """After the last step: final checkpoint, held-out evaluation, config + weights, metrics, model card,
    and the optional push to the Hub (files on rank 0 only)."""
    cfg, d = run.cfg, run.d
    metrics["steps"] = run.total
    metrics["final_loss"] = end.loss
    if run.cache is not None:
        metrics["feature_cache"] = {"hits": run.cache.hits, "misses": run.cache.misses}
    if d.world > 1:  # a cheap check that every rank ended with the same parameters
        checksum = sum(float(p.detach().double().sum()) * (i + 1) for i, p in enumerate(run.model.parameters()))
        metrics["rank_checksums"] = d.gather(checksum)
    run.checkpoint(run.total)
    if d.main:
        if run.val_ds is not None:
            metrics["heldout"] = run.evaluate(run.total)
        run.model.save_pretrained(run.out)
        _write_text(run.out / "metrics.json", json.dumps(metrics, indent=2))
        n_val = len(run.val_ds) if run.val_ds is not None else 0
        card = model_card(cfg, run.config, metrics, n_train=len(run.train_ds), n_val=n_val, world=d.world)
        _write_text(run.out / "README.md", card)
        if cfg.push_to_hub:
            from ..hub import push_pretrained_dir

            metrics["pushed"] = push_pretrained_dir(run.out, cfg.push_to_hub, card=card)
            logger.info("published %s to %s", run.out, cfg.push_to_hub)
    d.barrier()
    return metrics


def train(cfg: TrainConfig, progress: bool = False) -> dict:
    """Run training; returns the final metrics. Writes ``config.json`` + ``model.safetensors`` to ``cfg.out``.

    On SIGINT or SIGTERM the run stops at the end of the current step, writes ``checkpoint.pt`` and
    returns ``metrics["interrupted"] = {"step", "signal", "checkpoint"}`` (continue with ``resume=True``).

    Raises:
        CheckpointError: ``resume=True`` with a corrupt or incomplete checkpoint, or one from a run with
            another seed or global batch.
    """
    run = _setup(cfg)
    metrics: dict = {"history": []}
    with StopSignals() as stop:
        end = _loop(run, stop, metrics, progress)
        if end.signal:  # still inside: a second signal while the checkpoint is written stops at once
            return _finish_interrupted(run, end, metrics)
    return _finish(run, end, metrics)
