"""torch.hub entries as backbones (RADIO is the one users ask for), called through one documented adapter.

The name is ``REPO:ENTRY`` or ``REPO:ENTRY,KEY=VALUE,...``: ``REPO`` a local torch.hub checkout (a folder
with ``hubconf.py``) or ``OWNER/NAME[:REF]`` on GitHub, ``ENTRY`` the hubconf function, the keywords
passed to it (values read as JSON where they parse: numbers, ``true``, ``null``; text otherwise). For
example ``NVlabs/RADIO:radio_model,version=radio_v2.5-b``.

The adapter contract, what featlift expects of the module the entry returns:

1. **Input**: ``module(images)`` with ``images`` float [B, 3, H, W], H and W multiples of the stride, with
   RGB values in [0, 1] (the model normalises them itself, as RADIO does; a config that states
   ``backbone.mean``/``std`` normalises them first).
2. **Stride**: ``module.patch_size`` (an int or a pair), as RADIO states it.
3. **Output**, any of: features [B, C, H/s, W/s]; tokens [B, N, C] with N = (H/s)(W/s) patch tokens in
   row-major order after N - (H/s)(W/s) leading prefix tokens (dropped); a tuple or list whose last item
   is one of these (RADIO's ``(summary, spatial_features)``); an object with a ``features`` attribute.
4. **Channels** are read from one call on a small image.

GitHub repositories run their code only once trusted: ``trust_repo=True`` (``--trust-repo``), or
torch.hub asks. Offline, use a local checkout of the repository (and its weights in the caches its code
reads, e.g. the Hugging Face cache with ``HF_HUB_OFFLINE=1`` for RADIO).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import ConfigError, DownloadError, FeatliftError
from ._normalisation import IDENTITY, Stats
from .base import Backbone, BuildOptions, load_weights, tokens_to_grid

__all__ = ["HubBackbone", "parse_hub_name", "spatial_features"]

logger = logging.getLogger(__name__)


def parse_hub_name(name: str) -> tuple[str, str, dict]:
    """``"REPO:ENTRY[,KEY=VALUE,...]"`` -> ``(REPO, ENTRY, {KEY: VALUE})`` (see the module docstring).

    Raises:
        ConfigError: the name is not of that form.
    """
    repo, sep, tail = name.rpartition(":")
    entry, *pairs = tail.split(",")
    if not sep or not repo or not entry.isidentifier():
        raise ConfigError(
            f"backbone.name: {name!r} is not a torch.hub backbone name; expected REPO:ENTRY or "
            "REPO:ENTRY,KEY=VALUE,..., e.g. NVlabs/RADIO:radio_model,version=radio_v2.5-b or ./my-repo:model"
        )
    kwargs = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.isidentifier():
            raise ConfigError(f"backbone.name: {pair!r} in {name!r} is not KEY=VALUE")
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    return repo, entry, kwargs


def spatial_features(out, size: tuple[int, int], *, what: str) -> Tensor:
    """A hub model's output (see the contract in the module docstring) -> features [B, C, h, w] for an
    image of ``size`` = (h, w) cells.

    Raises:
        ConfigError: the output is none of the accepted forms.
    """
    if isinstance(out, (tuple, list)) and out:
        out = out[-1]
    elif not isinstance(out, Tensor) and isinstance(getattr(out, "features", None), Tensor):
        out = out.features
    if isinstance(out, Tensor) and out.dim() == 3:
        return tokens_to_grid(out, size, what=what)
    if isinstance(out, Tensor) and out.dim() == 4:
        return out
    got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
    raise ConfigError(
        f"backbone.name: {what} returned {got}; the torch.hub adapter takes features [B, C, h, w], tokens "
        "[B, N, C], a tuple whose last item is one of those (RADIO's (summary, features)), or an object with "
        "a features attribute"
    )


def _load_entry(name: str, local: Path, repo: str, entry: str, kwargs: dict, trust_repo: bool):
    """``torch.hub.load`` of the entry, from the local checkout or GitHub, its failures in featlift's terms."""
    try:
        if local.is_dir():
            return torch.hub.load(str(local.resolve()), entry, source="local", **kwargs)
        trust = True if trust_repo else "check"  # "check": torch.hub asks before running an untrusted repo
        return torch.hub.load(repo, entry, source="github", trust_repo=trust, **kwargs)
    except FeatliftError:
        raise
    except (OSError, RuntimeError) as err:  # no network, no cached checkout, a failed download in the entry
        detail = " ".join(str(err).split())[:600] or "no details"
        raise DownloadError(
            f"torch.hub could not load {name!r} ({type(err).__name__}: {detail}). Fixes: clone the repository "
            "and name its folder (hub:/path/to/checkout:ENTRY), or run once with network access (the weights "
            "the entry downloads stay in their caches); a GitHub repository also needs --trust-repo or a yes to "
            "torch.hub's question"
        ) from None
    except Exception as err:  # the entry itself refused: a wrong keyword or value
        detail = " ".join(str(err).split())[:600] or "no details"
        raise ConfigError(
            f"backbone.name: the torch.hub entry {entry!r} of {repo!r} failed with the keywords {kwargs} "
            f"({type(err).__name__}: {detail}); check the KEY=VALUE pairs after the entry's name"
        ) from None


