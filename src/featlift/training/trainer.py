"""Train an UPLiFT upsampler for any timm ViT: one process, or many through torchrun (DDP).

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
import hashlib
import json
import logging
import math
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler

from .._atomic import atomic_write
from .._distributed import Dist as _Dist
from .._distributed import init_distributed as _init_distributed
from .._distributed import process_device
from .._lookup import resolve_model
from .._registry import list_upsamplers
from ..backbones import Backbone, agreed_normalisation, load_backbone
from ..config import BackboneConfig, UpliftConfig
from ..errors import CheckpointError
from ..modeling.uplift import UPLiFT
from .cache import FeatureCache
from .data import DataError, ImageDataset, IndexedImages, list_images
from .objective import LOSSES, depth_targets, downsample, feature_distance, multi_depth_loss

__all__ = ["TrainConfig", "evaluate", "train"]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_KEYS = ("model", "optimizer", "step", "seed", "batch_size", "world", "global_batch", "total_steps", "rng")


@dataclass
class TrainConfig:
    """Everything a training run needs; the command line maps onto these fields one to one."""

    backbone: str  # timm model name (e.g. "vit_base_patch16_clip_224.openai") or a registered variant's name
    data: str  # image folder (recursive) or text file of paths
    out: str  # output folder: config.json, model.safetensors, checkpoint.pt, metrics.json
    image_size: int = 224  # side of the square training crops (targets), divisible by patch * 2**depths
    depths: int = 2  # depths 1..depths are mixed
    batch_size: int = 8  # per process
    steps: int | None = None  # total optimiser steps (or give epochs)
    epochs: float | None = None
    lr: float = 1e-3
    seed: int = 0
    # architecture: anything featlift._lookup.resolve_model takes (registered name, authors' YAML, featlift
    # JSON, model directory, Hub repo id, UpliftConfig)
    base: str | UpliftConfig = "dinov2_s14"
    backbone_weights: str | None = None
    pretrained_backbone: bool = True
    loss: str = "l2"
    noise_std: float = 0.0  # noise on the input features (the VAE recipe)
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    workers: int = 0
    val_fraction: float = 0.1
    eval_every: int = 0  # 0: evaluate at the end only
    checkpoint_every: int = 0  # 0: only at the end (and when interrupted)
    resume: bool = False
    device: str | None = None
    push_to_hub: str | None = None  # Hub repo id to publish config.json + model.safetensors + card to
    feature_cache: str | None = None  # folder caching backbone features across epochs

    def __post_init__(self) -> None:
        if self.steps is None and self.epochs is None:
            raise ValueError("give the length of training: steps or epochs")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {LOSSES}")
        for name in ("depths", "batch_size", "image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


# -- processes ---------------------------------------------------------------------------------------


def _device(cfg: TrainConfig, d: _Dist) -> torch.device:
    return process_device(cfg.device, d)


# -- model and data ----------------------------------------------------------------------------------


def _backbone_config(cfg: TrainConfig) -> BackboneConfig:
    """The backbone section: a registered variant's (through the one resolver), else a timm name."""
    if cfg.backbone in list_upsamplers():
        return resolve_model(cfg.backbone).config.backbone
    return BackboneConfig(name=cfg.backbone, source="timm")


def _build(cfg: TrainConfig, device: torch.device) -> tuple[Backbone, UpliftConfig]:
    """(frozen backbone, UPLiFT config with the backbone's patch/channels/normalisation)."""
    base = resolve_model(cfg.base).config
    bb_cfg = _backbone_config(cfg)
    backbone = load_backbone(bb_cfg, pretrained=cfg.pretrained_backbone, weights=cfg.backbone_weights)
    # The one normalisation rule, resolved by load_backbone and written into config.json: the saved model
    # states it.
    mean, std = backbone.normalisation
    bb_cfg = dataclasses.replace(bb_cfg, channels=backbone.channels, patch=backbone.patch, mean=mean, std=std)
    config = dataclasses.replace(base, backbone=bb_cfg, description=f"UPLiFT trained by featlift for {cfg.backbone}")
    return backbone.to(device).eval(), config


