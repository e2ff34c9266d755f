"""One process's extraction: :class:`Extraction` owns a run's state (the model call, the storage settings,
the writer thread, the progress bar, the summary) and drives the DataLoader -> model -> writer pipeline."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._distributed import Dist
from ._plan import PER_IMAGE_ERRORS, Images, Job, batches, collate, image_size, is_per_image
from ._storage import Writer, prepare, write

__all__ = ["Extraction", "ExtractionSummary", "gathered"]

logger = logging.getLogger(__package__)  # featlift.extract, the name users configure


@dataclass
class ExtractionSummary:
    """What one process (and, gathered, the whole run) did."""

    written: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (source, error)
    processes: int = 1


def gathered(summary: ExtractionSummary, d: Dist) -> ExtractionSummary:
    """The summary of the whole run: every process's counts added and failures joined, in rank order."""
    parts = d.gather((summary.written, summary.skipped, summary.failed))
    return ExtractionSummary(
        written=sum(p[0] for p in parts),
        skipped=sum(p[1] for p in parts),
        failed=[f for p in parts for f in p[2]],
        processes=d.world,
    )


class Extraction:
    """One process's share of a run: its ``jobs``, the model call (``upsampler``, ``output_size``,
    ``head``), how results are stored (``save_dtype``, None: as computed; ``pca``, ``model_name``), the
    failure callback and the progress bar. :meth:`run` it once; the writer thread and the computing
    thread both update :attr:`summary` (under a lock)."""

    def __init__(
        self,
        upsampler,
        jobs: list[Job],
        *,
        output_size: Any,
        head: nn.Module | None,
        save_dtype: torch.dtype | None,
        pca: bool,
        model_name: str,
        on_failure: Callable[[Path, str], None] | None,
        progress: bool,
        summary: ExtractionSummary,
    ) -> None:
        self.upsampler, self.jobs = upsampler, jobs
        self.output_size, self.head = output_size, head
        self.save_dtype, self.pca, self.model_name = save_dtype, pca, model_name
        self.on_failure, self.progress = on_failure, progress
        self.summary = summary
        self.writer: Writer | None = None  # while run() runs
        self._lock = threading.Lock()

    def run(self, *, batch_size: int, workers: int) -> ExtractionSummary:
        """Compute and write every job's outputs; a failing image is reported (:meth:`fail`) and skipped."""
        from torch.utils.data import DataLoader

        sizes = [image_size(job.source) for job in self.jobs]
        loader = DataLoader(
            Images(self.jobs, self.upsampler.patch),
            batch_sampler=batches(self.jobs, sizes, batch_size),
            num_workers=workers,
            collate_fn=collate,
            persistent_workers=False,
        )
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(self.jobs), unit="img", desc="upsampling")
        self.writer = Writer(self._save, self.fail)
        try:
            for items in loader:
                self._batch(items)
                if bar is not None:
                    bar.update(len(items))
        finally:
            self.writer.close()
            self.writer = None
            if bar is not None:
                bar.close()
        return self.summary

    def fail(self, job: Job, err: BaseException | str) -> None:
        """Report one image that gets no outputs (either thread)."""
        message = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
        with self._lock:
            self.summary.failed.append((str(job.source), message))
        if self.on_failure is not None:
            self.on_failure(job.source, message)
        logger.warning("failed %s: %s", job.source, message)

    def _save(self, job: Job, tensor: Tensor, picture: Any) -> None:
        """The writer thread's work for one image."""
        write(job, tensor, picture, model=self.model_name, compute_dtype=getattr(self.upsampler, "dtype", None))
        with self._lock:
            self.summary.written += 1

    def _batch(self, items: list[dict]) -> None:
        """One loader batch: report the images that could not be read, compute the others, queue them."""
        good = []
        for item in items:
            if "error" in item:
                self.fail(self.jobs[item["index"]], item["error"])
            else:
                good.append(item)
        for item, feats in self._compute(good):
            job = self.jobs[item["index"]]
            try:
                prepared = prepare(feats, save_dtype=self.save_dtype, pca=self.pca)
            except PER_IMAGE_ERRORS as err:  # float16 overflow
                self.fail(job, err)
                continue
            self.writer.put(job, prepared)

    def _compute(self, items: list[dict]) -> list[tuple[dict, Tensor]]:
        """(item, features [C, H, W]) for each item; a batch that fails for a per-image reason (out of
        memory) is retried image by image, so only the image(s) at fault are lost."""
        if not items:
            return []
        try:
            return list(zip(items, self._forward(items), strict=True))
        except Exception as err:
            if not is_per_image(err):
                raise
            if len(items) == 1:
                self.fail(self.jobs[items[0]["index"]], err)
                return []
        # The retry starts only once the except block has ended: until then the error's traceback keeps the
        # failed call's frames, and with them the batch's tensors (on a GPU, the memory that ran out), alive.
        return [pair for item in items for pair in self._compute([item])]

    def _forward(self, items: list[dict]) -> list[Tensor]:
        pixels = torch.stack([item["pixels"] for item in items])
        size = self.output_size if self.output_size is not None else items[0]["size"]
        return list(self.upsampler(pixels, output_size=size, head=self.head).unbind(0))
