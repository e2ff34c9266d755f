"""Train an UPLiFT upsampler for any timm ViT: one process, or many through torchrun (DDP).

Every random choice (data order, flips, depth, feature noise) is derived from ``(seed, step)``, so a run
resumed from a checkpoint continues exactly where it stopped, and N processes with per-process batch B
see the same global batches as one process with batch N * B.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler

from ..builder import _load_backbone, resolve_config
from ..config import BackboneConfig, UpliftConfig
from ..modeling.uplift import UPLiFT
from ..registry import list_upsamplers
from .cache import FeatureCache
from .data import DataError, ImageDataset, IndexedImages, list_images
from .objective import LOSSES, depth_targets, downsample, feature_distance, multi_depth_loss

__all__ = ["TrainConfig", "evaluate", "train"]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"


@dataclass
class TrainConfig:
    """Everything a training run needs; the command line maps onto these fields one to one."""

    backbone: str  # timm model name (e.g. "vit_base_patch16_clip_224.openai") or a registered variant
    data: str  # image folder (recursive) or text file of paths
    out: str  # output folder: config.json, model.safetensors, checkpoint.pt, metrics.json
    image_size: int = 224  # side of the square training crops (targets), divisible by patch * 2**depths
    depths: int = 2  # depths 1..depths are mixed
    batch_size: int = 8  # per process
    steps: int | None = None  # total optimiser steps (or give epochs)
    epochs: float | None = None
    lr: float = 1e-3
    seed: int = 0
    base: str = "dinov2_s14"  # architecture: registered name, authors' YAML or featlift JSON/dir
    backbone_weights: str | None = None
    pretrained_backbone: bool = True
    loss: str = "l2"
    noise_std: float = 0.0  # noise on the input features (the VAE recipe)
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    workers: int = 0
    val_fraction: float = 0.1
    eval_every: int = 0  # 0: evaluate at the end only
    checkpoint_every: int = 0  # 0: only at the end
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


@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_hint: str | None) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    use_cuda = torch.cuda.is_available() and (device_hint is None or device_hint.startswith("cuda"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _device(cfg: TrainConfig, d: _Dist) -> torch.device:
    if cfg.device is not None:
        device = torch.device(cfg.device)
        if device.type == "cuda" and d.world > 1:
            device = torch.device("cuda", d.local_rank)
        return device
    return torch.device("cuda", d.local_rank) if torch.cuda.is_available() else torch.device("cpu")


# -- model and data ----------------------------------------------------------------------------------


def _backbone_config(cfg: TrainConfig) -> BackboneConfig:
    if cfg.backbone in list_upsamplers():
        return resolve_config(cfg.backbone)[0].backbone
    return BackboneConfig(name=cfg.backbone, source="timm")


def _build(cfg: TrainConfig, device: torch.device):
    """(frozen backbone, UPLiFT config with the backbone's patch/channels/normalisation)."""
    base, _ = resolve_config(cfg.base)
    bb_cfg = _backbone_config(cfg)
    probe = dataclasses.replace(base, backbone=bb_cfg)
    backbone = _load_backbone(
        probe, pretrained=cfg.pretrained_backbone, backbone_weights=cfg.backbone_weights, cache_dir=None
    )
    mean, std = bb_cfg.mean, bb_cfg.std
    pcfg = getattr(getattr(backbone, "model", None), "pretrained_cfg", None) or {}
    if mean is None and "mean" in pcfg:
        mean, std = tuple(pcfg["mean"]), tuple(pcfg["std"])
    bb_cfg = dataclasses.replace(bb_cfg, channels=backbone.channels, patch=backbone.patch, mean=mean, std=std)
    config = dataclasses.replace(base, backbone=bb_cfg, description=f"UPLiFT trained by featlift for {cfg.backbone}")
    return backbone.to(device).eval(), config


class _StreamSampler(Sampler[int]):
    """This process's share of the global batches from ``start_step`` on: the data order is a
    concatenation of seeded permutations (one per epoch), cut into global batches of B * world."""

    def __init__(self, n: int, batch: int, d: _Dist, seed: int, start_step: int, total_steps: int) -> None:
        self.n, self.batch, self.d, self.seed = n, batch, d, seed
        self.start, self.total = start_step, total_steps

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, self.n)
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1000003 + epoch))
        return int(perm[offset])

    def __len__(self) -> int:
        return (self.total - self.start) * self.batch

    def __iter__(self):
        g = self.batch * self.d.world
        for step in range(self.start, self.total):
            first = step * g + self.d.rank * self.batch
            for position in range(first, first + self.batch):
                yield self._index(position)


def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed + 1) * 7919 + step)


