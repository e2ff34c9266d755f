"""The UPLiFT authors' formats: their YAML config schema, their checkpoint key layout, their defaults.

Everything featlift knows about the files written by the authors' code lives here, so that
:mod:`featlift.config` stays a pure schema:

* :func:`read_yaml` / :func:`from_authors_dict` read a config in the authors' schema (top-level sections
  ``backbone`` and ``uplift``) into an :class:`~featlift.config.UpliftConfig`. Keys the schema lets you
  omit take their value from :data:`DEFAULTS`, the one table of the authors' defaults.
* :func:`is_authors_layout` / :func:`convert_state_dict` recognise and rename the key layout of their
  checkpoints (the published ``.safetensors`` files); :func:`featlift.weights.load_into` calls them.

What the reader accepts:

* The top-level ``data`` and ``train`` sections are the training hyper-parameters of the authors' scripts,
  not architecture: they are ignored (featlift's trainer has its own settings). ``description`` is kept.
  Any other top-level key is ignored with a logged warning.
* Inside ``backbone`` and ``uplift`` every key is either used or refused: unknown keys raise
  :class:`~featlift.errors.ConfigError`, and so do keys featlift would otherwise have to drop, unless
  their value is the one featlift implements:

  - ``backbone.stride`` must equal ``backbone.patch`` (true of every published config);
  - ``uplift.no_UEP: true`` (the guidance encoder sees the image without the backbone's normalisation)
    is accepted only for a diffusers backbone (``diff_pipe_name``), whose normalisation is the identity;
  - ``uplift.decoder.residual_outc`` must be null or absent;
  - ``uplift.attender: -1`` (no Local Attender) is refused.

Every error is a :class:`~featlift.errors.ConfigError` whose message names the key (and, from
:func:`read_yaml`, the file).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .config import (
    BackboneConfig,
    BlockGroupConfig,
    DecoderConfig,
    DecoderStageConfig,
    DownConfig,
    EncoderConfig,
    EncoderStageConfig,
    RefinerConfig,
    UpConfig,
    UpliftConfig,
)
from .errors import ConfigError

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["DEFAULTS", "convert_state_dict", "from_authors_dict", "is_authors_layout", "read_yaml"]

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# The authors' defaults
# --------------------------------------------------------------------------------------------------

#: The authors' defaults for the keys their schema lets you omit, by section kind: ``backbone``,
#: ``uplift``, ``decoder``, ``refiner``, ``block`` (every ``block_i`` / refiner ``block_0`` entry),
#: ``down`` (encoder ``down_i``) and ``up`` (decoder ``up_i``). A key that is in no table here is
#: required. ``None`` for ``backbone.stride`` means "equal to the patch".
DEFAULTS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "backbone": MappingProxyType({"stride": None, "diff_pipe_name": None, "model_type": None}),
        "uplift": MappingProxyType({"up_factor": 2, "no_UEP": False, "enc_share": False, "refiner": None}),
        "decoder": MappingProxyType({"ncat_c": 0, "ncat_s": 1.0, "enc_resample": "none", "residual_outc": None}),
        "refiner": MappingProxyType({"ncat_c": 0, "ncat_s": 1.0, "enc_resample": "none", "ref_con": None}),
        "block": MappingProxyType({"norm": "batch", "hc": (), "residual": True, "stride": 1, "one_by": True}),
        "down": MappingProxyType({"factor": 1.0, "residual": "none"}),
        "up": MappingProxyType({"factor": 2, "residual": "none"}),
    }
)

# Keys each section must state (the numbered block_i / down_i / up_i entries are added per config).
_REQUIRED: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "backbone": ("channel", "patch"),
        "uplift": ("attender", "encoder", "decoder"),
        "encoder": ("down_steps",),
        "decoder": ("up_steps",),
        "refiner": ("block_0",),
        "block": ("block", "count"),
        "down": ("down_op",),
        "up": ("up_op",),
    }
)

_TOP_LEVEL_IGNORED = ("data", "train")  # the authors' training settings, not architecture


def _keys(kind: str) -> set[str]:
    return set(_REQUIRED.get(kind, ())) | set(DEFAULTS.get(kind, {}))


def _take(section: Mapping, key: str, path: str, kind: str) -> Any:
    """``section[key]``, else the authors' default from :data:`DEFAULTS`, else a missing-key error."""
    if key in section:
        return section[key]
    defaults = DEFAULTS.get(kind, {})
    if key in defaults:
        return defaults[key]
    raise ConfigError(f"{path}.{key}: missing")


