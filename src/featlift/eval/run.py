"""One evaluation run: every upsampler through the same probe protocol, side by side.

:func:`evaluate` trains and evaluates one probe per upsampler on one dataset and returns (and with
``out`` writes) the report::

    {"task": "seg", "dataset": "voc",
     "protocol": {"name": "naf", "settings": {SETTING: {"value": ..., "source": "repo: file"}}, ...},
     "results": {UPSAMPLER: {"miou": 0.61, "pixel_accuracy": 0.90, "iou": {CLASS: 0.7 or None},
                            "compute_dtype": "bfloat16"}}}

The protocol record's ``dtype`` is what featlift models named by ``--upsampler`` are loaded in
(:func:`~featlift.eval.upsamplers.featlift_dtype`); each result's ``compute_dtype`` is what that
upsampler's features were computed in (``"bfloat16-autocast"`` for other kinds under CUDA's autocast).

(depth: ``{"d1", "d2", "d3", "rmse", "abs_rel"}`` and the same with ``_aligned``, per image then averaged).

:func:`format_table` prints it as papers do (mIoU in percent); :func:`save_picture` draws a grid of
validation images, their labels and each upsampler's prediction.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from .._atomic import atomic_write
from .._distributed import Dist
from ..errors import ConfigError
from ._common import dtype_name, label, make_sources, processes, write_report
from .probe import evaluate_probe, slug, train_probe
from .protocols import ProbeProtocol
from .protocols import protocol as named_protocol
from .tasks import Task, get_task

__all__ = ["evaluate", "format_table", "save_picture"]

logger = logging.getLogger(__name__)


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
    protocol: ProbeProtocol | str | None = None,
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
    :func:`featlift.eval.datasets.make_dataset`) under one protocol and seed.

    ``task`` is ``"seg"`` or ``"depth"``; ``protocol`` a :class:`~featlift.eval.protocols.ProbeProtocol`
    or its name (default: the task's, :func:`~featlift.eval.protocols.task_default`).
    ``source_options`` are the keywords of :func:`featlift.eval.upsamplers.make_source` (``backbone``,
    ``stride``, ``options``, ``device``, ``tile``, ``amp``, ``dtype``, ``trust_repo``). Returns the report (module
    docstring); ``out`` also writes it as JSON, ``picture`` a PNG grid, ``save_predictions`` the predicted
    and target PNGs.

    ``feature_cache`` (a folder) caches backbone features on disk (:mod:`featlift._feature_cache`).
    ``checkpoint_dir`` saves each probe after every epoch; ``resume`` continues from there (the settings
    must match).
    Under ``torchrun`` the processes share the work (:mod:`featlift.eval.probe`); the main process
    writes the report and picture, and every process returns it.
    """
    from .datasets import READERS, make_dataset

    kind = get_task(task)
    if protocol is None or isinstance(protocol, str):
        protocol = named_protocol(protocol, kind.name)
    if protocol.task != kind.name:
        raise ConfigError(f"protocol {protocol.name!r} is a {protocol.task} protocol, not a {kind.name} one")
    if resume and checkpoint_dir is None:
        raise ConfigError("resume needs the checkpoint folder of the run to continue (--checkpoint-dir)")
    reader = READERS.get(dataset.lower())
    if reader is not None and reader.task != kind.name:
        raise ValueError(f"dataset {dataset!r} is for the {reader.task!r} task, not {kind.name!r}")
    d = processes(source_options, feature_cache)
    conventions = {k: getattr(protocol, k) for k in (reader.conventions if reader else ())}
    train_set = make_dataset(dataset, root, "train", protocol.image_size, limit=max_train, **conventions)
    val_set = make_dataset(dataset, root, "val", protocol.image_size, limit=max_val, **conventions)
    record = {
        **protocol.record(),
        "backbone": label(source_options.get("backbone")),
        "backbone_weights": _backbone_weights(source_options.get("options")),
        "upsamplers": [label(spec) for spec in upsamplers],
        "train_images": len(train_set),
        "val_images": len(val_set),
        "tile": source_options.get("tile"),
        "dtype": dtype_name(source_options),
    }
    if source_options.get("stride") is not None:
        record["stride"] = source_options["stride"]
    checkpoints = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if checkpoints is not None:
        settings = {key: entry["value"] for key, entry in record["settings"].items()}
        identity = {k: v for k, v in record.items() if k not in ("settings", "summary")}
        _check_protocol(checkpoints, {"task": kind.name, "dataset": dataset, **identity, **settings}, resume, d)
    results, kept = {}, {}
    for source in make_sources(upsamplers, source_options):
        logger.info("training the probe on %s features (%d images)", source.name, len(train_set))
        probe = train_probe(
            source,
            train_set,
            task=kind,
            protocol=protocol,
            ignore_index=getattr(train_set, "ignore_index", 255),
            progress=progress,
            checkpoint=checkpoints / f"{slug(source.name)}.probe.pt" if checkpoints is not None else None,
            resume=resume,
            dist=d,
        )
        result, kept[source.name] = evaluate_probe(
            source,
            probe,
            val_set,
            task=kind,
            metric=kind.metric(val_set, protocol, source.device),
            protocol=protocol,
            save_dir=save_predictions,
            keep=picture_items if picture else 0,
            progress=progress,
            dist=d,
        )
        results[source.name] = {**result, "compute_dtype": getattr(source, "compute_dtype", None)}
    report = {"task": kind.name, "dataset": dataset, "protocol": {**record, "processes": d.world}, "results": results}
    if d.main:
        write_report(report, out)
        if picture is not None and kept and all(kept.values()):
            save_picture(picture, kept, kind)
    d.barrier()
    return report


