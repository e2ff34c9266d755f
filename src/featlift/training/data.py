"""Training images: a folder (recursive) or a file list, decoded, resized and centre-cropped.

Folders are listed by :func:`featlift._images.list_image_files`, files read by :func:`~featlift._images.read_image`
and resized and cropped by :func:`~featlift._images.resize_and_crop`, as everywhere else in featlift.

Unreadable files are skipped with one warning each: the next readable image takes their place, so every
batch keeps its size and every process sees the same sequence.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from PIL import UnidentifiedImageError
from torch.utils.data import Dataset

from .._images import IMAGE_EXTENSIONS, list_image_files, read_image, resize_and_crop
from ..errors import DataError

__all__ = ["ImageDataset", "list_images"]

logger = logging.getLogger(__name__)


def list_images(source: str | Path) -> list[Path]:
    """Image paths under a folder (recursive, sorted) or listed in a text file (one path per line,
    relative paths taken from the list's folder)."""
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"training data {path} does not exist; pass an image folder or a text file of paths")
    if path.is_dir():
        files = list_image_files(path)
        if not files:
            raise DataError(f"no images found under {path} (looked for {', '.join(IMAGE_EXTENSIONS)}, recursively)")
        return files
    lines = [line.strip() for line in path.read_text().splitlines()]
    files = [
        (p if p.is_absolute() else path.parent / p) for p in map(Path, lines) if str(p) and not str(p).startswith("#")
    ]
    if not files:
        raise DataError(f"the file list {path} names no images")
    return files


class ImageDataset(Dataset):
    """Square RGB crops of side ``size`` as float tensors [3, size, size] in [0, 1]."""

    def __init__(self, files: list[Path], size: int) -> None:
        if not files:
            raise DataError("no images to train on")
        self.files = list(files)
        self.size = size
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, index: int) -> torch.Tensor:
        """The image, shorter side resized to ``size`` and centre-cropped (the one resize and crop)."""
        return resize_and_crop(read_image(self.files[index]), None, self.size)[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.load(index)[0]

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        """(image, index of the file actually read): the next readable file stands in for a bad one."""
        for step in range(len(self.files)):
            i = (index + step) % len(self.files)
            if i in self._bad:
                continue
            try:
                return self._load(i), i
            except (OSError, UnidentifiedImageError, ValueError) as err:
                self._bad.add(i)
                logger.warning("skipping unreadable image %s (%s)", self.files[i], err)
        raise DataError("none of the training images can be read")
