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
- **Storage.** ``save_dtype`` (float16 halves float32's bytes; bfloat16 keeps float32's range), ``head``
  (a linear map applied per tile, so only its K channels are computed at full resolution and stored),
  and ``output_size`` (``"native"``, ``(H, W)`` or each image's own size).

One image that cannot be read, has bad pixels or does not fit in memory is reported and skipped; the
others still get their outputs.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ._atomic import atomic_write
from ._distributed import Dist, init_distributed, shard
from ._images import list_image_files, resize_to_patch_multiple, to_image_tensor
from ._tensors import freeze, to_dtype
from .errors import CheckpointError, ConfigError

__all__ = [
    "FEATURES_SUFFIX",
    "PCA_SUFFIX",
    "ExtractionSummary",
    "Job",
    "extract",
    "load_head",
    "plan_jobs",
]

logger = logging.getLogger(__name__)

FEATURES_SUFFIX = ".safetensors"
PCA_SUFFIX = ".pca.png"


def _decompression_bomb() -> type[Exception]:
    from PIL import Image

    return Image.DecompressionBombError


# Errors that concern one input (unreadable file, bad pixels, a picture too big to decode or to fit in
# memory): report it, go on.
PER_IMAGE_ERRORS = (OSError, ValueError, TypeError, MemoryError, torch.OutOfMemoryError, _decompression_bomb())


def _per_image(err: BaseException) -> bool:
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
    """Input images and their output paths (module docstring), in a deterministic order.

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


def load_head(path: str | os.PathLike, channels: int | None = None) -> nn.Conv2d:
    """A per-pixel linear map from a ``.safetensors`` file: ``weight`` [K, C] or [K, C, 1, 1] and an
    optional ``bias`` [K] (a PCA basis, a trained linear probe). ``channels`` checks C."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--head {path}: no such file; pass a .safetensors file with 'weight' [K, C]")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"--head {path}: not a readable .safetensors file ({err})") from err
    weight = tensors.get("weight")
    if weight is None:
        raise CheckpointError(
            f"--head {path}: no 'weight' tensor (found {sorted(tensors)}); save the map as "
            "{'weight': [K, C] or [K, C, 1, 1], 'bias': [K] (optional)}"
        )
    if weight.dim() == 4 and weight.shape[-2:] == (1, 1):
        weight = weight[:, :, 0, 0]
    if weight.dim() != 2 or not weight.is_floating_point():
        raise CheckpointError(
            f"--head {path}: 'weight' must be a float [K, C] or [K, C, 1, 1], got {tuple(weight.shape)}"
        )
    k, c = weight.shape
    if channels is not None and c != channels:
        raise CheckpointError(f"--head {path}: 'weight' maps {c} channels, but this model's features have {channels}")
    bias = tensors.get("bias")
    if bias is not None and tuple(bias.shape) != (k,):
        raise CheckpointError(f"--head {path}: 'bias' must be [{k}] to match 'weight', got {tuple(bias.shape)}")
    unknown = sorted(set(tensors) - {"weight", "bias"})
    if unknown:
        raise CheckpointError(f"--head {path}: unexpected tensors {unknown}; only 'weight' and 'bias' are read")
    head = nn.Conv2d(c, k, 1, bias=bias is not None)
    with torch.no_grad():
        head.weight.copy_(weight.float()[:, :, None, None])
        if bias is not None:
            head.bias.copy_(bias.float())
    return freeze(head)


def _image_size(path: Path) -> tuple[int, int] | None:
    """(H, W) from the file header, or None when the header cannot be read (the loader reports it)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.height, im.width
    except PER_IMAGE_ERRORS:
        return None


def _batches(jobs: list[Job], sizes: list[tuple[int, int] | None], batch_size: int) -> list[list[int]]:
    """Indices of ``jobs`` in batches of at most ``batch_size`` images of one size, in first-seen order;
    an image whose size is unknown goes alone."""
    groups: dict[Any, list[int]] = {}
    for i, size in enumerate(sizes):
        groups.setdefault(size if size is not None else ("unknown", i), []).append(i)
    return [members[j : j + batch_size] for members in groups.values() for j in range(0, len(members), batch_size)]


class _Images(torch.utils.data.Dataset):
    """Decoded images, resized to the backbone's patch multiple in the worker; errors travel as text."""

    def __init__(self, jobs: list[Job], patch: int) -> None:
        self.jobs, self.patch = jobs, patch

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> dict:
        from PIL import Image

        try:
            with Image.open(self.jobs[i].source) as im:
                im.load()
                pixels = to_image_tensor(im, str(self.jobs[i].source))
            size = tuple(pixels.shape[-2:])
            return {"index": i, "pixels": resize_to_patch_multiple(pixels[None], self.patch)[0], "size": size}
        except PER_IMAGE_ERRORS as err:
            return {"index": i, "error": f"{type(err).__name__}: {err}"}