# Each task's table columns: (header, result key, scale). Percentages as papers print them.
_COLUMNS = {
    "seg": [("mIoU (%)", "miou", 100), ("pixel acc (%)", "pixel_accuracy", 100)],
    "depth": [
        ("RMSE", "rmse", 1),
        ("AbsRel", "abs_rel", 1),
        ("d1 (%)", "d1", 100),
        ("d2 (%)", "d2", 100),
        ("d3 (%)", "d3", 100),
        ("RMSE aligned", "rmse_aligned", 1),
        ("d1 aligned (%)", "d1_aligned", 100),
    ],
    "video": [("J&F (%)", "jf_mean", 100), ("J (%)", "j_mean", 100), ("F (%)", "f_mean", 100)],
}


def format_table(report: dict) -> str:
    """The report's side-by-side table: mIoU and pixel accuracy in percent (segmentation), the depth metrics
    (per image, averaged; as predicted and scale-and-shift aligned), or J&F (video)."""
    columns = _COLUMNS[report["task"]]
    header = f"{'upsampler':<32} " + " ".join(f"{title:>{max(9, len(title))}}" for title, _, _ in columns)
    rows = []
    for name, r in report["results"].items():
        cells = []
        for title, key, scale in columns:
            width = max(9, len(title))
            cells.append(f"{scale * r[key]:>{width}.2f}" if scale == 100 else f"{r[key]:>{width}.4f}")
        rows.append(f"{name:<32} " + " ".join(cells))
    protocol = report["protocol"]
    title = (
        f"{report['dataset']} ({report['task']}, protocol {protocol.get('name')}, {protocol['val_images']} val items)"
    )
    return "\n".join([title, header, *rows])


def save_picture(path: str | os.PathLike, kept: dict[str, list[dict]], task: str | Task) -> Path:
    """A grid: one row per kept validation image; columns image, target, then each upsampler's prediction
    (coloured by the task's :attr:`~featlift.eval.tasks.Task.colour`)."""
    kind = get_task(task)
    names = list(kept)
    rows = []
    for i, item in enumerate(kept[names[0]]):
        target = item["target"]
        image = (item["image"].permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8)
        cells = [image, kind.colour(target, target)]
        cells += [kind.colour(kept[name][i]["pred"], target) for name in names]
        rows.append(np.concatenate(cells, axis=1))
    grid = np.concatenate(rows, axis=0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    logger.info("picture (image | target | %s) written to %s", " | ".join(names), path)
    return path