def _section(section: Any, allowed: set[str], path: str) -> Mapping:
    if not isinstance(section, Mapping):
        raise ConfigError(f"{path}: expected a mapping, got {section!r}")
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; known: {sorted(allowed)}")
    return section


def _build(cls: type, path: str, **kwargs: Any) -> Any:
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{path}.{err}") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------------------
# Reading their YAML schema
# --------------------------------------------------------------------------------------------------


def read_yaml(path: str | Path) -> UpliftConfig:
    """Read a config file in the UPLiFT authors' schema (sections ``backbone`` and ``uplift``).

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ConfigError: the file is not valid YAML, or holds a value featlift cannot use; the message names
            the file and the key.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    try:
        return from_authors_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def _group(section: Any, path: str) -> BlockGroupConfig:
    """A ``block_i`` entry: ``count`` blocks of type ``block`` with widths ``hc[:count]``."""
    section = _section(section, _keys("block"), path)
    count = _take(section, "count", path, "block")
    hc = _take(section, "hc", path, "block")
    if not _is_int(count) or count < 0:
        raise ConfigError(f"{path}.count: must be a non-negative integer, got {count!r}")
    if not isinstance(hc, (list, tuple)) or len(hc) < count:
        raise ConfigError(f"{path}.hc: needs at least count={count} widths, got {hc!r}")
    return _build(
        BlockGroupConfig,
        path,
        block=_take(section, "block", path, "block"),
        norm=_take(section, "norm", path, "block"),
        widths=tuple(hc[:count]),
        residual=_take(section, "residual", path, "block"),
        stride=_take(section, "stride", path, "block"),
        one_by=_take(section, "one_by", path, "block"),
    )


def _resampler(cls: type, kind: str, parent: Mapping, key: str, parent_path: str) -> Any:
    """An encoder ``down_i`` (kind ``down``) or decoder ``up_i`` (kind ``up``) entry."""
    path = f"{parent_path}.{key}"
    section = _section(_take(parent, key, parent_path, kind), _keys(kind), path)
    return _build(
        cls,
        path,
        op=_take(section, f"{kind}_op", path, kind),
        factor=_take(section, "factor", path, kind),
        residual=_take(section, "residual", path, kind),
    )


def _steps(section: Mapping, key: str, path: str, kind: str) -> int:
    steps = _take(section, key, path, kind)
    if not _is_int(steps) or not 0 <= steps <= 4:
        raise ConfigError(f"{path}.{key}: must be 0 to 4, got {steps!r}")
    return steps


def _backbone(data: Any) -> BackboneConfig:
    bb = _section(data, _keys("backbone"), "backbone")
    model_type = _take(bb, "model_type", "backbone", "backbone")
    pipe = _take(bb, "diff_pipe_name", "backbone", "backbone")
    # The schema never states the image normalisation: mean/std stay unstated (None) and
    # featlift.backbones.image_normalisation resolves them (timm's pretrained config).
    if pipe:
        name, source = pipe, "diffusers"
    elif model_type:
        name, source = model_type, "timm"
    else:
        name = source = None
    backbone = _build(
        BackboneConfig,
        "backbone",
        channels=_take(bb, "channel", "backbone", "backbone"),
        patch=_take(bb, "patch", "backbone", "backbone"),
        name=name,
        source=source,
    )
    stride = _take(bb, "stride", "backbone", "backbone")
    if stride is not None and stride != backbone.patch:
        raise ConfigError(
            f"backbone.stride: got {stride!r} with patch {backbone.patch}; featlift supports backbones whose token "
            f"stride equals the patch (as in every published config), one feature cell per {backbone.patch}x"
            f"{backbone.patch} pixels: set stride to {backbone.patch} or remove it"
        )
    return backbone


def _staged(section: Any, name: str, op: str) -> int:
    """Check the encoder or decoder section (``block_0 .. block_n`` and ``{op}_1 .. {op}_n`` entries for
    ``n = {op}_steps``, plus the section's own keys) and return ``n``."""
    path = f"uplift.{name}"
    if not isinstance(section, Mapping):
        raise ConfigError(f"{path}: expected a mapping, got {section!r}")
    steps = _steps(section, f"{op}_steps", path, name)
    allowed = _keys(name) | {f"block_{i}" for i in range(steps + 1)} | {f"{op}_{i}" for i in range(1, steps + 1)}
    _section(section, allowed, path)
    return steps


def _encoder(enc: Any) -> EncoderConfig:
    path = "uplift.encoder"
    down_steps = _staged(enc, "encoder", "down")
    stages = []
    for i in range(down_steps + 1):
        blocks = _group(_take(enc, f"block_{i}", path, "encoder"), f"{path}.block_{i}")
        down = _resampler(DownConfig, "down", enc, f"down_{i}", path) if i else DownConfig()
        stages.append(EncoderStageConfig(blocks=blocks, down=down))
    return _build(EncoderConfig, path, stages=tuple(stages))


def _decoder(dec: Any) -> DecoderConfig:
    path = "uplift.decoder"
    up_steps = _staged(dec, "decoder", "up")
    residual_outc = _take(dec, "residual_outc", path, "decoder")
    if residual_outc is not None:
        raise ConfigError(
            f"{path}.residual_outc: got {residual_outc!r}; featlift does not implement the decoder's output "
            "residual, so a model trained with it cannot be reproduced: remove the key or set it to null"
        )
    stages = []
    for i in range(1, up_steps + 1):
        up = _resampler(UpConfig, "up", dec, f"up_{i}", path)
        blocks = _group(_take(dec, f"block_{i}", path, "decoder"), f"{path}.block_{i}")
        stages.append(DecoderStageConfig(up=up, blocks=blocks))
    return _build(
        DecoderConfig,
        path,
        input_blocks=_group(_take(dec, "block_0", path, "decoder"), f"{path}.block_0"),
        stages=tuple(stages),
        noise_channels=_take(dec, "ncat_c", path, "decoder"),
        noise_scale=_take(dec, "ncat_s", path, "decoder"),
        guidance_resample=_take(dec, "enc_resample", path, "decoder"),
    )


def _refiner(ref: Any) -> RefinerConfig | None:
    if ref is None:
        return None
    path = "uplift.refiner"
    ref = _section(ref, _keys("refiner"), path)
    return _build(
        RefinerConfig,
        path,
        blocks=_group(_take(ref, "block_0", path, "refiner"), f"{path}.block_0"),
        guidance_index=_take(ref, "ref_con", path, "refiner"),
        noise_channels=_take(ref, "ncat_c", path, "refiner"),
        noise_scale=_take(ref, "ncat_s", path, "refiner"),
        guidance_resample=_take(ref, "enc_resample", path, "refiner"),
    )


def _check_no_uep(up: Mapping, backbone: BackboneConfig) -> None:
    """``no_UEP: true``: the guidance encoder sees the image without the backbone's normalisation.

    featlift feeds the guidance encoder the same normalised image as the backbone; the two agree only when
    that normalisation is the identity, as for a diffusers VAE backbone (images in [0, 1]).
    """
    no_uep = _take(up, "no_UEP", "uplift", "uplift")
    if not isinstance(no_uep, bool):
        raise ConfigError(f"uplift.no_UEP: must be true or false, got {no_uep!r}")
    if no_uep and backbone.source != "diffusers":
        raise ConfigError(
            "uplift.no_UEP: got true (the guidance encoder sees the image without the backbone's normalisation), "
            "which featlift supports only for a diffusers backbone (backbone.diff_pipe_name set), whose "
            "normalisation is the identity; featlift feeds the guidance encoder the backbone's normalised image, "
            "so a model trained with no_UEP: true on this backbone cannot be reproduced. Set no_UEP to false (or "
            "remove it) for a model trained that way"
        )


def from_authors_dict(data: Any) -> UpliftConfig:
    """Convert a parsed authors'-schema document (``backbone`` and ``uplift`` sections) to a config.

    Raises:
        ConfigError: a key is missing, unknown, or holds a value featlift cannot use (see the module
            docstring); the message names the key.
    """
    if not isinstance(data, Mapping) or "uplift" not in data or "backbone" not in data:
        raise ConfigError("expected the UPLiFT authors' schema with top-level 'backbone' and 'uplift' sections")
    other = sorted(set(data) - {"backbone", "uplift", "description", *_TOP_LEVEL_IGNORED})
    if other:
        logger.warning("ignoring top-level key(s) %s of an authors' config (not part of the architecture)", other)
    backbone = _backbone(data["backbone"])

    up = _section(data["uplift"], _keys("uplift"), "uplift")
    attender = _take(up, "attender", "uplift", "uplift")
    if attender == -1:
        raise ConfigError("uplift.attender: -1 (no Local Attender) is not supported; featlift models always use one")
    _check_no_uep(up, backbone)
    return _build(
        UpliftConfig,
        "uplift",
        backbone=backbone,
        encoder=_encoder(_take(up, "encoder", "uplift", "uplift")),
        decoder=_decoder(_take(up, "decoder", "uplift", "uplift")),
        attender=attender,
        refiner=_refiner(_take(up, "refiner", "uplift", "uplift")),
        up_factor=_take(up, "up_factor", "uplift", "uplift"),
        share_encoder=_take(up, "enc_share", "uplift", "uplift"),
        description=str(data.get("description") or ""),
    )


# --------------------------------------------------------------------------------------------------
# Their checkpoint key layout
# --------------------------------------------------------------------------------------------------

# Index of each layer inside the authors' nn.Sequential blocks (ReLUs hold the gaps).
_SEQUENTIAL_NAMES = {
    ("SingleConv", True): {0: "conv1", 1: "norm1", 3: "proj"},
    ("SingleConv", False): {0: "conv1", 1: "norm1"},
    ("DoubleConv", True): {0: "conv1", 1: "norm1", 3: "conv2", 4: "norm2", 6: "proj"},
    ("DoubleConv", False): {0: "conv1", 1: "norm1", 3: "conv2", 4: "norm2"},
}
_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.conv\.(\d+)\.(.+)")
_AUTHORS_PREFIXES = ("encoder.", "decoder.", "ref_outc.", "attender.conv1.")


def is_authors_layout(state_dict: Mapping[str, Tensor]) -> bool:
    """True for state dicts in the authors' key layout (the published checkpoints)."""
    return any(k.startswith(_AUTHORS_PREFIXES) for k in state_dict)


def convert_state_dict(state_dict: Mapping[str, Tensor], config: UpliftConfig) -> dict[str, Tensor]:
    """Rename the UPLiFT authors' keys to featlift's module names.

    Keys that match no rule are kept unchanged (so a strict load reports them). ``num_batches_tracked``
    (float32 in the published files) becomes int64.
    """
    import torch

    groups: dict[str, tuple[str, BlockGroupConfig]] = {}
    renames: dict[str, str] = {"attender.conv1.": "attender.to_logits.", "ref_outc.": "refiner.out_proj."}
    for i, stage in enumerate(config.encoder.stages):
        groups[f"encoder.block_{i}."] = (f"guidance_encoder.stages.{i}.blocks.", stage.blocks)
        renames[f"encoder.down_{i}.down."] = f"guidance_encoder.stages.{i}.down.op."
    groups["decoder.block_0."] = ("decoder_step.input_blocks.", config.decoder.input_blocks)
    for i, stage in enumerate(config.decoder.stages, start=1):
        groups[f"decoder.block_{i}."] = (f"decoder_step.stages.{i - 1}.blocks.", stage.blocks)
        renames[f"decoder.up_{i}.up."] = f"decoder_step.stages.{i - 1}.up.up."
    if config.refiner is not None:
        groups["refiner."] = ("refiner.blocks.", config.refiner.blocks)

    converted: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        new_key = key
        for old, new in renames.items():
            if key.startswith(old):
                new_key = new + key[len(old) :]
                break
        else:
            for old, (new, group) in groups.items():
                match = _BLOCK_KEY.fullmatch(key[len(old) :]) if key.startswith(old) else None
                if match:
                    index, layer, param = match.groups()
                    name = _SEQUENTIAL_NAMES.get((group.block, group.one_by), {}).get(int(layer))
                    if name is not None:
                        new_key = f"{new}{index}.{name}.{param}"
                    break
        if new_key.endswith("num_batches_tracked"):
            value = value.to(torch.long)
        converted[new_key] = value
    return converted
