"""The one place where a model reference becomes an architecture and a weights location.

:func:`resolve_model` accepts, tried in this order:

1. an :class:`~featlift.config.UpliftConfig` object;
2. a registered name (:func:`featlift.list_upsamplers`), whose published weights live on the Hub;
3. a local directory holding featlift's ``config.json`` (and usually ``model.safetensors``);
4. a file: an authors'-schema YAML (``.yaml``/``.yml``) or a featlift ``config.json`` (``.json``);
5. a Hugging Face Hub repo id (``org/name``) holding featlift's ``config.json`` + ``model.safetensors``:
   only ``config.json`` is downloaded here, the weights when :meth:`HubFile.fetch` is called.

Anything else raises one :class:`~featlift.errors.UnknownModelError` that lists what was tried and how
to fix it. :func:`featlift.build_upsampler`, :func:`featlift.load_upsampler` and training's ``base`` (and
a registered ``backbone``) all go through this function.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from . import hub
from ._authors import read_yaml
from ._registry import get_variant, list_upsamplers
from .config import UpliftConfig
from .errors import UnknownModelError
from .weights import CONFIG_NAME, WEIGHTS_NAME, read_config_json, read_pretrained_dir

__all__ = ["CONFIG_SUFFIXES", "HubFile", "ModelLike", "ModelSource", "resolve_model"]

logger = logging.getLogger(__name__)

ModelLike = str | os.PathLike | UpliftConfig

YAML_SUFFIXES = (".yaml", ".yml")
JSON_SUFFIXES = (".json",)
CONFIG_SUFFIXES = YAML_SUFFIXES + JSON_SUFFIXES

Kind = Literal["config", "registered", "directory", "yaml", "json", "hub"]


@dataclass(frozen=True)
class HubFile:
    """A file on the Hugging Face Hub, fetched (or found in the cache) on :meth:`fetch`."""

    repo_id: str
    filename: str
    revision: str | None = None
    cache_dir: str | os.PathLike | None = None

    def fetch(self) -> Path:
        """The file's local path (downloading it when the cache lacks it).

        Raises:
            DownloadError: neither downloadable nor (intact) in the cache; the message names the fixes.
        """
        return hub.download(self.repo_id, self.filename, revision=self.revision, cache_dir=self.cache_dir)

    def __str__(self) -> str:
        where = f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id
        return f"{self.filename} in the Hugging Face Hub repo {where}"


@dataclass(frozen=True)
class ModelSource:
    """What a model reference resolved to.

    Attributes:
        config: the architecture.
        kind: ``"config"`` (an UpliftConfig object), ``"registered"``, ``"directory"``, ``"yaml"``,
            ``"json"`` or ``"hub"``.
        description: the source in words, for messages and logs (``"registered upsampler 'dinov2_s14'"``).
        weights: where this source's weights are: a registered variant's published file or a Hub repo's
            ``model.safetensors`` (:class:`HubFile`, not yet downloaded), a directory's
            ``model.safetensors`` (a local path), or None (a config file or object, or a directory
            without weights).
        directory: the local model directory (kind ``"directory"``), else None.
    """

    config: UpliftConfig
    kind: Kind
    description: str
    weights: Path | HubFile | None = None
    directory: Path | None = None

    @property
    def bundles_weights(self) -> bool:
        """True when the weights travel with the config (a model directory or a Hub repo in featlift's
        format): :func:`featlift.build_upsampler` then loads them by default. A registered variant's
        published file is fetched only by :func:`featlift.load_upsampler`."""
        return self.kind in ("directory", "hub")

    def weights_file(self) -> Path | None:
        """The weights as a local file: downloads a :class:`HubFile`; None when the source has none."""
        if isinstance(self.weights, HubFile):
            return self.weights.fetch()
        return self.weights


def _looks_like_path(text: str) -> bool:
    """A string meant as a local path rather than a Hub repo id: it starts like a path, or names a file by
    one of the config or weights suffixes."""
    return text.startswith((".", "~", "/", os.sep)) or Path(text).suffix.lower() in (*CONFIG_SUFFIXES, ".safetensors")


def resolve_model(
    model: ModelLike, *, revision: str | None = None, cache_dir: str | os.PathLike | None = None
) -> ModelSource:
    """Resolve ``model`` (see the module docstring for the accepted kinds, in the order tried).

    Args:
        model: an :class:`UpliftConfig`, a registered name, a model directory, a YAML or JSON config file,
            or a Hub repo id.
        revision: Hub branch, tag or commit for the files of a registered variant or a repo id.
        cache_dir: Hugging Face cache directory (default: the standard cache).

    Raises:
        TypeError: ``model`` is not a string, a path or an UpliftConfig.
        UnknownModelError: nothing matches; the message lists what was tried and the fixes.
        CheckpointError: a directory without ``config.json``.
        ConfigError: an invalid config file (the message names it).
        DownloadError: a repo id whose ``config.json`` can be neither downloaded nor found in the cache.
    """
    if isinstance(model, UpliftConfig):
        return ModelSource(model, "config", "an UpliftConfig object")
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(
            f"config must be a name, a path or an UpliftConfig (model reference), got {type(model).__name__}"
        )
    text = os.fspath(model)
    if text in list_upsamplers():
        variant = get_variant(text)
        published = HubFile(variant.hub_repo, variant.hub_filename, revision, cache_dir)
        return ModelSource(variant.config, "registered", f"registered upsampler {text!r}", weights=published)
    path = Path(text).expanduser()
    if path.is_dir():
        config, weights = read_pretrained_dir(path)
        return ModelSource(config, "directory", f"model directory {path}", weights=weights, directory=path)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in YAML_SUFFIXES:
            return ModelSource(read_yaml(path), "yaml", f"authors' YAML file {path}")
        if suffix in JSON_SUFFIXES:
            return ModelSource(read_config_json(path), "json", f"featlift config file {path}")
        raise UnknownModelError(
            f"{path} is not a config file: expected .yaml/.yml (the authors' schema) or .json (featlift's "
            f"{CONFIG_NAME}). Fix: pass a config file, a model directory, a registered name "
            f"({', '.join(list_upsamplers())}) or a Hub repo id"
        )
    if not _looks_like_path(text) and hub.is_repo_id(text):
        config_file = hub.download(text, CONFIG_NAME, revision=revision, cache_dir=cache_dir)
        where = f"{text}@{revision}" if revision else text
        return ModelSource(
            read_config_json(config_file),
            "hub",
            f"Hugging Face Hub repo {where!r}",
            weights=HubFile(text, WEIGHTS_NAME, revision, cache_dir),
        )
    repo_check = (
        "it looks like a file path, so it was not tried as a repo id"
        if _looks_like_path(text)
        else "it is not of the form org/name"
    )
    raise UnknownModelError(
        f"unknown upsampler {text!r}. Tried: registered names: {', '.join(list_upsamplers())} (no match); "
        f"a local file or directory at {path.absolute()} (does not exist); a Hugging Face Hub repo id ({repo_check}). "
        "Fix: pass one of the registered names, the path of an existing model directory (config.json + "
        "model.safetensors) or config file (.yaml authors' schema, .json featlift), or a Hub repo id "
        "such as 'org/name'"
    )
