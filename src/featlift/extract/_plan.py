"""What an extraction reads and writes: jobs (an input image and its output paths), the images decoded in
DataLoader workers, and same-size batches."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .._images import list_image_files, read_image, resize_to_patch_multiple

__all__ = [
    "FEATURES_SUFFIX",
    "PCA_SUFFIX",
    "PER_IMAGE_ERRORS",
    "Images",
    "Job",
    "batches",
    "collate",
    "image_size",
    "is_per_image",
    "plan_jobs",
]

FEATURES_SUFFIX = ".safetensors"
PCA_SUFFIX = ".pca.png"


def _decompression_bomb() -> type[Exception]:
    from PIL import Image

    return Image.DecompressionBombError


# Errors that concern one input (unreadable file, bad pixels, a picture too big to decode or to fit in
# memory): report it, go on.
PER_IMAGE_ERRORS = (OSError, ValueError, TypeError, MemoryError, torch.OutOfMemoryError, _decompression_bomb())


def is_per_image(err: BaseException) -> bool:
    """An error that concerns the image at hand, not the run: the errors above, and the CPU allocator's
    RuntimeError when a batch does not fit."""
    if isinstance(err, PER_IMAGE_ERRORS):
        return True
    return isinstance(err, RuntimeError) and ("can't allocate memory" in str(err) or "out of memory" in str(err))


class Job:
    """One input image and where its outputs go."""

    def __init__(self, source: Path, stem: Path) -> None:
        self.source = source
        self.features = stem.with_name(stem.name + FEATURES_SUFFIX)
        self.pca = stem.with_name(stem.name + PCA_SUFFIX)

    def done(self, pca: bool) -> bool:
        return self.features.is_file() and (not pca or self.pca.is_file())


def plan_jobs(inputs: list[str | os.PathLike], out_dir: str | os.PathLike) -> list[Job]:
    """Input images and their output paths (see :mod:`featlift.extract`), in a deterministic order.

    The input's extension stays in the output name, so ``x.png`` and ``x.jpg`` never share an output.
    Files inside ``out_dir`` are never inputs. Two inputs that would still share an output are refused.
    """
    out_dir = Path(out_dir)
    out_resolved = out_dir.resolve()
    jobs: dict[Path, Job] = {}
    seen: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = list_image_files(path)
            pairs = [(p, p.relative_to(path)) for p in found if not p.resolve().is_relative_to(out_resolved)]
        elif path.exists():
            pairs = [(path, Path(path.name))]
        else:
            raise FileNotFoundError(f"input {str(item)!r} does not exist; pass image files or folders")
        for source, relative in pairs:
            resolved = source.resolve()
            if resolved in seen:  # the same file named twice (a folder and a file in it)
                continue
            seen.add(resolved)
            job = Job(source, out_dir / relative)
            if job.features in jobs:
                raise ValueError(
                    f"{jobs[job.features].source} and {source} would both be written to {job.features}; "
                    "upsample them in separate runs with different --out folders"
                )
            jobs[job.features] = job
    return list(jobs.values())


def image_size(path: Path) -> tuple[int, int] | None:
    """(H, W) from the file header, or None when the header cannot be read (the loader reports it)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.height, im.width
    except PER_IMAGE_ERRORS:
        return None


def batches(jobs: list[Job], sizes: list[tuple[int, int] | None], batch_size: int) -> list[list[int]]:
    """Indices of ``jobs`` in batches of at most ``batch_size`` images of one size, in first-seen order;
    an image whose size is unknown goes alone."""
    groups: dict[Any, list[int]] = {}
    for i, size in enumerate(sizes):
        groups.setdefault(size if size is not None else ("unknown", i), []).append(i)
    return [members[j : j + batch_size] for members in groups.values() for j in range(0, len(members), batch_size)]


class Images(torch.utils.data.Dataset):
    """Decoded images, resized to the backbone's patch multiple in the worker; errors travel as text."""

    def __init__(self, jobs: list[Job], patch: int) -> None:
        self.jobs, self.patch = jobs, patch

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> dict:
        try:
            pixels = read_image(self.jobs[i].source)
            size = tuple(pixels.shape[-2:])
            return {"index": i, "pixels": resize_to_patch_multiple(pixels[None], self.patch)[0], "size": size}
        except PER_IMAGE_ERRORS as err:
            return {"index": i, "error": f"{type(err).__name__}: {err}"}


def collate(items: list[dict]) -> list[dict]:
    """The DataLoader's batch: the items as they are (a batch is stacked after the failed ones leave)."""
    return items
