"""DAVIS 2017 semi-supervised video object segmentation: one item per sequence, at native size."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from featlift._images import read_image
from featlift.errors import DatasetFormatError

from ._files import apply_limit, need, read_id_list, read_index_png, warn_if_short

__all__ = ["DAVIS2017"]

_EXPECTED = {"train": 60, "val": 30}  # sequences of DAVIS 2017 (val: 61 objects)


class DAVIS2017(Dataset):
    """DAVIS 2017 semi-supervised video object segmentation, one item per sequence, at native size.

    ``__getitem__(i)`` returns ``{"frames": list of float32 [3, H, W] in [0, 1], "masks": list of int64
    [H, W] (every frame's ground truth: 0 = background, k = object k, 255 = void), "id": SEQ,
    "frame_ids": ["00000", ...], "num_objects": int, "palette": the first annotation's palette (a list of
    768 ints) or None}``. ``num_objects`` is the largest object id in the first frame's mask (255, DAVIS's
    void, excluded).
    """

    task = "video"
    name = "davis"

    def __init__(self, base: Path, sequences: Sequence[str]) -> None:
        self._base = base
        self.ids = list(sequences)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        seq = self.ids[index]
        frame_paths = sorted((self._base / "JPEGImages" / "480p" / seq).glob("*.jpg"))
        mask_paths = sorted((self._base / "Annotations" / "480p" / seq).glob("*.png"))
        if not frame_paths or [p.stem for p in frame_paths] != [p.stem for p in mask_paths]:
            raise DatasetFormatError(
                f"{self._base / 'Annotations' / '480p' / seq}: sequence {seq} has {len(frame_paths)} frames and "
                f"{len(mask_paths)} masks; every JPEGImages/480p/{seq}/NNNNN.jpg needs its Annotations/480p/"
                f"{seq}/NNNNN.png"
            )
        frames = [read_image(p) for p in frame_paths]
        masks = [torch.from_numpy(read_index_png(p).astype(np.int64)) for p in mask_paths]
        first = masks[0][masks[0] != 255]
        num_objects = int(first.max()) if first.numel() else 0
        with Image.open(mask_paths[0]) as im:
            palette = im.getpalette() if im.mode == "P" else None
        return {
            "frames": frames,
            "masks": masks,
            "id": seq,
            "frame_ids": [p.stem for p in frame_paths],
            "num_objects": num_objects,
            "palette": palette,
        }

    def __repr__(self) -> str:
        return f"DAVIS2017({len(self)} sequences)"


def davis(root: Path, split: str, limit: int | None) -> DAVIS2017:
    base = root / "DAVIS"
    if not base.is_dir() and (root / "JPEGImages").is_dir():
        base = root
    sequences = read_id_list(need("davis", root, base / "ImageSets" / "2017" / f"{split}.txt"))
    warn_if_short("davis", split, len(sequences), _EXPECTED[split], limit)
    for seq in sequences:
        need("davis", root, base / "JPEGImages" / "480p" / seq)
        need("davis", root, base / "Annotations" / "480p" / seq)
    return DAVIS2017(base, apply_limit(sequences, limit))