class _StreamSampler(Sampler[int]):
    """This process's share of the global batches from ``start_step`` on.

    The data order is a concatenation of seeded permutations, one per epoch (seed ``seed * 1000003 +
    epoch``), cut into global batches of B * world; process r takes the stream positions
    ``[step * B * world + r * B, ... + B)``. The permutation of the current epoch is built once and kept
    until the stream leaves the epoch; the indices are looked up for many steps at once, with tensor
    indexing, and handed out from a Python list.
    """

    WINDOW = 1 << 16  # indices looked up at a time

    def __init__(self, n: int, batch: int, d: _Dist, seed: int, start_step: int, total_steps: int) -> None:
        self.n, self.batch, self.d, self.seed = n, batch, d, seed
        self.start, self.total = start_step, total_steps
        self._epoch = -1
        self._perm = torch.empty(0, dtype=torch.int64)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            self._perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1000003 + epoch))
            self._epoch = epoch
        return self._perm

    def _lookup(self, positions: torch.Tensor) -> list[int]:
        """The dataset indices at increasing stream ``positions``."""
        epochs = positions // self.n
        first, last = int(epochs[0]), int(epochs[-1])
        if first == last:  # the usual case: the window lies inside one epoch
            return self._permutation(first)[positions - first * self.n].tolist()
        out: list[int] = []
        for epoch in range(first, last + 1):
            inside = positions[epochs == epoch]
            if len(inside):
                out += self._permutation(epoch)[inside - epoch * self.n].tolist()
        return out

    def __len__(self) -> int:
        return (self.total - self.start) * self.batch

    def __iter__(self):
        g = self.batch * self.d.world
        lanes = torch.arange(self.batch) + self.d.rank * self.batch
        per_window = max(1, self.WINDOW // self.batch)
        for first in range(self.start, self.total, per_window):
            steps = torch.arange(first, min(self.total, first + per_window))
            yield from self._lookup((steps[:, None] * g + lanes).flatten())


# -- randomness --------------------------------------------------------------------------------------


def _derived_seed(seed: int, step: int, stream: str, rank: int = 0) -> int:
    """A 63-bit seed hashed from ``(seed, step, stream, rank)``: unrelated seeds for different streams."""
    key = f"featlift/{seed}/{step}/{stream}/{rank}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def _generator(seed: int, step: int, stream: str, rank: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device`` for one stream of random draws at one step (and one process)."""
    return torch.Generator(device=device).manual_seed(_derived_seed(seed, step, stream, rank))


def _rng_state() -> dict:
    """The global RNG states of this process (torch, CUDA, ``random``, numpy), as plain data and tensors."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


# -- checkpoints -------------------------------------------------------------------------------------


def _checkpoint(path: Path, model: UPLiFT, optimizer, step: int, run: dict, d: _Dist) -> None:
    """Collective: every process hands in its RNG states; rank 0 writes ``path`` atomically."""
    states = [_rng_state()]
    if d.world > 1:
        import torch.distributed as dist

        states = [None] * d.world
        dist.all_gather_object(states, _rng_state())
    if d.main:
        _save_checkpoint(path, model, optimizer, step, run, states)


def _save_checkpoint(path: Path, model: UPLiFT, optimizer, step: int, run: dict, rng: list[dict]) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, **run, "rng": rng}
    with atomic_write(path) as tmp:
        torch.save(state, tmp)
    logger.info("checkpoint at step %d written to %s", step, path)


def _fix(path: Path) -> str:
    return f"delete {path} to start over, or run without --resume (training then starts again from step 0)"


def _load_checkpoint(path: Path, cfg: TrainConfig, run: dict) -> dict:
    """The checkpoint at ``path``, checked to be complete and to belong to a run like this one."""
    fix = _fix(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for broken files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt: {reason}); {fix}") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a featlift training checkpoint; {fix}")
    missing = [key for key in CHECKPOINT_KEYS if key not in state]
    if missing:
        raise CheckpointError(
            f"{path} lacks {', '.join(missing)}: it is not a complete featlift training checkpoint "
            f"(or one written by an older featlift); {fix}"
        )
    if state["seed"] != run["seed"]:
        raise CheckpointError(
            f"--resume: {path} belongs to a run with seed {state['seed']}, but this run has seed {cfg.seed}; "
            f"pass --seed {state['seed']} to continue it, or give a new --out folder for a new run"
        )
    if state["global_batch"] != run["global_batch"]:
        raise CheckpointError(
            f"--resume: {path} belongs to a run with a global batch of {state['global_batch']} "
            f"({state['batch_size']} per process x {state['world']} processes), but this run's is "
            f"{run['global_batch']} ({run['batch_size']} x {run['world']}); resume with the same global batch "
            "(--batch-size x processes), or give a new --out folder for a new run"
        )
    if int(state["step"]) > run["total_steps"]:
        raise CheckpointError(
            f"--resume: {path} is at step {state['step']}, past this run's {run['total_steps']} steps; "
            f"ask for at least {state['step']} steps"
        )
    return state


def _restore(path: Path, state: dict, model: UPLiFT, optimizer) -> None:
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise CheckpointError(
            f"{path} does not fit this run's model (written with another --base or --backbone?); "
            f"{_fix(path)}. Details: {err}"
        ) from err


# -- stopping on a signal ----------------------------------------------------------------------------


class _StopSignals:
    """While active, SIGINT and SIGTERM only set :attr:`received`: the loop stops at the end of the
    step. A second signal raises ``KeyboardInterrupt`` at once. Handlers are installed only in the main
    thread (Python allows no other) and the previous ones are put back on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt(f"second signal ({signal.Signals(signum).name}): stopping without a checkpoint")
        self.received = signum


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave SIGINT/SIGTERM sent to the whole process group (Ctrl-C, a scheduler) to
    the main process, which stops at the end of the step; a worker killed by it would crash the run."""
    for sig in _StopSignals.SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _agreed_signal(stop: _StopSignals, d: _Dist, device: torch.device) -> int:
    """The signal any process received (0: none), the same on every process."""
    signum = stop.received or 0
    if d.world > 1:
        import torch.distributed as dist

        flag = torch.tensor([signum], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        signum = int(flag.item())
    return signum


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text)


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

    ``backbone`` is a featlift :class:`~featlift.backbones.Backbone`; it normalises the images
    (:meth:`~featlift.backbones.Backbone.normalise`) with statistics that must agree with ``config``'s
    (:func:`~featlift.backbones.agreed_normalisation`; a backbone stating none takes the
    config's)."""
    backbone.normalisation = agreed_normalisation(backbone.normalisation, config.backbone)
    was_training = model.training
    model.eval()
    sums = {d: [0.0, 0.0] for d in range(1, depths + 1)}
    count = 0
    for start in range(0, len(dataset), batch_size):
        images = torch.stack([dataset[i] for i in range(start, min(len(dataset), start + batch_size))]).to(device)
        images = backbone.normalise(images)
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
    d: _Dist
    device: torch.device
    out: Path
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
    def checkpoint_path(self) -> Path:
        return self.out / CHECKPOINT_NAME

    def batches(self):
        """The loader's iterator; the global RNG states are restored after it is made (drawing the
        loader's base seed uses the global RNG)."""
        batches = iter(self.loader)
        if self.rng_states is not None:
            _set_rng_state(self.rng_states[self.d.rank])
        return batches

    def checkpoint(self, step: int) -> None:
        _checkpoint(self.checkpoint_path, self.model, self.optimizer, step, self.settings, self.d)

    def evaluate(self, step: int) -> dict:
        """Held-out figures after ``step`` steps (rank 0, with a validation set)."""
        generator = _generator(self.cfg.seed, step, "eval", 0, self.device)
        return evaluate(
            self.model,
            self.backbone,
            self.config,
            self.val_ds,
            self.device,
            self.cfg.batch_size,
            self.cfg.depths,
            generator,
        )


def _setup(cfg: TrainConfig) -> _Run:
    """Processes, data split, backbone, model, optimiser (restored from the checkpoint on resume), loader."""
    d = _init_distributed(cfg.device)
    device = _device(cfg, d)
    if device.type == "cuda" and d.world > 1:
        torch.cuda.set_device(device)  # object collectives (checkpoint RNG states) use the current device
    out = Path(cfg.out)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)

    files = list_images(cfg.data)  # before the (possibly large) backbone is loaded
    backbone, config = _build(cfg, device)
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
        start, rng_states = _resume(out / CHECKPOINT_NAME, cfg, settings, model, optimizer, d)

    net = model
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        if device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    sampler = _StreamSampler(len(train_ds), cfg.batch_size, d, cfg.seed, start, total)
    loader = DataLoader(
        IndexedImages(train_ds),
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.workers,
        worker_init_fn=_ignore_stop_signals if cfg.workers else None,
    )
    cache = None
    if cfg.feature_cache:
        cache = FeatureCache(
            cfg.feature_cache, backbone=cfg.backbone, image_size=cfg.image_size, depths=cfg.depths, files=train_files
        )
    return _Run(
        cfg=cfg,
        d=d,
        device=device,
        out=out,
        backbone=backbone,
        config=config,
        model=model,
        net=net,
        optimizer=optimizer,
        train_ds=train_ds,
        val_ds=val_ds,
        loader=loader,
        cache=cache,
        settings=settings,
        start=start,
        rng_states=rng_states,
    )


