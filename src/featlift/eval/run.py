"""One evaluation run: every upsampler through the same probe protocol, side by side.

:func:`evaluate` trains and evaluates one probe per upsampler on one dataset and returns (and with
``out`` writes) the report::

    {"task": "seg", "dataset": "voc", "protocol": {...every setting...},
     "results": {UPSAMPLER: {"miou": 0.61, "pixel_accuracy": 0.90, "iou": {CLASS: 0.7 or None}}}}

:func:`format_table` prints it as papers do (mIoU in percent); :func:`save_picture` draws a grid of
validation images, their labels and each upsampler's prediction.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .._atomic import atomic_write
from .._distributed import Dist
from ..errors import ConfigError
from ._common import make_sources, processes, write_report
from .probe import ProbeConfig, evaluate_probe, slug, train_probe

__all__ = ["evaluate", "format_table", "save_picture"]

logger = logging.getLogger(__name__)


def _metric(task: str, dataset, device):
    from .metrics import DepthMetric, SegmentationMetric

    if task == "seg":
        return SegmentationMetric(dataset.num_classes, dataset.ignore_index, dataset.class_names, device=device)
    return DepthMetric(device=device)


def _backbone_weights(options) -> str | None:
    """The backbone weights file the protocol record names (None: the published weights)."""
    weights = None if options is None else options.backbone_weights
    return None if weights is None else str(weights)


def _check_protocol(directory: Path, protocol: dict, resume: bool, d: Dist) -> None:
    """Tie a checkpoint folder to one protocol: a resume under other settings is refused."""
    path = directory / "protocol.json"
    if resume and path.is_file():
        found = json.loads(path.read_text())
        if found != protocol:
            diff = {k: (found.get(k), protocol.get(k)) for k in sorted(set(found) | set(protocol))}
            diff = {k: v for k, v in diff.items() if v[0] != v[1]}
            raise ConfigError(
                f"{directory}: these checkpoints were made with other settings {diff} (saved, now); resume "
                "with the same settings, or pass another --checkpoint-dir (or leave out --resume to start over)"
            )
    elif d.main:
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.probe.pt"):  # a fresh run: no probe of an earlier run may be resumed
            stale.unlink()
        with atomic_write(path) as tmp:
            tmp.write_text(json.dumps(protocol, indent=2) + "\n")
    d.barrier()


def evaluate(
    task: str,
    dataset: str,
    root: str | os.PathLike,
    upsamplers: list,
    *,
    image_size: int = 448,
    config: ProbeConfig | None = None,
    max_train: int | None = None,
    max_val: int | None = None,
    save_predictions: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    picture: str | os.PathLike | None = None,
    picture_items: int = 4,
    progress: bool = False,
    feature_cache: str | os.PathLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    **source_options,
) -> dict:
    """Train and evaluate the probe for each of ``upsamplers`` on ``dataset`` (see
    :func:`featlift.eval.datasets.make_dataset`), with the same protocol and seed.

    ``task`` is ``"seg"`` or ``"depth"``. ``source_options`` are the keywords of
    :func:`featlift.eval.upsamplers.make_source` (``backbone``, ``options``, ``device``, ``tile``,
    ``amp``). Returns the report (module docstring); ``out`` also writes it as
    JSON, ``picture`` a PNG grid, ``save_predictions`` the predicted and target label PNGs.

    ``feature_cache`` (a folder) caches backbone features on disk (:mod:`featlift._feature_cache`).
    ``checkpoint_dir`` saves each probe after every epoch; ``resume`` continues from there (the settings
    must match).
    Under ``torchrun`` the processes share the work (:mod:`featlift.eval.probe`); the main process
    writes the report and picture, and every process returns it.
    """
    from .datasets import make_dataset

    config = ProbeConfig() if config is None else config
    if resume and checkpoint_dir is None:
        raise ConfigError("resume needs the checkpoint folder of the run to continue (--checkpoint-dir)")
    d = processes(source_options, feature_cache)
    train_set = make_dataset(dataset, root, "train", image_size, limit=max_train)
    val_set = make_dataset(dataset, root, "val", image_size, limit=max_val)
    if getattr(train_set, "task", task) != task:
        raise ValueError(f"dataset {dataset!r} is for the {train_set.task!r} task, not {task!r}")
    outputs = train_set.num_classes if task == "seg" else 1
    protocol = {
        **asdict(config),
        "image_size": image_size,
        "backbone": source_options.get("backbone"),
        "backbone_weights": _backbone_weights(source_options.get("options")),
        "upsamplers": [spec if isinstance(spec, str) else getattr(spec, "__name__", repr(spec)) for spec in upsamplers],
        "train_images": len(train_set),
        "val_images": len(val_set),
        "tile": source_options.get("tile"),
    }
    checkpoints = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if checkpoints is not None:
        _check_protocol(checkpoints, {"task": task, "dataset": dataset, **protocol}, resume, d)
    results, kept = {}, {}
    for source in make_sources(upsamplers, source_options):
        logger.info("training the probe on %s features (%d images)", source.name, len(train_set))
        probe = train_probe(
            source,
            train_set,
            task=task,
            outputs=outputs,
            config=config,
            ignore_index=getattr(train_set, "ignore_index", 255),
            progress=progress,
            checkpoint=checkpoints / f"{slug(source.name)}.probe.pt" if checkpoints is not None else None,
            resume=resume,
            dist=d,
        )
        metric = _metric(task, val_set, source.device)
        results[source.name], kept[source.name] = evaluate_probe(
            source,
            probe,
            val_set,
            task=task,
            metric=metric,
            config=config,
            save_dir=save_predictions,
            keep=picture_items if picture else 0,
            progress=progress,
            dist=d,
        )
    report = {"task": task, "dataset": dataset, "protocol": {**protocol, "processes": d.world}, "results": results}
    if d.main:
        write_report(report, out)
        if picture is not None and kept and all(kept.values()):
            save_picture(picture, kept, task, getattr(val_set, "num_classes", 0))
    d.barrier()
    return report


def format_table(report: dict) -> str:
    """The report's side-by-side table: mIoU and pixel accuracy in percent (segmentation), or the depth
    errors."""
    rows = []
    if report["task"] == "seg":
        header = f"{'upsampler':<32} {'mIoU (%)':>9} {'pixel acc (%)':>14}"
        for name, r in report["results"].items():
            rows.append(f"{name:<32} {100 * r['miou']:>9.2f} {100 * r['pixel_accuracy']:>14.2f}")
    elif report["task"] == "video":
        header = f"{'upsampler':<32} {'J&F (%)':>9} {'J (%)':>9} {'F (%)':>9}"
        for name, r in report["results"].items():
            rows.append(f"{name:<32} {100 * r['jf_mean']:>9.2f} {100 * r['j_mean']:>9.2f} {100 * r['f_mean']:>9.2f}")
    else:
        header = f"{'upsampler':<32} {'RMSE':>9} {'AbsRel':>9} {'d<1.25 (%)':>11}"
        for name, r in report["results"].items():
            rows.append(f"{name:<32} {r['rmse']:>9.4f} {r['abs_rel']:>9.4f} {100 * r['delta1']:>11.2f}")
    title = f"{report['dataset']} ({report['task']}, {report['protocol']['val_images']} val images)"
    return "\n".join([title, header, *rows])


def _palette(n: int) -> np.ndarray:
    """``n`` distinct colours (a fixed pseudo-random palette), plus black for ignored pixels at 255."""
    rng = np.random.default_rng(0)
    colours = rng.integers(40, 256, size=(256, 3), dtype=np.uint8)
    colours[255] = 0
    return colours


def _to_rgb(x: torch.Tensor, task: str, palette: np.ndarray, depth_range: tuple[float, float]) -> np.ndarray:
    if task == "seg":
        return palette[x.clamp(0, 255).to(torch.int64).numpy()]
    lo, hi = depth_range
    grey = ((x.float().numpy() - lo) / max(hi - lo, 1e-6)).clip(0, 1)
    return np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=2)


def save_picture(path: str | os.PathLike, kept: dict[str, list[dict]], task: str, num_classes: int) -> Path:
    """A grid: one row per kept validation image; columns image, target, then each upsampler's prediction."""
    names = list(kept)
    first = kept[names[0]]
    palette = _palette(num_classes)
    rows = []
    for i, item in enumerate(first):
        target = item["target"]
        valid = target[target > 0] if task == "depth" else target
        depth_range = (float(valid.min()), float(valid.max())) if task == "depth" and valid.numel() else (0.0, 1.0)
        image = (item["image"].permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8)
        cells = [image, _to_rgb(target, task, palette, depth_range)]
        cells += [_to_rgb(kept[name][i]["pred"], task, palette, depth_range) for name in names]
        rows.append(np.concatenate(cells, axis=1))
    grid = np.concatenate(rows, axis=0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    logger.info("picture (image | target | %s) written to %s", " | ".join(names), path)
    return path
