"""Architecture configuration for UPLiFT upsamplers.

One frozen dataclass tree describes an upsampler completely: the backbone it serves (channels, patch,
normalisation), the guidance encoder, the weight-shared decoder step, the Local Attender and the optional
refiner.  Every value is checked when the dataclass is built, so a bad config fails early with a message
that names the field.

This module is the schema only. Its one serialisation is featlift's own lossless format:
:meth:`UpliftConfig.to_dict` / :meth:`UpliftConfig.from_dict`, and :meth:`UpliftConfig.to_json` /
:meth:`UpliftConfig.from_json` for the ``config.json`` written next to ``model.safetensors`` (every JSON
parse, string or file, goes through :meth:`UpliftConfig.from_json`). The UPLiFT authors' YAML schema and
checkpoint layout are read by :mod:`featlift._authors`.

Defaults
--------
The authors' schema lets some keys be omitted; their values then come from
:data:`featlift._authors.DEFAULTS`. A schema field either has no default (it is required) or its default is
the authors' default for the same key, so a config built here and the same config read from an authors'
file never differ silently. Where the authors' default is not what a featlift user should get (they are
not what the published models use), the field is required and every caller states it:

* :attr:`UpConfig.residual` (authors: ``"none"``; published models: ``"bilinear"``);
* :attr:`DecoderConfig.guidance_resample` and :attr:`RefinerConfig.guidance_resample` (authors:
  ``"none"``; published models: ``"nearest"``);
* :attr:`UpliftConfig.share_encoder` (authors: ``False``; published models: ``True``).

Fields whose key the authors' schema requires (``block``, ``attender``, ...) may keep a default of their
own. The classes holding a required field are keyword-only (``kw_only=True``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._neighbourhood import NEIGHBOURHOOD_SIZES
from .errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "BACKBONE_SOURCES",
    "BLOCK_TYPES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NORM_TYPES",
    "RESAMPLE_MODES",
    "BackboneConfig",
    "BlockGroupConfig",
    "DecoderConfig",
    "DecoderStageConfig",
    "DownConfig",
    "EncoderConfig",
    "EncoderStageConfig",
    "RefinerConfig",
    "UpConfig",
    "UpliftConfig",
]

BLOCK_TYPES = ("SingleConv", "DoubleConv", "IdentityBlock")
NORM_TYPES = ("batch", "layer")
RESAMPLE_MODES = ("nearest", "bilinear", "none")
DOWN_OPS = ("none", "conv", "max")
UP_OPS = ("tconv", "none")
RESIDUAL_MODES = ("none", "bilinear")
# Where a backbone comes from (featlift.backbones.BACKBONE_CLASSES maps each to its class): "module" is a user's
# own module, passed in Python (featlift.backbones.UserModule).
BACKBONE_SOURCES = ("timm", "diffusers", "open_clip", "transformers", "hub", "module")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check(condition: bool, name: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{name}: {message}")


def _check_choice(value: Any, name: str, choices: tuple) -> None:
    _check(value in choices, name, f"got {value!r}, expected one of {', '.join(map(repr, choices))}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_fusion(cfg: Any) -> None:
    """The guidance-concat fields shared by the decoder and the refiner."""
    _check(
        _is_int(cfg.noise_channels) and cfg.noise_channels >= 0,
        "noise_channels",
        f"must be a non-negative integer, got {cfg.noise_channels!r}",
    )
    _check(
        isinstance(cfg.noise_scale, (int, float)) and not isinstance(cfg.noise_scale, bool),
        "noise_scale",
        f"must be a number, got {cfg.noise_scale!r}",
    )
    _check_choice(cfg.guidance_resample, "guidance_resample", RESAMPLE_MODES)


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockGroupConfig:
    """A sequence of residual conv blocks (the authors' ``block_i`` entries)."""

    block: str = "SingleConv"  # "SingleConv" (3x3 conv) | "DoubleConv" (two 3x3 convs) | "IdentityBlock"
    norm: str = "batch"  # "batch" (BatchNorm2d) | "layer" (channels-first LayerNorm, eps 1e-6)
    widths: tuple[int, ...] = (64,)  # output channels of each block; the block count is len(widths)
    residual: bool = True  # add the block input to its output (channel-mismatch rule)
    stride: int = 1  # 2 makes each 3x3 conv strided (SingleConv in the encoder only)
    one_by: bool = True  # end each block with a 1x1 conv (with bias)

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(self.widths))
        _check_choice(self.block, "block", BLOCK_TYPES)
        _check_choice(self.norm, "norm", NORM_TYPES)
        for i, width in enumerate(self.widths):
            _check(_is_int(width) and width > 0, f"widths[{i}]", f"must be a positive integer, got {width!r}")
        _check(isinstance(self.residual, bool), "residual", f"must be true or false, got {self.residual!r}")
        _check(isinstance(self.one_by, bool), "one_by", f"must be true or false, got {self.one_by!r}")
        _check(self.stride in (1, 2), "stride", f"must be 1 or 2, got {self.stride!r}")
        _check(
            self.stride == 1 or self.block == "SingleConv",
            "stride",
            "stride 2 is only supported for SingleConv blocks",
        )

    @property
    def is_identity(self) -> bool:
        return self.block == "IdentityBlock" or not self.widths

    def out_channels(self, in_channels: int) -> int:
        return in_channels if self.is_identity else self.widths[-1]