def _resume(path: Path, cfg: TrainConfig, settings: dict, model: UPLiFT, optimizer, d: _Dist):
    """Restore ``model`` and ``optimizer`` from the checkpoint at ``path``; returns (step, RNG states or
    None when the checkpoint was written by another number of processes)."""
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {path}")
    state = _load_checkpoint(path, cfg, settings)
    _restore(path, state, model, optimizer)
    start = int(state["step"])
    rng_states = state["rng"]
    if len(rng_states) != d.world:
        logger.warning(
            "%s was written by %d process(es), this run has %d: the global RNG states are not restored "
            "(featlift's own random draws derive from the seed and step and are unaffected)",
            path,
            len(rng_states),
            d.world,
        )
        rng_states = None
    logger.info("resumed from step %d", start)
    return start, rng_states


# -- the run: the loop --------------------------------------------------------------------------------


def _train_step(run: _Run, step: int, batch: torch.Tensor, indices: torch.Tensor) -> tuple[float, int]:
    """One optimiser step on this process's ``batch``; returns (loss, depth)."""
    cfg, d, device = run.cfg, run.d, run.device
    choices = _generator(cfg.seed, step, "choices")
    depth = int(torch.randint(1, cfg.depths + 1, (1,), generator=choices))
    flips = torch.rand(run.global_batch, generator=choices) < 0.5
    first = d.rank * cfg.batch_size
    mine = flips[first : first + cfg.batch_size][: len(batch)]
    batch = torch.where(mine.view(-1, 1, 1, 1), batch.flip(-1), batch)
    images = run.backbone.normalise(batch.to(device, non_blocking=True))
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and cfg.amp):
        if run.cache is None:
            targets = depth_targets(run.backbone, images, depth)
        else:
            targets = run.cache.targets(run.backbone, images, indices.tolist(), mine.tolist(), depth)
        noise = None
        if cfg.noise_std:  # the global batch's draw, this process's rows: DDP equals one big batch
            shape = (run.global_batch, *targets[0].shape[1:])
            gen = _generator(cfg.seed, step, "feature_noise", 0, device)
            noise = torch.randn(shape, generator=gen, device=device)[first : first + len(batch)]
        loss, _ = multi_depth_loss(
            run.net,
            targets,
            images,
            kind=cfg.loss,
            noise_std=cfg.noise_std,
            noise=noise,
            generator=_generator(cfg.seed, step, "noise_channels", d.rank, device),
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


def _loop(run: _Run, stop: _StopSignals, metrics: dict, progress: bool) -> _LoopEnd:
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
    for step, (batch, indices) in zip(range(run.start, run.total), batches, strict=False):
        end.loss, depth = _train_step(run, step, batch, indices)
        seen += len(batch) * d.world
        end.done = done = step + 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{end.loss:.4f}", depth=depth, img_s=f"{seen / (time.perf_counter() - t0):.1f}")
        end.signal = _agreed_signal(stop, d, run.device)
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


def _barrier(d: _Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()


def _finish_interrupted(run: _Run, end: _LoopEnd, metrics: dict) -> dict:
    """After a signal: checkpoint at the step reached, report it in ``metrics["interrupted"]``."""
    name = signal.Signals(end.signal).name
    run.checkpoint(end.done)
    metrics["interrupted"] = {"step": end.done, "signal": name, "checkpoint": str(run.checkpoint_path)}
    metrics["steps"] = run.total
    metrics["final_loss"] = end.loss
    logger.warning("%s: stopped at step %d of %d; checkpoint in %s", name, end.done, run.total, run.checkpoint_path)
    _barrier(run.d)
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
        import torch.distributed as dist

        checksum = sum(float(p.detach().double().sum()) * (i + 1) for i, p in enumerate(run.model.parameters()))
        gathered = [None] * d.world
        dist.all_gather_object(gathered, checksum)
        metrics["rank_checksums"] = gathered
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
    _barrier(d)
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
    with _StopSignals() as stop:
        end = _loop(run, stop, metrics, progress)
        if end.signal:  # still inside: a second signal while the checkpoint is written stops at once
            return _finish_interrupted(run, end, metrics)
    return _finish(run, end, metrics)


def model_card(cfg: TrainConfig, config: UpliftConfig, metrics: dict, *, n_train: int, n_val: int, world: int) -> str:
    """A Hub model card stating the backbone, data, steps and held-out figures."""
    bb = config.backbone
    rows = "\n".join(
        f"| {depth[5:]} | {row['uplift']:.5f} | {row['bilinear']:.5f} | {row['ratio']:.3f} |"
        for depth, row in metrics.get("heldout", {}).items()
    )
    table = (
        "| depth | UPLiFT MSE | bilinear MSE | ratio |\n| --- | --- | --- | --- |\n" + rows
        if rows
        else "No images were held out."
    )
    return f"""---
library_name: featlift
tags:
- feature-upsampling
- uplift
license: mit
---

# UPLiFT upsampler for `{bb.name}`

Pixel-dense features for the frozen backbone `{bb.name}` ({bb.channels} channels, patch {bb.patch}),
trained with [featlift](https://pypi.org/project/featlift/)'s self-supervised multi-depth objective.

```python
import featlift
up = featlift.load_upsampler("{cfg.push_to_hub or "<this repo>"}")
feats = up(image)  # [1, {bb.channels}, H, W]
```

## Training
- Data: `{cfg.data}`: {n_train} training images, {n_val} held out.
- {metrics.get("steps")} steps, batch {cfg.batch_size} x {world} process(es), {cfg.image_size} px crops,
  depths 1..{cfg.depths}, Adam lr {cfg.lr}, {cfg.loss} loss, feature noise {cfg.noise_std}, seed {cfg.seed}.
- Architecture base: `{cfg.base if isinstance(cfg.base, str) else cfg.base.description or "an UpliftConfig"}`.

## Held-out error against the full image's backbone features
Features of the image downsampled by 2^depth, upsampled `depth` times by UPLiFT or bilinearly.

{table}
"""
