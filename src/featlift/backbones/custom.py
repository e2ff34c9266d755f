"""Your own module as a backbone: any callable from normalised images to features, with its stride,
channels and normalisation stated once in a :class:`UserModule` (Python API only).

    mine = UserModule(module=net, name="my-net-v1", stride=16, channels=256,
                      mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    featlift.training.train(TrainConfig(backbone=mine, data="images/", out="uplift-mine", steps=1000))
    up = featlift.load_upsampler("uplift-mine", backbone=mine)

The trained model's ``config.json`` records source ``"module"``, the name, stride, channels and
statistics; loading it without ``backbone=`` raises an error that asks for the module by that name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from ..errors import ConfigError
from ._normalisation import Stats
from .base import Backbone, BuildOptions

__all__ = ["ModuleBackbone", "UserModule"]


def _stats(value, field: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise ConfigError(f"{field}: needs 3 finite numbers (RGB), got {value!r}")
    return values


@dataclass(frozen=True, kw_only=True)
class UserModule:
    """A backbone you bring: a callable and what featlift must know about it, stated once.

    ``module(images)`` maps images [B, 3, H, W], normalised with ``mean``/``std`` (the guidance encoder
    sees the same normalised image), with H and W any multiples of ``stride``, to features
    [B, channels, H / stride, W / stride]. featlift checks that once, on a small image, when it wraps the
    module (:class:`ModuleBackbone`). An ``nn.Module`` is put in eval mode with its gradients off.
    """

    module: Callable[[Tensor], Tensor]  # normalised images [B, 3, H, W] -> features [B, C, H/stride, W/stride]
    name: str  # recorded in config.json; load_upsampler(dir, backbone=...) asks for a module of this name
    stride: int  # input pixels per feature cell
    channels: int  # feature channels C
    mean: tuple[float, float, float]  # per-channel mean of the images in [0, 1] the module expects
    std: tuple[float, float, float]  # per-channel std (use mean 0 and std 1 for images in [0, 1])

    def __post_init__(self) -> None:
        if not callable(self.module):
            raise ConfigError(f"module: must be callable (images -> features), got {type(self.module).__name__}")
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"name: must be a non-empty string naming your module, got {self.name!r}")
        for field in ("stride", "channels"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{field}: must be a positive integer, got {value!r}")
        object.__setattr__(self, "mean", _stats(self.mean, "mean"))
        object.__setattr__(self, "std", _stats(self.std, "std"))
        if not all(s > 0 for s in self.std):
            raise ConfigError(f"std: values must be positive, got {self.std!r}")

    @property
    def normalisation(self) -> Stats:
        return self.mean, self.std


def _ask_for(name, stride, channels, mean, std) -> str:
    return (
        f"backbone.source: this upsampler was trained for your own module {name!r}, which featlift cannot "
        "rebuild from its name. Fix: pass the module, as when training: featlift.load_upsampler(dir, "
        f"backbone=featlift.backbones.UserModule(module=..., name={name!r}, stride={stride}, channels={channels}, "
        f"mean={mean}, std={std}))"
    )


class ModuleBackbone(Backbone):
    """A :class:`UserModule` behind the :class:`Backbone` interface (source ``"module"``).

    The wrapped module is this backbone's submodule when it is an ``nn.Module`` (it moves with ``.to()``
    and is frozen in place); any other callable is called as it is.
    """

    source = "module"
    example = "UserModule(module=..., name=..., stride=..., channels=..., mean=..., std=...)  (Python only)"

    def __init__(self, user: UserModule) -> None:
        super().__init__()
        if not isinstance(user, UserModule):
            raise TypeError(f"ModuleBackbone wraps a featlift.backbones.UserModule, got {type(user).__name__}")
        self.user = user
        if isinstance(user.module, nn.Module):
            self.module = user.module
        else:
            self._call = user.module
        self.name = user.name
        self.patch = user.stride
        self.channels = user.channels
        self.normalisation = user.normalisation
        self.freeze()

    @classmethod
    def build(cls, name: str, options: BuildOptions) -> Backbone:
        """A user's module cannot be built from its name: this raises the error that asks for it."""
        raise ConfigError(_ask_for(name, options.stride, "...", "...", "..."))

    @classmethod
    def from_config(cls, config, options: BuildOptions | None = None) -> Backbone:
        """A user's module cannot be built from its config: this raises the error that asks for it by name,
        with the stride, channels and statistics the config records."""
        mean = "..." if config.mean is None else tuple(config.mean)
        std = "..." if config.std is None else tuple(config.std)
        raise ConfigError(_ask_for(config.name, config.patch, config.channels, mean, std))

    def forward(self, image: Tensor) -> Tensor:
        module = self.module if "module" in self._modules else self._call
        return module(image)