@dataclass(frozen=True)
class DownConfig:
    """Optional downsampling in front of an encoder stage (every published config uses ``op="none"``)."""

    op: str = "none"  # "none" | "conv" (strided 3x3 conv + BatchNorm + ReLU) | "max" (2x2 max pool)
    factor: float = 1.0  # spatial scale of the op: 0.5 halves; "conv" uses stride round(1/factor)
    residual: str = "none"  # "none" | "bilinear" (bilinearly resized input added, align_corners=True)

    def __post_init__(self) -> None:
        _check_choice(self.op, "op", DOWN_OPS)
        _check_choice(self.residual, "residual", RESIDUAL_MODES)
        _check(
            isinstance(self.factor, (int, float)) and 0 < self.factor <= 1,
            "factor",
            f"must be in (0, 1], got {self.factor!r}",
        )
        if self.op != "none":
            stride = 1 / self.factor
            _check(
                abs(stride - round(stride)) < 1e-6 and round(stride) >= 2,
                "factor",
                f"must be 1/k for an integer k >= 2 when op is {self.op!r}, got {self.factor!r}",
            )
        if self.op == "max":
            _check(
                self.factor == 0.5, "factor", f"max pooling halves the size, so factor must be 0.5, got {self.factor!r}"
            )

    @property
    def stride(self) -> int:
        return 1 if self.op == "none" else round(1 / self.factor)


@dataclass(frozen=True, kw_only=True)
class UpConfig:
    """The decoder's upsampling op: a transposed conv with kernel = stride = factor."""

    op: str = "tconv"  # "tconv" | "none"
    factor: int = 2  # integer upsampling factor of the transposed conv
    # "bilinear" (input resized with align_corners=True, added) | "none". Required: the authors' default is
    # "none", the published models use "bilinear".
    residual: str

    def __post_init__(self) -> None:
        _check_choice(self.op, "op", UP_OPS)
        _check_choice(self.residual, "residual", RESIDUAL_MODES)
        _check(_is_int(self.factor) and self.factor >= 1, "factor", f"must be a positive integer, got {self.factor!r}")

    @property
    def scale(self) -> int:
        return self.factor if self.op == "tconv" else 1


# --------------------------------------------------------------------------------------------------
# The three parts of the network
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncoderStageConfig:
    """One guidance-encoder stage: an optional down op, then a block group. Each stage emits one map."""

    blocks: BlockGroupConfig = BlockGroupConfig()
    down: DownConfig = DownConfig()  # applied before ``blocks``; must be "none" on the first stage


