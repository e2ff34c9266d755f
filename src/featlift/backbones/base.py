"""The interface every backbone implements, and the checks every source shares."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor, nn

from .._tensors import freeze
from ..config import BackboneConfig
from ..errors import CheckpointError, ConfigError, FeatliftError
from ._normalisation import Stats, normalise

__all__ = ["Backbone", "BuildOptions", "load_weights", "tokens_to_grid"]


@dataclass(frozen=True)
class BuildOptions:
    """How a backbone is built by name (:meth:`Backbone.create`), one value for every source."""

    stride: int | None = None  # the output stride asked for (None: the model's own, or its deepest stage's)
    pretrained: bool = True  # the published weights (each library's own download); False: random weights
    weights: str | os.PathLike | None = None  # local weights (a file or folder, as the source reads them)
    cache_dir: str | os.PathLike | None = None  # the Hugging Face cache directory (None: the standard one)
    trust_repo: bool = False  # a torch.hub entry from GitHub runs its code without asking

    def local_weights(self, cls: type[Backbone], name: str) -> str | os.PathLike | Path | None:
        """``weights``, else (``pretrained``) the published file of ``name`` (``cls.published_weights``),
        else None."""
        if self.weights is None and self.pretrained:
            return cls.published_weights(name, cache_dir=self.cache_dir)
        return self.weights


class Backbone(nn.Module):
    """A frozen feature extractor.

    ``forward(image)`` takes an image [B, 3, H, W] normalised by :meth:`normalise` (ImageNet mean/std for
    DINO; [0, 1] for the SD VAE) with H and W any multiples of the stride :attr:`patch`, and returns
    features [B, channels, H / patch, W / patch].

    :attr:`patch` is the backbone's stride: input pixels per feature cell (a ViT's patch, a convolutional
    network's output stride, 8 for the SD VAE). :attr:`name` is what the backbone's source builds it from
    (``config.json`` records :attr:`source` and :attr:`name`).

    :attr:`normalisation` holds the backbone's own ``(mean, std)`` per RGB channel for images in [0, 1]:
    set by :func:`featlift.backbones.load_backbone` from the config, by the built-in classes from what
    their library publishes (timm's pretrained config, open_clip's preprocessing config, a transformers
    model's image processor config; [0, 1] for the VAE and torch.hub entries), None (unstated) for a
    subclass that does not set it. An :class:`~featlift.Upsampler` checks it against its UPLiFT config
    (see :func:`featlift.backbones.agreed_normalisation`) and uses the config's when it is unstated,
    keeping the result itself: the backbone object is never changed.

    Subclasses that featlift can build by name set :attr:`source` (their key in
    :data:`featlift.backbones.BACKBONE_CLASSES`) and override :meth:`build` (or keep the default's
    ``cls(name, weights)`` with :meth:`published_weights`).
    """

    patch: int
    channels: int
    name: str | None = None
    source: ClassVar[str | None] = None  # the BackboneConfig.source this class serves ("timm", "diffusers", ...)
    example: ClassVar[str] = ""  # an example name on the command line, "SOURCE:NAME"
    normalisation: Stats | None = None

    # -- building ----------------------------------------------------------------------------------

    @classmethod
    def create(cls, name: str, options: BuildOptions | None = None) -> Backbone:
        """The backbone ``name`` built as ``options`` say (:class:`BuildOptions`; default: published weights,
        the model's own stride), its stride checked against the one asked for.

        Raises:
            ConfigError: the model does not give features at ``options.stride``.
        """
        options = BuildOptions() if options is None else options
        backbone = cls.build(name, options)
        backbone.check_stride(options.stride)
        return backbone

    @classmethod
    def build(cls, name: str, options: BuildOptions) -> Backbone:
        """The construction step of :meth:`create`, the one a source overrides. The default builds
        ``cls(name, weights)``: ``options.weights``, else (``pretrained``) :meth:`published_weights`, else
        None (a random initialisation)."""
        return cls(name, options.local_weights(cls, name))

    @classmethod
    def from_config(cls, config: BackboneConfig, options: BuildOptions | None = None) -> Backbone:
        """The backbone ``config`` names, at its stride (``config.patch``), with its channel count checked.

        Raises:
            ConfigError: the model gives another stride or channel count than ``config`` records.
        """
        options = dataclasses.replace(BuildOptions() if options is None else options, stride=config.patch)
        backbone = cls.create(config.name, options)
        if backbone.channels != config.channels:
            raise ConfigError(
                f"backbone.channels: the config records {config.channels} channels but the {cls.source} model "
                f"{config.name!r} gives {backbone.channels}; the upsampler was trained for another backbone. Fix: "
                "use the backbone the upsampler was trained with, or correct backbone.name in its config.json"
            )
        return backbone

    @classmethod
    def published_normalisation(cls, name: str) -> Stats | None:
        """The ``(mean, std)`` the published model ``name`` was trained with; None when unknown."""
        return None

    @classmethod
    def published_weights(cls, name: str, *, cache_dir: str | os.PathLike | None = None) -> Path:
        """The local path of the published weights of model ``name``, downloaded if needed."""
        raise NotImplementedError(f"{cls.__name__} cannot be built from a config")

    # -- checks ------------------------------------------------------------------------------------

    def check_stride(self, stride: int | None) -> None:
        """Raise :class:`~featlift.errors.ConfigError` when ``stride`` is given and is not :attr:`patch`."""
        if stride is not None and stride != self.patch:
            raise ConfigError(
                f"backbone.patch: stride {stride} was asked for, but the {self.source} model {self.name!r} has "
                f"stride {self.patch} (one output stride only). Fix: ask for stride {self.patch} (or none), or "
                "choose a model with that stride"
            )

    def probe_size(self) -> tuple[int, int]:
        """The image size (H, W) :meth:`verify` runs: 2 x 3 feature cells (unequal sides catch a swap)."""
        return 2 * self.patch, 3 * self.patch

    @torch.no_grad()
    def verify(self) -> Backbone:
        """Run the backbone once on a small image (:meth:`probe_size`) and check that its output is
        [1, channels, H / patch, W / patch]: the stated stride and channels checked against the output.

        Returns the backbone itself.

        Raises:
            ConfigError: the output has another shape, is not a tensor, or the call fails.
        """
        size = self.probe_size()
        reference = next((t for t in [*self.parameters(), *self.buffers()] if t.is_floating_point()), None)
        device = reference.device if reference is not None else torch.device("cpu")
        dtype = reference.dtype if reference is not None else torch.float32
        image = self.normalise(torch.full((1, 3, *size), 0.5, device=device), dtype=dtype)
        want = (1, self.channels, size[0] // self.patch, size[1] // self.patch)
        what = f"the {self.source or type(self).__name__} backbone {self.name!r}"
        try:
            out = self(image)
        except FeatliftError:
            raise
        except Exception as err:  # the library's own error: report it with what featlift asked for
            detail = " ".join(str(err).split())[:600] or "no details"
            raise ConfigError(
                f"backbone.patch: {what} failed on a {size[0]}x{size[1]} image ({type(err).__name__}: {detail}); "
                f"featlift feeds every backbone images of any size that is a multiple of its stride ({self.patch})"
            ) from None
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        if got != want:
            raise ConfigError(
                f"backbone.patch: {what} returned features of shape {got} for a {size[0]}x{size[1]} image, but "
                f"its stated stride {self.patch} and {self.channels} channels imply {want}. Fix: state the stride "
                "and channel count the model really has"
            )
        return self

    # -- use ---------------------------------------------------------------------------------------

    def freeze(self) -> Backbone:
        """This backbone in eval mode with gradients off (in place)."""
        return freeze(self)

    def normalise(self, images: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """Images [B, 3, H, W] in [0, 1] -> ``(images - mean) / std`` with :attr:`normalisation` (none when
        unstated), computed in float32 on the images' device, returned in ``dtype`` (default float32)."""
        return normalise(images, self.normalisation, dtype)

    def activation_bytes(self, batch: int, size: tuple[int, int], itemsize: int) -> int:
        """Rough peak bytes of one forward pass on ``batch`` images of ``size`` (H, W) pixels, beyond the
        input and output, for featlift's memory guard. The default fits a ViT with a memory-efficient
        attention kernel: about 12 token maps of ``channels`` wide (11 measured for timm's ViT-S/14 on
        the CPU, linear in the token count). Backbones of other shapes override it."""
        tokens = (size[0] // self.patch) * (size[1] // self.patch)
        return 12 * batch * tokens * self.channels * itemsize

    def forward(self, image: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


def tokens_to_grid(tokens: Tensor, size: tuple[int, int], prefix: int | None = None, *, what: str) -> Tensor:
    """Patch tokens [B, N, C] of an image with a ``size`` = (h, w) cell grid -> features [B, C, h, w].

    ``prefix`` leading tokens (CLS, registers) are dropped; None drops ``N - h * w`` of them. The patch
    tokens are in row-major order, as every ViT lays them out.

    Raises:
        ConfigError: the token count is not ``prefix + h * w`` (``what`` names the model).
    """
    h, w = size
    n = tokens.shape[1]
    prefix = n - h * w if prefix is None else prefix
    if prefix < 0 or n != prefix + h * w:
        raise ConfigError(
            f"backbone.patch: {what} returned {n} tokens for a {h}x{w} grid of patches, expected {h * w} patch "
            f"tokens after {prefix} prefix token(s); is the stride right?"
        )
    return tokens[:, prefix:].unflatten(1, (h, w)).permute(0, 3, 1, 2)


def load_weights(module: nn.Module, path: str | os.PathLike, *, what: str, prefix: str = "") -> None:
    """Load the state dict in ``path`` (read by :func:`featlift.weights.read_state_dict`: safetensors, or
    ``.pth``/``.pt`` with ``weights_only=True``) into ``module`` strictly. Keys starting with ``prefix``
    are taken without it when the file holds any (a whole CLIP model's ``visual.`` tower).

    Raises:
        FileNotFoundError: ``path`` is not a file.
        CheckpointError: the file is unreadable or its keys and shapes do not fit ``module``.
    """
    from ..weights import read_state_dict

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file not found: {path}")
    state = read_state_dict(path)
    if prefix and any(k.startswith(prefix) for k in state):
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        parts = [
            f"{label} {keys[:5]}{' ...' if len(keys) > 5 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("other shapes", shapes))
            if keys
        ]
        raise CheckpointError(
            f"backbone weights {path} do not fit {what}: " + "; ".join(parts) + ". Pass the weights of this "
            "model, or the model name these weights belong to"
        )
    module.load_state_dict(state, strict=True)
