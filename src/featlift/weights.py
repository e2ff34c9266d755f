"""Reading and writing model weights: the upsampler's, and the timm backbone's.

What goes through this module:

* :func:`read_state_dict` reads the weight files of models: the UPLiFT upsampler's (featlift's
  ``model.safetensors`` or the authors' published files, via :func:`featlift._builder.build_upsampler`) and
  a backbone's (:class:`featlift.backbones.TimmBackbone` hands the state dict to timm; the open_clip and
  torch.hub backbones load it strictly with :func:`featlift.backbones.base.load_weights`). It reads
  ``.safetensors``, or ``.pth`` / ``.pt`` / ``.pth.tar`` with ``torch.load(weights_only=True)``, and
  turns unreadable files into a :class:`CheckpointError`: no file is unpickled with arbitrary globals.
* :func:`load_into` loads an upsampler's state dict strictly (every tensor used, none missing). A state
  dict in the UPLiFT authors' key layout is renamed first by :func:`featlift._authors.convert_state_dict`
  (that layout is described in :mod:`featlift._authors`, not here).
* :func:`save_pretrained` / :func:`read_pretrained_dir` handle featlift's own format, a directory with
  ``config.json`` and ``model.safetensors``; :func:`read_config_json` reads such a ``config.json`` (the
  parsing itself is :meth:`featlift.config.UpliftConfig.from_json`).

What does not go through it, and reads its own files:

* the diffusers VAE backbone is loaded by diffusers (``AutoencoderKL.from_pretrained`` on a folder, with
  safetensors only) in :mod:`featlift.backbones.sd_vae`, and transformers models by transformers
  (``AutoModel.from_pretrained``, safetensors only) in :mod:`featlift.backbones.hf_transformers`; an
  open_clip tag's published checkpoint is read by open_clip (safetensors, or ``weights_only``);
* training checkpoints (``checkpoint.pt``: weights, optimiser and RNG states, run settings) are written
  and read by :mod:`featlift.training._checkpoint` (``torch.load(weights_only=True)``);
* the backbone-feature cache of training and eval is written and read by :mod:`featlift._feature_cache`
  (safetensors ``save_file`` / ``load_file``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from ._atomic import atomic_write
from ._authors import convert_state_dict, is_authors_layout
from ._version import __version__
from .config import UpliftConfig
from .errors import CheckpointError

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "load_into",
    "read_config_json",
    "read_pretrained_dir",
    "read_state_dict",
    "save_pretrained",
]

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

_TORCH_SUFFIXES = (".pth", ".pt", ".bin")
_WRAPPER_KEYS = ("state_dict", "model", "uplift", "weights")
# timm's training checkpoints keep their EMA weights here; timm itself prefers them.
_EMA_KEYS = ("state_dict_ema", "model_ema")


# --------------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------------


def _cache_hint(path: Path) -> str:
    """Advice for a damaged file inside a Hugging Face cache snapshot (empty for other files)."""
    parts = path.parts
    if "snapshots" not in parts or not any(p.startswith(("models--", "datasets--")) for p in parts):
        return ""
    blob = f" and the blob it links to ({path.resolve()})" if path.is_symlink() else ""
    return (
        f" It is a Hugging Face cache entry: delete {path}{blob} and download it again (with network access, "
        "HF_HUB_OFFLINE unset)."
    )


def _torch_load(path: Path) -> object:
    # argparse.Namespace (the `args` entry of timm's training checkpoints) is a plain attribute bag; every
    # other global stays refused by weights_only=True.
    allow = getattr(torch.serialization, "safe_globals", None)
    with allow([argparse.Namespace]) if allow is not None else contextlib.nullcontext():
        return torch.load(str(path), map_location="cpu", weights_only=True)


def read_state_dict(path: str | Path, *, prefer_ema: bool = False) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or ``.pth``/``.pt``/``.pth.tar`` (``weights_only=True``)
    onto the CPU.

    Common wrappers (``{"state_dict": ...}``, ``{"model": ...}``) and a DDP ``module.`` prefix are removed;
    ``prefer_ema`` takes timm's EMA entries (``state_dict_ema``, ``model_ema``) first, as timm does.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        CheckpointError: the file is damaged, of an unsupported kind, would run code when unpickled, or
            holds no flat state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    name = path.name.lower()
    if name.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises several error types for damaged files
            raise CheckpointError(
                f"cannot read {path} as safetensors ({type(err).__name__}: {err}); the file is corrupt or "
                f"truncated: download or copy it again.{_cache_hint(path)}"
            ) from None
    elif name.endswith(_TORCH_SUFFIXES) or name.endswith(".pth.tar"):
        try:
            state = _torch_load(path)
        except Exception as err:  # pickle, zip and weights_only errors all mean the same to the user
            first = str(err).strip().splitlines()
            raise CheckpointError(
                f"cannot read {path} with torch.load(weights_only=True) ({type(err).__name__}: "
                f"{first[0] if first else 'no details'}); the file is corrupt, truncated, or holds more than "
                "tensors (featlift never unpickles arbitrary objects, which could run code): re-save it as a "
                f"plain state dict, or as .safetensors.{_cache_hint(path)}"
            ) from None
    else:
        raise CheckpointError(f"unsupported weights file {path}: expected .safetensors, .pth, .pt or .pth.tar")
    return _unwrap(state, path, prefer_ema=prefer_ema)


def _unwrap(state: object, path: Path, *, prefer_ema: bool = False) -> dict[str, Tensor]:
    if isinstance(state, Mapping):
        for key in (_EMA_KEYS if prefer_ema else ()) + _WRAPPER_KEYS:
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
    if isinstance(config, UpliftConfig) and is_authors_layout(state_dict):
        state = convert_state_dict(state_dict, config)
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
    """Write ``config.json`` and ``model.safetensors`` (featlift key layout) into ``directory``.

    Each file is written atomically (a temporary file renamed over the target), so an interrupted save
    leaves the previous file or none, never a truncated one. The weights go first: a directory without
    its ``config.json`` is reported as such instead of loading as something else.
    """
    from safetensors.torch import save_file

    config = getattr(model, "config", None)
    if not isinstance(config, UpliftConfig):
        raise TypeError("save_pretrained needs an UPLiFT model (with an UpliftConfig in .config)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": "pt", "library": "featlift", "version": __version__}
    with atomic_write(directory / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    with atomic_write(directory / CONFIG_NAME) as tmp:
        config.to_json(tmp)
    logger.info("saved %s and %s to %s", CONFIG_NAME, WEIGHTS_NAME, directory)
    return directory


def read_config_json(path: str | Path) -> UpliftConfig:
    """Read featlift's ``config.json`` file: :meth:`UpliftConfig.from_json` on a path, which does the
    parsing and names the file in every error.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ConfigError: the file is unreadable, not JSON, not a JSON object, lacks required keys, has unknown
            keys or invalid values.
    """
    return UpliftConfig.from_json(Path(path))


def read_pretrained_dir(directory: str | Path) -> tuple[UpliftConfig, Path | None]:
    """The config in ``directory/config.json`` and the path of ``model.safetensors`` (None if absent).

    Raises:
        CheckpointError: the directory has no ``config.json``.
        ConfigError: its ``config.json`` is invalid (the message names the file).
    """
    directory = Path(directory)
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(
            f"{directory} has no {CONFIG_NAME}; a featlift model directory holds {CONFIG_NAME} and {WEIGHTS_NAME}"
        )
    config = read_config_json(config_path)
    weights = directory / WEIGHTS_NAME
    return config, (weights if weights.is_file() else None)