@dataclass(frozen=True)
class EncoderConfig:
    """The guidance encoder: runs once on the image and returns one map per stage."""

    stages: tuple[EncoderStageConfig, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        _check(1 <= len(self.stages) <= 5, "stages", f"needs 1 to 5 stages, got {len(self.stages)}")
        _check(self.stages[0].down.op == "none", "stages[0].down.op", "the first stage cannot downsample")

    def out_channels(self, in_channels: int = 3) -> list[int]:
        """Channels of each stage's output map, in order."""
        channels, c = [], in_channels
        for stage in self.stages:
            c = stage.blocks.out_channels(c)
            channels.append(c)
        return channels


@dataclass(frozen=True, kw_only=True)
class DecoderStageConfig:
    """One upsampling stage of the decoder step: the up op, guidance concat, then a block group."""

    up: UpConfig  # required (UpConfig.residual has no default)
    blocks: BlockGroupConfig = BlockGroupConfig()


@dataclass(frozen=True, kw_only=True)
class DecoderConfig:
    """The weight-shared decoder step that produces the attender's guide map G.

    Stage k (0 = ``input_blocks``) concatenates the guidance map ``-(k + 1)`` (the deepest first), resampled
    to the current size, and ``noise_channels`` channels of Gaussian noise.
    """

    input_blocks: BlockGroupConfig = BlockGroupConfig(block="DoubleConv", widths=(64,))
    stages: tuple[DecoderStageConfig, ...]  # 0 to 4 upsampling stages
    noise_channels: int = 0  # extra channels of N(0, 1) * noise_scale noise concatenated at every stage
    noise_scale: float = 1.0
    # How guidance maps are resized to the decoder's grid: "nearest" | "bilinear" | "none" (sizes must
    # already agree). Required: the authors' default is "none", the published models use "nearest".
    guidance_resample: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        _check(len(self.stages) <= 4, "stages", f"supports 0 to 4 upsampling stages, got {len(self.stages)}")
        _check_fusion(self)
        groups = [("input_blocks", self.input_blocks)] + [
            (f"stages[{i}].blocks", s.blocks) for i, s in enumerate(self.stages)
        ]
        for name, group in groups:
            _check(group.stride == 1, f"{name}.stride", "decoder blocks cannot be strided")

    @property
    def scale(self) -> int:
        """Spatial factor of one decoder step (the product of its up ops)."""
        return math.prod(stage.up.scale for stage in self.stages)


@dataclass(frozen=True, kw_only=True)
class RefinerConfig:
    """Optional blocks after the attender (the VAE variant): concat guidance + noise, blocks, 1x1 conv."""

    blocks: BlockGroupConfig = BlockGroupConfig(block="SingleConv", norm="layer", widths=(64,))
    guidance_index: int | None = None  # which encoder map to concatenate (Python index); None: -1 - up steps
    noise_channels: int = 0
    noise_scale: float = 1.0
    guidance_resample: str  # required, as DecoderConfig.guidance_resample

    def __post_init__(self) -> None:
        _check(self.blocks.stride == 1, "blocks.stride", "refiner blocks cannot be strided")
        _check(
            self.guidance_index is None or _is_int(self.guidance_index),
            "guidance_index",
            f"must be an integer or null, got {self.guidance_index!r}",
        )
        _check_fusion(self)


@dataclass(frozen=True)
class BackboneConfig:
    """The frozen backbone whose features are upsampled."""

    channels: int = 384  # feature channels C
    patch: int = 14  # the stride: pixels per feature cell (a ViT's patch, a conv net's output stride, 8 for the VAE)
    # The name its source builds it from: a timm model name ("vit_small_patch14_dinov2.lvd142m"), a diffusers
    # pipeline id, an open_clip "ARCH/TAG", a transformers repo id or folder, a torch.hub "REPO:ENTRY", or the
    # name of a user's module.
    name: str | None = None
    source: str | None = None  # one of BACKBONE_SOURCES, or None (features supplied by the user)
    # Per-channel image normalisation. None: unstated, resolved by featlift.backbones._sources (what the
    # backbone's library publishes for its name, else images stay in [0, 1]). Trained models state it.
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(float(v) for v in value))
        _check(
            _is_int(self.channels) and self.channels > 0,
            "channels",
            f"must be a positive integer, got {self.channels!r}",
        )
        _check(_is_int(self.patch) and self.patch > 0, "patch", f"must be a positive integer, got {self.patch!r}")
        _check(
            self.source is None or self.source in BACKBONE_SOURCES,
            "source",
            f"got {self.source!r}, expected one of {BACKBONE_SOURCES} or null",
        )
        _check((self.mean is None) == (self.std is None), "std", "mean and std must both be set or both be null")
        if self.mean is not None:
            _check(len(self.mean) == 3 and len(self.std) == 3, "mean", "mean and std need 3 values (RGB)")
            _check(all(s > 0 for s in self.std), "std", "values must be positive")