class HubBackbone(Backbone):
    """A torch.hub entry's model as a backbone, through the adapter contract in this module's docstring.

    Args:
        name: ``REPO:ENTRY[,KEY=VALUE,...]`` (a local checkout's folder or ``OWNER/NAME[:REF]``).
        weights: a local state dict for the module (safetensors, or ``weights_only``), loaded strictly
            after the entry built it; None keeps what the entry loaded.
        trust_repo: run a GitHub repository's code without asking (default: torch.hub asks, once).

    The entry decides its own weights (RADIO downloads them through the Hugging Face cache), so
    ``pretrained=False`` does not apply; pass the entry's own keyword in the name if it has one.
    :attr:`normalisation` is the identity (images in [0, 1]) unless the config states statistics.

    Raises:
        ConfigError: a malformed name, a module without ``patch_size``, or output of another form.
    """

    source = "hub"
    example = "hub:NVlabs/RADIO:radio_model,version=radio_v2.5-b"

    def __init__(self, name: str, weights: str | os.PathLike | None = None, *, trust_repo: bool = False) -> None:
        super().__init__()
        repo, entry, kwargs = parse_hub_name(name)
        local = Path(repo).expanduser()
        if local.is_dir():
            name = f"{local.resolve()}:{name.rpartition(':')[2]}"  # config.json records where it is
        elif not re.fullmatch(r"[\w.-]+/[\w.-]+(:[\w./-]+)?", repo):
            raise ConfigError(
                f"backbone.name: the torch.hub repository {repo!r} is neither a folder here ({local.absolute()} "
                "does not exist) nor OWNER/NAME[:REF] on GitHub"
            )
        module = _load_entry(name, local, repo, entry, kwargs, trust_repo)
        if not isinstance(module, nn.Module):
            raise ConfigError(
                f"backbone.name: torch.hub entry {name!r} returned a {type(module).__name__}, not a module"
            )
        if weights is not None:
            load_weights(module, weights, what=f"the torch.hub model {name!r}")
        patch = getattr(module, "patch_size", None)
        if isinstance(patch, (tuple, list)):
            patch = patch[0]
        if not isinstance(patch, int) or isinstance(patch, bool) or patch < 1:
            raise ConfigError(
                f"backbone.patch: the torch.hub model {name!r} states no stride; the adapter reads it from "
                f"module.patch_size (an int or a pair), got {patch!r}. Fix: set patch_size on the module the entry "
                "returns"
            )
        self.module = module
        self.name = name
        self.patch = patch
        self.normalisation = IDENTITY
        self.freeze()
        self.channels = self._measure_channels()

    def _measure_channels(self) -> int:
        size = self.probe_size()
        reference = next(self.module.parameters(), None)
        image = torch.full((1, 3, *size), 0.5, device=reference.device if reference is not None else "cpu")
        try:
            with torch.no_grad():
                out = self(image)
        except FeatliftError:
            raise
        except Exception as err:
            raise ConfigError(
                f"backbone.name: the torch.hub model {self.name!r} failed on a {size[0]}x{size[1]} image "
                f"({type(err).__name__}: {err})"
            ) from None
        return int(out.shape[1])

    def probe_size(self) -> tuple[int, int]:
        """2 x 3 cells, in steps of the module's ``min_resolution_step`` where it states one (RADIO)."""
        step = getattr(self.module, "min_resolution_step", None)
        step = step if isinstance(step, int) and step > self.patch and step % self.patch == 0 else self.patch
        return 2 * step, 3 * step

    @classmethod
    def build(cls, name: str, options: BuildOptions) -> HubBackbone:
        """The entry loads its own weights: ``pretrained`` is not passed on (see :meth:`Backbone.build`)."""
        if not options.pretrained:
            logger.info("pretrained=False: the torch.hub entry %r decides its own weights", name)
        return cls(name, options.weights, trust_repo=options.trust_repo)

    @classmethod
    def published_normalisation(cls, name: str) -> Stats:
        """The identity: by the adapter contract the model takes images in [0, 1]."""
        return IDENTITY

    def forward(self, image: Tensor) -> Tensor:
        size = (image.shape[-2] // self.patch, image.shape[-1] // self.patch)
        return spatial_features(self.module(image), size, what=f"the torch.hub model {self.name!r}")
