"""Every Hugging Face Hub access featlift makes.

Downloads go through ``huggingface_hub`` with ``library_name``/``library_version`` set, so the standard
cache (``HF_HOME`` / ``HF_HUB_CACHE``) and ``HF_HUB_OFFLINE=1`` are honoured; there is no home-made
offline mode. Only safetensors weights (and small JSON configs) are fetched from the network. When a file
can be neither downloaded nor found in the cache, :class:`~featlift.errors.DownloadError` names the repo,
the file and the fixes; a cache entry left broken by an interrupted download (a snapshot link whose blob
is missing) is reported as such, with the paths to delete.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from ._version import __version__
from .errors import DownloadError, UploadError

__all__ = ["download", "download_diffusers_vae", "is_repo_id", "push_pretrained_dir"]

logger = logging.getLogger(__name__)


def is_repo_id(name: str) -> bool:
    """True for strings shaped like a Hub repo id (``org/name``) that are not local paths."""
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not os.path.exists(name) and not name.startswith((".", "~"))


def _fix_hint(local_arg: str) -> str:
    return (
        "Fixes: run once with network access to fill the Hugging Face cache (HF_HOME / HF_HUB_CACHE), "
        "then set HF_HUB_OFFLINE=1 to use only the cache; or pass a local file with "
        f"{local_arg}=PATH on air-gapped machines."
    )


def _broken_cache_entry(
    repo_id: str, filename: str, revision: str | None, cache_dir: str | os.PathLike | None
) -> tuple[Path, Path, Path] | None:
    """``(snapshot link, missing blob, repo cache folder)`` when the cache holds ``filename`` as a link to
    a blob that is gone (an interrupted or half-deleted download), else None."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    folder = Path(cache_dir if cache_dir is not None else constants.HF_HUB_CACHE)
    folder = folder / repo_folder_name(repo_id=repo_id, repo_type="model")
    revision = revision or "main"
    commit = revision
    if not re.fullmatch(r"[0-9a-f]{40}", revision):
        try:
            commit = (folder / "refs" / revision).read_text().strip()
        except (OSError, UnicodeDecodeError):
            return None
    link = folder / "snapshots" / commit / filename
    if link.is_symlink() and not link.exists():
        return link, Path(os.path.normpath(link.parent / os.readlink(link))), folder
    return None


def download(
    repo_id: str,
    filename: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_arg: str = "weights",
) -> Path:
    """Path of ``filename`` from ``repo_id`` in the local cache, downloading it when needed.

    ``revision`` pins a branch, tag or commit. ``local_arg`` names the keyword argument that takes a
    local file instead, for the error message.
    """
    if not (filename.endswith(".safetensors") or filename.endswith(".json")):
        raise ValueError(f"featlift only downloads safetensors weights and JSON configs, not {filename!r}")
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(
            repo_id,
            filename,
            revision=revision,
            cache_dir=cache_dir,
            library_name="featlift",
            library_version=__version__,
        )
    except Exception as err:  # network, offline mode, missing repo or file: all end the same way
        where = f"{repo_id}@{revision}" if revision else repo_id
        try:
            broken = _broken_cache_entry(repo_id, filename, revision, cache_dir)
        except Exception:  # the diagnosis is a courtesy: never let it hide the real error
            broken = None
        if broken is not None:
            link, blob, folder = broken
            raise DownloadError(
                f"the Hugging Face cache entry for {filename!r} of the repo {where!r} is broken: {link} points to "
                f"{blob}, which does not exist (an interrupted or half-deleted download). Fix: "
                f"delete {link} (or the whole folder {folder}) and download it again with network access "
                f"(HF_HUB_OFFLINE unset); or pass {local_arg}=PATH."
            ) from err
        raise DownloadError(
            f"could not get {filename!r} from the Hugging Face Hub repo {where!r} "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no details'}). {_fix_hint(local_arg)}"
        ) from err
    logger.debug("using %s from %s (%s)", filename, repo_id, path)
    return Path(path)


def download_diffusers_vae(
    repo_id: str, *, subfolder: str = "vae", revision: str | None = None, cache_dir: str | os.PathLike | None = None
) -> Path:
    """Fetch a diffusers VAE (its ``config.json`` and safetensors weights) and return its folder."""
    config = download(
        repo_id, f"{subfolder}/config.json", revision=revision, cache_dir=cache_dir, local_arg="backbone_weights"
    )
    download(
        repo_id,
        f"{subfolder}/diffusion_pytorch_model.safetensors",
        revision=revision,
        cache_dir=cache_dir,
        local_arg="backbone_weights",
    )
    return config.parent


def push_pretrained_dir(
    directory: str | os.PathLike,
    repo_id: str,
    *,
    card: str,
    private: bool = False,
    token: str | None = None,
) -> str:
    """Publish a trained model directory (``config.json``, ``model.safetensors``) with a model card.

    Creates the repository if needed and uploads the two files plus ``README.md`` in one commit; returns
    the commit URL. ``load_upsampler(repo_id)`` then downloads exactly these files.

    Raises:
        FileNotFoundError: ``directory`` lacks ``config.json`` or ``model.safetensors``.
        UploadError: the Hub refused or could not be reached (the message names the repo and the fix).
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    from .weights import CONFIG_NAME, WEIGHTS_NAME

    directory = Path(directory)
    missing = [name for name in (CONFIG_NAME, WEIGHTS_NAME) if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory} lacks {', '.join(missing)}; train or save_pretrained first")
    api = HfApi(token=token, library_name="featlift", library_version=__version__)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        operations = [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(directory / name))
            for name in (CONFIG_NAME, WEIGHTS_NAME)
        ]
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode()))
        info = api.create_commit(repo_id, operations, commit_message="Upload UPLiFT upsampler trained with featlift")
    except Exception as err:  # network, auth or permission problems from huggingface_hub
        raise UploadError(
            f"could not publish {directory} to the Hugging Face Hub repo {repo_id!r} "
            f"({type(err).__name__}: {err}). Fix: log in with `huggingface-cli login` (or pass a token) with "
            f"write access to {repo_id!r} and check the network; the files stay in {directory}, so only the "
            "upload needs repeating (featlift.hub.push_pretrained_dir)."
        ) from err
    return str(getattr(info, "commit_url", info))
