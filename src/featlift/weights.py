"""Reading and writing upsampler weights.

Every checkpoint read goes through this module:

* :func:`read_state_dict` reads ``.safetensors`` files, or ``.pth`` / ``.pt`` files with
  ``torch.load(weights_only=True)``, and turns unreadable files into a :class:`CheckpointError`.
* :func:`convert_reference_state_dict` is the filter that renames the UPLiFT authors' key layout (the
  published checkpoints) to featlift's module names.
* :func:`load_into` loads strictly: every tensor must be used and none may be missing.
* :func:`save_pretrained` / :func:`read_pretrained_dir` handle featlift's own format, a directory with
  ``config.json`` and ``model.safetensors``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from .config import BlockGroupConfig, UpliftConfig
from .errors import CheckpointError, ConfigError

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "convert_reference_state_dict",
    "load_into",
    "read_pretrained_dir",
    "read_state_dict",
    "save_pretrained",
]

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

_TORCH_SUFFIXES = (".pth", ".pt", ".bin")
_WRAPPER_KEYS = ("state_dict", "model", "uplift", "weights")


# --------------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------------


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or ``.pth``/``.pt`` (``weights_only=True``) onto the CPU.

    Common wrappers (``{"state_dict": ...}``, ``{"model": ...}``) and a DDP ``module.`` prefix are removed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises several error types for damaged files
            raise CheckpointError(
                f"cannot read {path} as safetensors ({type(err).__name__}: {err}); the file is corrupt or "
                "truncated: download or copy it again"
            ) from None
    elif suffix in _TORCH_SUFFIXES:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:  # pickle, zip and weights_only errors all mean the same to the user
            raise CheckpointError(
                f"cannot read {path} with torch.load(weights_only=True) ({type(err).__name__}: {err}); the file "
                "is corrupt, truncated, or holds more than tensors: re-save it as a plain state dict"
            ) from None
    else:
        raise CheckpointError(f"unsupported weights file {path}: expected .safetensors, .pth or .pt")
    return _unwrap(state, path)


def _unwrap(state: object, path: Path) -> dict[str, Tensor]:
    if isinstance(state, Mapping):
        for key in _WRAPPER_KEYS:
            inner = state.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, Tensor) for v in inner.values()):
                state = inner
                break
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path} holds non-tensor entries {bad[:10]}; expected a flat state dict")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


# --------------------------------------------------------------------------------------------------
# The authors' key layout
# --------------------------------------------------------------------------------------------------

# Index of each layer inside the authors' nn.Sequential blocks (ReLUs hold the gaps).
_SEQUENTIAL_NAMES = {
    ("SingleConv", True): {0: "conv1", 1: "norm1", 3: "proj"},
    ("SingleConv", False): {0: "conv1", 1: "norm1"},
    ("DoubleConv", True): {0: "conv1", 1: "norm1", 3: "conv2", 4: "norm2", 6: "proj"},
    ("DoubleConv", False): {0: "conv1", 1: "norm1", 3: "conv2", 4: "norm2"},
}
_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.conv\.(\d+)\.(.+)")


def is_reference_layout(state_dict: Mapping[str, Tensor]) -> bool:
    """True for state dicts in the authors' layout (the published checkpoints)."""
    return any(k.startswith(("encoder.", "decoder.", "ref_outc.", "attender.conv1.")) for k in state_dict)


def convert_reference_state_dict(state_dict: Mapping[str, Tensor], config: UpliftConfig) -> dict[str, Tensor]:
    """Rename the UPLiFT authors' keys to featlift's. Keys that match no rule are kept unchanged
    (so a strict load reports them). ``num_batches_tracked`` becomes int64."""
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


# --------------------------------------------------------------------------------------------------
# Strict loading
# --------------------------------------------------------------------------------------------------


def _describe(keys: list[str], shapes: Mapping[str, Tensor], limit: int = 20) -> str:
    lines = [f"    {k} {tuple(shapes[k].shape)}" for k in keys[:limit]]
    if len(keys) > limit:
        lines.append(f"    ... and {len(keys) - limit} more")
    return "\n".join(lines)


def load_into(model: nn.Module, state_dict: Mapping[str, Tensor], *, source: str = "checkpoint") -> None:
    """Load ``state_dict`` (featlift or authors' layout) into ``model``, strictly.

    ``num_batches_tracked`` entries may be absent. Anything else that is missing, unexpected or of the
    wrong shape raises :class:`CheckpointError` listing the offending keys and shapes.
    """
    config = getattr(model, "config", None)
    if isinstance(config, UpliftConfig) and is_reference_layout(state_dict):
        state = convert_reference_state_dict(state_dict, config)
    else:
        state = {k: (v.to(torch.long) if k.endswith("num_batches_tracked") else v) for k, v in state_dict.items()}
    expected = model.state_dict()
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        parts = [f"{source} does not match the model's config:"]
        if missing:
            parts.append(
                f"  {len(missing)} missing tensor(s) (model key, expected shape):\n{_describe(missing, expected)}"
            )
        if unexpected:
            parts.append(
                f"  {len(unexpected)} unexpected tensor(s) (checkpoint key, shape):\n{_describe(unexpected, state)}"
            )
        if wrong:
            rows = [
                f"    {k}: checkpoint {tuple(state[k].shape)}, model {tuple(expected[k].shape)}" for k in wrong[:20]
            ]
            parts.append(f"  {len(wrong)} shape mismatch(es):\n" + "\n".join(rows))
        parts.append("  Use the config the weights were trained with (a registered name, its YAML or config.json).")
        raise CheckpointError("\n".join(parts))
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{source} holds non-finite values (NaN or inf) in {bad[:10]}; the file is damaged")
    model.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------------------------------
# featlift's own format
# --------------------------------------------------------------------------------------------------


def save_pretrained(model: nn.Module, directory: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (featlift key layout) into ``directory``."""
    from safetensors.torch import save_file

    from . import __version__

    config = getattr(model, "config", None)
    if not isinstance(config, UpliftConfig):
        raise TypeError("save_pretrained needs an UPLiFT model (with an UpliftConfig in .config)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config.to_json(directory / CONFIG_NAME)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(
        tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt", "library": "featlift", "version": __version__}
    )
    logger.info("saved %s and %s to %s", CONFIG_NAME, WEIGHTS_NAME, directory)
    return directory


def read_pretrained_dir(directory: str | Path) -> tuple[UpliftConfig, Path | None]:
    """The config in ``directory/config.json`` and the path of ``model.safetensors`` (None if absent)."""
    directory = Path(directory)
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(
            f"{directory} has no {CONFIG_NAME}; a featlift model directory holds {CONFIG_NAME} and {WEIGHTS_NAME}"
        )
    try:
        config = UpliftConfig.from_json(config_path)
    except ConfigError as err:
        raise ConfigError(f"{config_path}: {err}") from None
    weights = directory / WEIGHTS_NAME
    return config, (weights if weights.is_file() else None)