# --------------------------------------------------------------------------------------------------
# The whole model
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class UpliftConfig:
    """Complete description of an UPLiFT upsampler. Build with keywords; every field is validated."""

    backbone: BackboneConfig
    encoder: EncoderConfig
    decoder: DecoderConfig
    attender: int = 17  # Local Attender neighbourhood size: 5, 9, 13, 17 or 25 offsets
    attender_residual: bool = True  # logits = conv1x1(G) + G[:, :n]
    refiner: RefinerConfig | None = None
    up_factor: int = 2  # spatial factor of one iteration; must equal the decoder's scale
    # True: run the guidance encoder once and reuse it in every iteration; False: re-run it on the image
    # grown for each iteration. Required: the authors' default is False, the published models use True.
    share_encoder: bool
    guidance_patch: int | None = None  # guidance pixels per feature cell; None: 16 for patch 14, else patch
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        _check(isinstance(self.backbone, BackboneConfig), "backbone", "must be a BackboneConfig")
        _check(isinstance(self.encoder, EncoderConfig), "encoder", "must be an EncoderConfig")
        _check(isinstance(self.decoder, DecoderConfig), "decoder", "must be a DecoderConfig")
        _check(
            _is_int(self.attender) and self.attender in NEIGHBOURHOOD_SIZES,
            "attender",
            f"neighbourhood size must be one of {NEIGHBOURHOOD_SIZES}, got {self.attender!r}",
        )
        _check(isinstance(self.attender_residual, bool), "attender_residual", "must be true or false")
        _check(isinstance(self.share_encoder, bool), "share_encoder", "must be true or false")
        _check(
            _is_int(self.up_factor) and self.up_factor >= 1,
            "up_factor",
            f"must be a positive integer, got {self.up_factor!r}",
        )
        _check(
            self.up_factor == self.decoder.scale,
            "up_factor",
            f"is {self.up_factor} but the decoder's up ops scale by {self.decoder.scale}; make them agree",
        )
        _check(
            self.guidance_patch is None or (_is_int(self.guidance_patch) and self.guidance_patch > 0),
            "guidance_patch",
            f"must be a positive integer or null, got {self.guidance_patch!r}",
        )
        n_maps = len(self.encoder.stages)
        _check(
            n_maps >= len(self.decoder.stages) + 1,
            "decoder.stages",
            f"{len(self.decoder.stages)} up stages read {len(self.decoder.stages) + 1} guidance maps but the encoder has {n_maps} stages",
        )
        if self.refiner is not None:
            index = self.refiner_guidance_index
            _check(
                -n_maps <= index < n_maps,
                "refiner.guidance_index",
                f"{index} is out of range for {n_maps} encoder stages",
            )

    # -- derived quantities -------------------------------------------------------------------------

    @property
    def channels(self) -> int:
        return self.backbone.channels

    @property
    def patch(self) -> int:
        return self.backbone.patch

    @property
    def resolved_guidance_patch(self) -> int:
        """Guidance-image pixels per feature cell (the image is pre-resized when this differs from patch)."""
        if self.guidance_patch is not None:
            return self.guidance_patch
        return 16 if self.backbone.patch == 14 else self.backbone.patch

    @staticmethod
    def derived_guidance_patch(stride: int, up_factor: int = 2) -> int:
        """Guidance pixels per feature cell for a backbone of ``stride`` with no published config: the
        smallest power of ``up_factor`` that is at least the stride (8 -> 8, 14 -> 16, 16 -> 16, 32 -> 32,
        7 -> 8, 28 -> 32). The image is resized by that over the stride for the guidance encoder, so the last
        iteration's grid is the guidance map's own and every earlier iteration reads an exact nearest
        subgrid of it: the authors' 14 -> 16 rule, for any stride."""
        if up_factor < 2:
            return stride
        patch = 1
        while patch < stride:
            patch *= up_factor
        return patch

    def for_backbone(self, backbone: BackboneConfig) -> UpliftConfig:
        """This architecture for another backbone (its channels, stride, name and statistics).

        Where the stride differs from this config's, the guidance patch is derived
        (:meth:`derived_guidance_patch`) and written into the result, so that every iteration reads
        guidance at its own grid: strides 8, 14, 16 and 32 reach pixel density in 3, 4, 4 and 5 iterations.
        The encoder, decoder step and attender are kept as they are (the guidance maps are all at the
        guidance image's resolution, so each iteration has the maps it reads at any stride).
        """
        if backbone.patch == self.backbone.patch:
            return dataclasses.replace(self, backbone=backbone)
        guidance = self.derived_guidance_patch(backbone.patch, self.up_factor)
        return dataclasses.replace(self, backbone=backbone, guidance_patch=guidance)

    @property
    def default_iters(self) -> int:
        """Iterations that reach the guidance resolution: 4 for patch 14 and 16, 3 for patch 8, 5 for 32."""
        if self.up_factor == 1:
            return 1
        iters, reach = 0, 1
        while reach < self.resolved_guidance_patch:
            reach *= self.up_factor
            iters += 1
        return max(iters, 1)

    @property
    def guide_channels(self) -> int:
        """Channels of the decoder's output G (the attender's guide)."""
        enc = self.encoder.out_channels(3)
        c = self.decoder.input_blocks.out_channels(self.channels + enc[-1] + self.decoder.noise_channels)
        for k, stage in enumerate(self.decoder.stages, start=2):
            c = stage.blocks.out_channels(c + enc[-k] + self.decoder.noise_channels)
        return c

    @property
    def refiner_guidance_index(self) -> int:
        if self.refiner is None:
            raise AttributeError("this config has no refiner")
        if self.refiner.guidance_index is not None:
            return self.refiner.guidance_index
        return -1 - len(self.decoder.stages)

    # -- featlift's own format ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict; :meth:`from_dict` inverts it exactly."""
        return _to_plain(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UpliftConfig:
        return _from_plain(cls, data, "config")

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike) -> UpliftConfig:
        """Parse featlift's config JSON: a string holding a JSON object, or the path of a ``config.json``.

        A ``str`` whose first non-blank character is ``{`` is JSON text; anything else is a path. This is
        the one parser of featlift's config JSON (:func:`featlift.weights.read_config_json` calls it).

        Raises:
            FileNotFoundError: the path does not exist.
            ConfigError: the file cannot be read as UTF-8 text, the text is not JSON or not a JSON object,
                or a field is missing, unknown or invalid. For a file the message starts with its path
                and says how to fix it.
        """
        if isinstance(text_or_path, str) and text_or_path.lstrip().startswith("{"):
            return _parse_json(text_or_path, None)
        path = Path(text_or_path)
        if not path.exists():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(
                f"{path}: cannot be read as UTF-8 text ({type(err).__name__}: {err}); {_REWRITE}"
            ) from None
        return _parse_json(text, path)


