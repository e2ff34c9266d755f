"""Dataset-scale extraction: pixel-dense features of many image files, written one file per image.

:func:`extract` is what ``featlift upsample`` runs:

- **Plan.** :func:`plan_jobs` maps inputs to outputs: a folder is searched recursively and mirrored
  under ``out`` (``photos/a/x.png`` given as ``photos`` -> ``out/a/x.png.safetensors``), a file given by
  name goes to ``out/x.png.safetensors``. Images whose outputs exist are skipped (a rerun resumes).
- **Processes.** Under ``torchrun`` the sorted job list is split into contiguous shares, one per process,
  and each process computes on its own device (``cuda:LOCAL_RANK``); together they write exactly the
  files one process would.
- **Overlap.** A DataLoader decodes and resizes images in worker processes while the model computes, and
  a writer thread converts and saves the previous results. Images of one size are batched together
  (``batch_size`` at most); sizes are read from the file headers up front.
- **Storage.** ``save_dtype`` (default: the dtype the features come out in, the model's dtype, or
  float32 with a head; float16 halves float32's bytes; bfloat16 keeps float32's range), ``head``
  (a linear map applied per tile, so only its K channels are computed at full resolution and stored),
  and ``output_size`` (``"native"``, ``(H, W)`` or each image's own size).

One image that cannot be read, has bad pixels or does not fit in memory is reported and skipped; the
others still get their outputs.

How the pieces fit (the modules starting with ``_`` are not public API):

- ``_plan``: :class:`Job` (an input and its output paths), :func:`plan_jobs`, the images decoded in
  DataLoader workers, the same-size batches, and which errors concern one image only.
- ``_heads``: :func:`load_head` reads a head file; a float32 wrapper applies a head to a model computing
  in any dtype.
- ``_storage``: the conversion to the storage dtype (computing thread), the atomic file writes, and the
  writer thread that runs them.
- ``_run``: ``Extraction``, one process's run (model call, storage settings, writer, progress bar,
  :class:`ExtractionSummary`), and the gather of every process's summary.
- here: :func:`extract` checks the arguments, plans, takes this process's share, skips what is done,
  runs an ``Extraction`` and gathers the summaries.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._distributed import Dist, init_distributed, shard
from .._tensors import to_dtype
from ..errors import ConfigError
from ._heads import FloatHead, load_head
from ._plan import FEATURES_SUFFIX, PCA_SUFFIX, Job, plan_jobs
from ._run import Extraction, ExtractionSummary, gathered

__all__ = [
    "FEATURES_SUFFIX",
    "PCA_SUFFIX",
    "ExtractionSummary",
    "Job",
    "extract",
    "load_head",
    "plan_jobs",
]


def extract(
    upsampler,
    inputs: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    output_size: Any = None,
    batch_size: int = 1,
    save_dtype: str | torch.dtype | None = None,
    head: nn.Module | None = None,
    pca: bool = False,
    overwrite: bool = False,
    workers: int = 2,
    model_name: str = "",
    progress: bool = False,
    dist: Dist | None = None,
    on_failure: Callable[[Path, str], None] | None = None,
) -> ExtractionSummary:
    """Write ``out_dir/<...>.safetensors`` (tensor ``"features"``, [C or K, H, W]) for every image under
    ``inputs`` with ``upsampler`` (module docstring). Returns the summary of the whole run (every
    process's, gathered). ``on_failure(source, message)`` hears each failed image as it happens.
    Files hold the features in ``save_dtype``, by default the dtype they are computed in (the
    upsampler's, or float32 with a ``head``), and record both dtypes in their metadata.
    """
    d = dist if dist is not None else init_distributed(str(upsampler.device))
    if isinstance(save_dtype, str):
        save_dtype = to_dtype(save_dtype, what="save_dtype")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if pca and head is not None:
        raise ConfigError("pca pictures show the features; with a head only its K channels exist (drop one of them)")
    if head is not None:
        head = FloatHead(head.to(upsampler.device).float())
    all_jobs = plan_jobs(inputs, out_dir)
    if not all_jobs:
        raise FileNotFoundError(f"no images found in {[str(i) for i in inputs]}")
    mine = [all_jobs[i] for i in shard(len(all_jobs), d)]
    todo = mine if overwrite else [job for job in mine if not job.done(pca)]
    summary = ExtractionSummary(skipped=len(mine) - len(todo), processes=d.world)
    if todo:
        Extraction(
            upsampler,
            todo,
            output_size=output_size,
            head=head,
            save_dtype=save_dtype,
            pca=pca,
            model_name=model_name,
            on_failure=on_failure,
            progress=progress and d.main,
            summary=summary,
        ).run(batch_size=batch_size, workers=workers)
    return gathered(summary, d)