class _FloatHead(nn.Module):
    """A float32 head for a model computing in any dtype: each tile's features enter as float32."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(x.float())


def _collate(items: list[dict]) -> list[dict]:
    return items


@dataclass
class ExtractionSummary:
    """What one process (and, gathered, the whole run) did."""

    written: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (source, error)
    processes: int = 1


class _Writer:
    """Saves prepared results in a background thread, so disk writes overlap the next batch."""

    def __init__(self, save: Callable[..., None], on_error: Callable[[Job, BaseException], None]) -> None:
        self.save, self.on_error = save, on_error
        self.queue: queue.Queue = queue.Queue(maxsize=2)  # bounds the results held in memory
        self.thread = threading.Thread(target=self._run, name="featlift-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            job, prepared = item
            try:
                self.save(job, *prepared)
            except Exception as err:  # a full disk too: that image fails, the thread keeps draining the queue
                self.on_error(job, err)

    def put(self, job: Job, prepared: tuple) -> None:
        self.queue.put((job, prepared))

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()


def _stored(features: Tensor, dtype: torch.dtype) -> Tensor:
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


def _prepare(features: Tensor, *, save_dtype: torch.dtype, pca: bool) -> tuple[Tensor, Any]:
    """The tensor to store and the PCA picture (or None): the torch work of saving, done by the computing
    thread. (A second thread running torch ops beside the model's intra-op threads oversubscribes the
    cores: on 2 cores that conversion cost 0.8 s per 448 px image instead of 0.15 s.)"""
    from .viz import pca_rgb

    tensor = features.detach().to("cpu")
    stored = _stored(tensor, save_dtype)
    return stored, (pca_rgb(tensor.float().contiguous()) if pca else None)


def _write(job: Job, stored: Tensor, picture: Any, *, model: str) -> None:
    """Write prepared outputs (file work only: the writer thread runs it)."""
    from PIL import Image
    from safetensors.torch import save_file

    job.features.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"source": str(job.source), "model": model, "dtype": str(stored.dtype).removeprefix("torch.")}
    with atomic_write(job.features) as tmp:
        save_file({"features": stored}, str(tmp), metadata=metadata)
    if picture is not None:
        with atomic_write(job.pca) as tmp:
            Image.fromarray(picture).save(tmp, format="PNG")


def _save(job: Job, features: Tensor, *, save_dtype: torch.dtype, model: str, pca: bool) -> None:
    """Convert and write one image's outputs."""
    _write(job, *_prepare(features, save_dtype=save_dtype, pca=pca), model=model)


def extract(
    upsampler,
    inputs: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    output_size: Any = None,
    batch_size: int = 1,
    save_dtype: str | torch.dtype = "float32",
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
    """
    d = dist if dist is not None else init_distributed(str(upsampler.device))
    if isinstance(save_dtype, str):
        save_dtype = to_dtype(save_dtype, what="save_dtype")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if pca and head is not None:
        raise ConfigError("pca pictures show the features; with a head only its K channels exist (drop one of them)")
    if head is not None:
        head = _FloatHead(head.to(upsampler.device).float())
    all_jobs = plan_jobs(inputs, out_dir)
    if not all_jobs:
        raise FileNotFoundError(f"no images found in {[str(i) for i in inputs]}")
    mine = [all_jobs[i] for i in shard(len(all_jobs), d)]
    todo = mine if overwrite else [job for job in mine if not job.done(pca)]
    summary = ExtractionSummary(skipped=len(mine) - len(todo), processes=d.world)
    lock = threading.Lock()

    def fail(job: Job, err: BaseException | str) -> None:
        message = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
        with lock:
            summary.failed.append((str(job.source), message))
        if on_failure is not None:
            on_failure(job.source, message)
        logger.warning("failed %s: %s", job.source, message)

    written = [0]

    def prepare(tensor: Tensor) -> tuple[Tensor, Any]:
        return _prepare(tensor, save_dtype=save_dtype, pca=pca)

    def save(job: Job, stored: Tensor, picture: Any) -> None:
        _write(job, stored, picture, model=model_name)
        with lock:
            written[0] += 1

    if todo:
        _run(upsampler, todo, output_size, batch_size, head, workers, progress and d.main, prepare, save, fail)
    summary.written = written[0]
    return _gathered(summary, d)


def _run(upsampler, todo, output_size, batch_size, head, workers, progress, prepare, save, fail) -> None:
    from torch.utils.data import DataLoader

    sizes = [_image_size(job.source) for job in todo]
    loader = DataLoader(
        _Images(todo, upsampler.patch),
        batch_sampler=_batches(todo, sizes, batch_size),
        num_workers=workers,
        collate_fn=_collate,
        persistent_workers=False,
    )
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="img", desc="upsampling")
    writer = _Writer(save, fail)
    try:
        for items in loader:
            good = []
            for item in items:
                if "error" in item:
                    fail(todo[item["index"]], item["error"])
                else:
                    good.append(item)
            for item, feats in _compute(upsampler, good, output_size, head, todo, fail):
                job = todo[item["index"]]
                try:
                    prepared = prepare(feats)
                except PER_IMAGE_ERRORS as err:  # float16 overflow
                    fail(job, err)
                    continue
                writer.put(job, prepared)
            if bar is not None:
                bar.update(len(items))
    finally:
        writer.close()
        if bar is not None:
            bar.close()


def _compute(upsampler, items: list[dict], output_size, head, todo: list[Job], fail):
    """(item, features [C, H, W]) for each item; a failing batch is retried image by image so only the
    image(s) at fault are lost."""
    if not items:
        return []
    try:
        return list(zip(items, _forward(upsampler, items, output_size, head), strict=True))
    except Exception as err:
        if not _per_image(err):
            raise
        if len(items) == 1:
            fail(todo[items[0]["index"]], err)
            return []
        out = []
        for item in items:
            out.extend(_compute(upsampler, [item], output_size, head, todo, fail))
        return out


def _forward(upsampler, items: list[dict], output_size, head) -> list[Tensor]:
    pixels = torch.stack([item["pixels"] for item in items])
    size = output_size if output_size is not None else items[0]["size"]
    out = upsampler(pixels, output_size=size, head=head)
    return list(out.unbind(0))


def _gathered(summary: ExtractionSummary, d: Dist) -> ExtractionSummary:
    if not d.active:
        return summary
    parts = d.gather((summary.written, summary.skipped, summary.failed))
    return ExtractionSummary(
        written=sum(p[0] for p in parts),
        skipped=sum(p[1] for p in parts),
        failed=[f for p in parts for f in p[2]],
        processes=d.world,
    )