# --------------------------------------------------------------------------------------------------
# featlift's JSON format
# --------------------------------------------------------------------------------------------------

_REWRITE = "restore it, or write it again with model.save_pretrained(dir) or UpliftConfig.to_json(path)"


def _parse_json(text: str, path: Path | None) -> UpliftConfig:
    """Decode config JSON ``text`` (read from ``path``, or given as a string when ``path`` is None)."""
    where = "config" if path is None else str(path)
    fix = "pass the text UpliftConfig.to_json() writes" if path is None else _REWRITE
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        damaged = "" if path is None else "the file is damaged: "
        raise ConfigError(f"{where}: not valid JSON ({err}); {damaged}{fix}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where}: expected a JSON object of config fields (backbone, encoder, decoder, ...), got a JSON "
            f"{type(data).__name__}; {fix}"
        )
    if path is None:
        return UpliftConfig.from_dict(data)
    try:
        return UpliftConfig.from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


# Fields that older featlift versions wrote to config.json and that are gone from the schema:
# class name -> fields that older featlift versions wrote into config.json but never acted on: the model is
# the same without them, so files that hold them load unchanged (the value is ignored, with a log line).
_LEGACY_FIELDS: dict[str, frozenset[str]] = {
    "UpliftConfig": frozenset({"raw_image_guidance"}),  # the authors' no_UEP; featlift 0.1 never used it
}


# --------------------------------------------------------------------------------------------------
# Generic dataclass <-> plain data conversion
# --------------------------------------------------------------------------------------------------


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    return value


def _from_plain(tp: Any, data: Any, path: str) -> Any:
    """Rebuild a value of type ``tp`` from JSON data, naming ``path`` in every error."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if data is None:
            return None
        return _from_plain(args[0], data, path)
    if origin is tuple:
        item_type = typing.get_args(tp)[0]
        if not isinstance(data, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {data!r}")
        return tuple(_from_plain(item_type, v, f"{path}[{i}]") for i, v in enumerate(data))
    if dataclasses.is_dataclass(tp):
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping, got {data!r}")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        unknown = sorted(set(data) - names)
        legacy = [key for key in unknown if key in _LEGACY_FIELDS.get(tp.__name__, ())]
        for key in legacy:
            logger.info(
                "%s.%s (= %r): written by an older featlift, which never used it; ignored", path, key, data[key]
            )
        data = {k: v for k, v in data.items() if k not in legacy}
        unknown = [key for key in unknown if key not in legacy]
        if unknown:
            raise ConfigError(
                f"{path}: unknown field(s) {unknown}; known: {sorted(names)}. Remove them or correct their "
                "spelling (a file written by a newer featlift needs that version)"
            )
        missing = [
            f.name
            for f in dataclasses.fields(tp)
            if f.name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise ConfigError(f"{path}: missing required key(s) {missing}")
        kwargs = {k: _from_plain(hints[k], v, f"{path}.{k}") for k, v in data.items()}
        try:
            return tp(**kwargs)
        except ConfigError as err:
            raise ConfigError(f"{path}.{err}") from None
        except TypeError as err:
            raise ConfigError(f"{path}: {err}") from None
    if tp is float and _is_int(data):
        return float(data)
    if tp in (int, float, str, bool) and not (isinstance(data, tp) and not (tp is int and isinstance(data, bool))):
        raise ConfigError(f"{path}: expected {tp.__name__}, got {data!r}")
    return data
