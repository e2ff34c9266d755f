"""The settings of a training run (:class:`TrainConfig`); the command line maps onto them one to one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import UpliftConfig
from .objective import LOSSES

if TYPE_CHECKING:
    from ..backbones import UserModule

__all__ = ["TrainConfig"]


@dataclass
class TrainConfig:
    """Everything a training run needs; the command line maps onto these fields one to one."""

    # The backbone: SOURCE:NAME ("open_clip:ViT-B-16/openai", "transformers:facebook/dinov2-small",
    # "timm:resnet50.a1_in1k", "hub:REPO:ENTRY"), a bare timm name, a registered variant's name, or your own
    # module (featlift.backbones.UserModule).
    backbone: str | UserModule
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
    stride: int | None = None  # output stride of a conv/hierarchical timm backbone (None: its deepest stage's)
    trust_repo: bool = False  # a torch.hub backbone from GitHub runs its code without asking
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
    feature_cache: str | None = None  # folder caching backbone features (featlift._feature_cache), shared with eval

    def __post_init__(self) -> None:
        if self.steps is None and self.epochs is None:
            raise ValueError("give the length of training: steps or epochs")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {LOSSES}")
        if self.stride is not None and (not isinstance(self.stride, int) or self.stride < 1):
            raise ValueError(f"stride must be a positive integer or None, got {self.stride!r}")
        for name in ("depths", "batch_size", "image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