def _normalise(images: torch.Tensor, config: UpliftConfig) -> torch.Tensor:
    bb = config.backbone
    if bb.mean is None:
        return images
    mean = torch.tensor(bb.mean, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(bb.std, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


# -- evaluation --------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: UPLiFT, backbone, config: UpliftConfig, dataset, device, batch_size: int, depths: int) -> dict:
    """Held-out error per depth: UPLiFT's last step and bilinear upsampling of the same coarse features,
    both against the full image's features (mean squared error)."""
    was_training = model.training
    model.eval()
    sums = {d: [0.0, 0.0] for d in range(1, depths + 1)}
    count = 0
    for start in range(0, len(dataset), batch_size):
        images = torch.stack([dataset[i] for i in range(start, min(len(dataset), start + batch_size))]).to(device)
        images = _normalise(images, config)
        full = backbone(images)
        for d in range(1, depths + 1):
            coarse = backbone(downsample(images, 2**d))
            up = model(downsample(images, 2**d), coarse, iters=d)
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


# -- the run -----------------------------------------------------------------------------------------


def train(cfg: TrainConfig, progress: bool = False) -> dict:
    """Run training; returns the final metrics. Writes ``config.json`` + ``model.safetensors`` to ``cfg.out``."""
    d = _init_distributed(cfg.device)
    device = _device(cfg, d)
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

    torch.manual_seed(cfg.seed)
    model = UPLiFT(config).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    start = 0
    ckpt_path = out / CHECKPOINT_NAME
    if cfg.resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
        logger.info("resumed from step %d", start)

    net = model
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        if device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    sampler = _StreamSampler(len(train_ds), cfg.batch_size, d, cfg.seed, start, total)
    loader = DataLoader(IndexedImages(train_ds), batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers)
    cache = None
    if cfg.feature_cache:
        cache = FeatureCache(
            cfg.feature_cache, backbone=cfg.backbone, image_size=cfg.image_size, depths=cfg.depths, files=train_files
        )
    autocast = device.type == "cuda" and cfg.amp
    bar = None
    if progress and d.main:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start, unit="step", desc="training")
    metrics: dict = {"history": []}
    t0, seen = time.perf_counter(), 0
    loss_value = float("nan")
    for step, (batch, indices) in zip(range(start, total), loader, strict=False):
        gen = _step_generator(cfg.seed, step)
        depth = int(torch.randint(1, cfg.depths + 1, (1,), generator=gen))
        flips = torch.rand(global_batch, generator=gen) < 0.5
        mine = flips[d.rank * cfg.batch_size : (d.rank + 1) * cfg.batch_size][: len(batch)]
        batch = torch.where(mine.view(-1, 1, 1, 1), batch.flip(-1), batch)
        images = _normalise(batch.to(device, non_blocking=True), config)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            if cache is None:
                targets = depth_targets(backbone, images, depth)
            else:
                targets = cache.targets(backbone, images, indices.tolist(), mine.tolist(), depth)
            noise_gen = _step_generator(cfg.seed + 1, step) if cfg.noise_std and device.type == "cpu" else None
            loss, _ = multi_depth_loss(
                net, targets, images, kind=cfg.loss, noise_std=cfg.noise_std, generator=noise_gen
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_value = loss.item()
        seen += len(batch) * d.world
        done = step + 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", depth=depth, img_s=f"{seen / (time.perf_counter() - t0):.1f}")
        if d.main and cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < total:
            _save_checkpoint(ckpt_path, model, optimizer, done)
        if d.main and val_ds is not None and cfg.eval_every and done % cfg.eval_every == 0 and done < total:
            result = evaluate(model, backbone, config, val_ds, device, cfg.batch_size, cfg.depths)
            metrics["history"].append({"step": done, **result})
            logger.info("step %d held-out: %s", done, result)
    if bar is not None:
        bar.close()

    metrics["steps"] = total
    metrics["final_loss"] = loss_value
    if cache is not None:
        metrics["feature_cache"] = {"hits": cache.hits, "misses": cache.misses}
    if d.world > 1:  # a cheap check that every rank ended with the same parameters
        import torch.distributed as dist

        checksum = sum(float(p.detach().double().sum()) * (i + 1) for i, p in enumerate(model.parameters()))
        gathered = [None] * d.world
        dist.all_gather_object(gathered, checksum)
        metrics["rank_checksums"] = gathered
    if d.main:
        if val_ds is not None:
            metrics["heldout"] = evaluate(model, backbone, config, val_ds, device, cfg.batch_size, cfg.depths)
        _save_checkpoint(ckpt_path, model, optimizer, total)
        model.save_pretrained(out)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        card = model_card(cfg, config, metrics, n_train=len(train_ds), n_val=n_val, world=d.world)
        (out / "README.md").write_text(card)
        if cfg.push_to_hub:
            from ..hub import push_pretrained_dir

            metrics["pushed"] = push_pretrained_dir(out, cfg.push_to_hub, card=card)
            logger.info("published %s to %s", out, cfg.push_to_hub)
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()
    return metrics


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
- Architecture base: `{cfg.base}`.

## Held-out error against the full image's backbone features
Features of the image downsampled by 2^depth, upsampled `depth` times by UPLiFT or bilinearly.

{table}
"""


def _save_checkpoint(path: Path, model: UPLiFT, optimizer, step: int) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, tmp)
    os.replace(tmp, path)
