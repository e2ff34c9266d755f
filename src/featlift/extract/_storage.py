"""Storing one image's outputs: the conversion to the storage dtype (and the PCA picture), done by the
computing thread, and the atomic file writes, done by a background :class:`Writer` thread."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .._atomic import atomic_write
from .._tensors import dtype_str
from ._plan import Job

__all__ = ["Writer", "prepare", "stored", "write"]


def stored(features: Tensor, dtype: torch.dtype) -> Tensor:
    """``features`` [C, H, W] as a contiguous ``dtype`` tensor, the file's layout.

    The CPU path computes channels-last; converting that layout in one ``.contiguous()`` transposes the
    whole map at once and costs about 3x a copy done a row at a time, whose pieces stay in cache.
    A value beyond float16's range is refused (the finite features would be stored as infinities).
    """
    if features.dim() != 3:
        raise ValueError(f"features to store must be [C, H, W], got {tuple(features.shape)}")
    out = torch.empty(features.shape, dtype=dtype)
    check = dtype == torch.float16
    for row in range(0, features.shape[1], 2):
        piece = out[:, row : row + 2]
        piece.copy_(features[:, row : row + 2])
        if check and not torch.isfinite(piece).all():
            peak = features.float().abs().amax().item()
            raise ValueError(
                f"features reach {peak:.4g}, beyond float16's range ({torch.finfo(torch.float16).max:.0f}); "
                "use --save-dtype bfloat16 or float32"
            )
    return out


def prepare(features: Tensor, *, save_dtype: torch.dtype | None, pca: bool) -> tuple[Tensor, Any]:
    """The tensor to store (in ``save_dtype``; None: the dtype ``features`` were computed in) and the PCA
    picture (or None): the torch work of saving, done by the computing thread. (A second thread running
    torch ops beside the model's intra-op threads oversubscribes the cores: on 2 cores that conversion
    cost 0.8 s per 448 px image instead of 0.15 s.)"""
    from ..viz import pca_rgb

    tensor = features.detach().to("cpu")
    picture = pca_rgb(tensor.float().contiguous()) if pca else None
    return stored(tensor, tensor.dtype if save_dtype is None else save_dtype), picture


def write(job: Job, tensor: Tensor, picture: Any, *, model: str, compute_dtype: torch.dtype | None = None) -> None:
    """Write :func:`prepare`'s outputs, each atomically (file work only: the :class:`Writer` thread runs it).
    The file holds ``tensor`` as ``"features"`` with the source, model, stored dtype and (when given) the
    dtype the model computed in as metadata."""
    from PIL import Image
    from safetensors.torch import save_file

    job.features.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"source": str(job.source), "model": model, "dtype": dtype_str(tensor.dtype)}
    if compute_dtype is not None:
        metadata["compute_dtype"] = dtype_str(compute_dtype)
    with atomic_write(job.features) as tmp:
        save_file({"features": tensor}, str(tmp), metadata=metadata)
    if picture is not None:
        with atomic_write(job.pca) as tmp:
            Image.fromarray(picture).save(tmp, format="PNG")


class Writer:
    """Runs ``save(job, tensor, picture)`` for each :meth:`put` in a background thread, so disk writes
    overlap the next batch. An error there (a full disk too) goes to ``on_error(job, err)`` and the thread
    goes on; anything else that stops a save (a ``BaseException``) is raised again by :meth:`close`."""

    def __init__(self, save: Callable[[Job, Tensor, Any], None], on_error: Callable[[Job, BaseException], None]):
        self.save, self.on_error = save, on_error
        self.queue: queue.Queue = queue.Queue(maxsize=2)  # bounds the results held in memory
        self.fatal: BaseException | None = None
        self.thread = threading.Thread(target=self._drain, name="featlift-writer", daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.fatal is not None:  # keep taking what is put, so put() never blocks on a full queue
                continue
            job, prepared = item
            try:
                self.save(job, *prepared)
            except Exception as err:  # that image fails, the thread keeps draining the queue
                self.on_error(job, err)
            except BaseException as err:
                self.fatal = err

    def put(self, job: Job, prepared: tuple[Tensor, Any]) -> None:
        self.queue.put((job, prepared))

    def close(self) -> None:
        """Wait until everything put has been saved (or has failed), then end the thread."""
        self.queue.put(None)
        self.thread.join()
        if self.fatal is not None:
            raise self.fatal
