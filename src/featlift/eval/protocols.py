"""The evaluation protocols as data: every setting of a run, its value and the public source it comes from.

A protocol is a frozen dataclass (:class:`SegmentationProtocol`, :class:`DepthProtocol`,
:class:`VideoProtocol`). Each field is one setting; :attr:`Protocol.sources` names, per field, the
repository and file the value was read from. :func:`protocol` looks one up by name; ``task_default``
gives each task's default. A setting changed by the user (a command-line flag, :meth:`Protocol.with_settings`)
keeps the protocol's name and records ``"set by the user"`` as its source, so a report's ``protocol`` record
(:meth:`Protocol.record`) says exactly what ran and where each value came from.

Sources (the commits read):

- JAFAR, ``PaulCouairon/JAFAR@94d4d54``: ``evaluation/train_probes.py``, ``config/eval.yaml``,
  ``config/optimizer/adamw.yaml``, ``utils/training.py``.
- NAF, ``valeoai/NAF@ad4e24d``: ``evaluation/eval_seg_probing.py``, ``config/eval_probing.yaml``,
  ``evaluation/dataset/coco.py``, ``evaluation/eval_video_seg.py``.
- AnyUp, ``wimmerth/anyup``: ``README.md`` (JAFAR's probe with the schedule stepped per epoch).
- probe3d, ``mbanani/probe3d``: ``evals/models/probes.py``, ``evals/utils/losses.py``,
  ``evals/utils/metrics.py``, ``evals/utils/optim.py``, ``evals/datasets/nyu.py``, ``configs/``.
- DINO, ``facebookresearch/dino``: ``eval_video_segmentation.py``; DAVIS,
  ``davisvideochallenge/davis2017-evaluation``: ``davis2017/metrics.py``, ``davis2017/evaluation.py``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, ClassVar

from ..errors import ConfigError

__all__ = [
    "DEFAULT_PROTOCOLS",
    "DEPTH_HEADS",
    "DEPTH_LOSSES",
    "PROTOCOLS",
    "SCHEDULES",
    "SETTING_HELP",
    "TRAIN_FRAMES",
    "DepthProtocol",
    "Protocol",
    "SegmentationProtocol",
    "VideoProtocol",
    "lr_factor",
    "protocol",
    "task_default",
]

USER = "set by the user"

JAFAR = "PaulCouairon/JAFAR@94d4d54"
NAF = "valeoai/NAF@ad4e24d"
PROBE3D = "mbanani/probe3d"
DINO = "facebookresearch/dino: eval_video_segmentation.py"
DAVIS = "davisvideochallenge/davis2017-evaluation: davis2017/metrics.py, evaluation.py"
FEATLIFT = "featlift (no published value)"

SCHEDULES = ("cosine-steps", "cosine-epochs", "cosine-jafar", "warmup-cosine", "constant")
"""How the learning rate moves (:func:`lr_factor`):

- ``cosine-steps``: one cosine from ``lr`` to 0 over all steps, stepped every step (NAF's fix).
- ``cosine-epochs``: a cosine over ``epochs`` stepped once per epoch (AnyUp's fix).
- ``cosine-jafar``: JAFAR's script as published: a cosine of period ``2 * epochs`` *steps* (``T_max`` =
  epochs, stepped every step), so the rate swings between ``lr`` and 0 all run long.
- ``warmup-cosine``: probe3d's ``cosine_decay_linear_warmup``: from 1% up to ``lr`` linearly over
  ``warmup_epochs``, then a quarter cosine down to 1%.
- ``constant``: ``lr`` throughout.
"""


def lr_factor(schedule: str, step: int, steps_per_epoch: int, epochs: int, warmup_epochs: float = 0.0) -> float:
    """The multiplier of the base learning rate for training step ``step`` (0-based) under ``schedule``."""
    total = steps_per_epoch * epochs
    if schedule == "constant":
        return 1.0
    if schedule == "cosine-steps":
        return 0.5 * (1 + math.cos(math.pi * step / max(total, 1)))
    if schedule == "cosine-epochs":
        return 0.5 * (1 + math.cos(math.pi * (step // steps_per_epoch) / max(epochs, 1)))
    if schedule == "cosine-jafar":
        return 0.5 * (1 + math.cos(math.pi * step / max(epochs, 1)))
    if schedule == "warmup-cosine":
        warmup = warmup_epochs * steps_per_epoch
        if step <= warmup:
            return 0.99 * (step / warmup if warmup > 0 else 1.0) + 0.01
        return 0.99 * math.cos(0.5 * math.pi * (step - warmup) / max(total - warmup, 1e-12)) + 0.01
    raise ConfigError(f"schedule: one of {SCHEDULES}, got {schedule!r}")


_META = ("name", "task", "summary", "sources")


@dataclass(frozen=True)
class Protocol:
    """What every protocol has: a name, its task, a one-line summary and a source per setting."""

    name: str
    task: ClassVar[str] = ""
    summary: str = ""
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def settings(self) -> dict[str, Any]:
        """Every setting's value, by field name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _META}

    def source(self, setting: str) -> str:
        return self.sources.get(setting, FEATLIFT)

    def record(self) -> dict[str, Any]:
        """``{"name", "task", "summary", "settings": {SETTING: {"value", "source"}}}``, JSON-ready."""
        return {
            "name": self.name,
            "task": self.task,
            "summary": self.summary,
            "settings": {key: {"value": _plain(v), "source": self.source(key)} for key, v in self.settings().items()},
        }

    def with_settings(self, **changes: Any) -> Protocol:
        """This protocol with some settings changed; a changed value's source becomes ``"set by the user"``
        (a value equal to the protocol's keeps its source). None values are ignored (flag not given)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        unknown = sorted(set(changes) - set(self.settings()))
        if unknown:
            raise ConfigError(
                f"protocol {self.name!r} ({self.task}) has no setting {unknown}; its settings are "
                f"{sorted(self.settings())}"
            )
        sources = dict(self.sources)
        for key, value in changes.items():
            if value != getattr(self, key):
                sources[key] = USER
        return dataclasses.replace(self, sources=MappingProxyType(sources), **changes)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", MappingProxyType(dict(self.sources)))
        self.check()

    def check(self) -> None:
        """Raise :class:`ConfigError` naming a setting whose value is out of range."""


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _positive_int(p: Protocol, *names: str) -> None:
    for name in names:
        value = getattr(p, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name}: a positive integer, got {value!r}")


def _non_negative(p: Protocol, *names: str) -> None:
    for name in names:
        value = getattr(p, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ConfigError(f"{name}: a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class ProbeProtocol(Protocol):
    """How a 1x1 linear probe is trained on frozen pixel-dense features and evaluated."""

    image_size: int = 448
    epochs: int = 20
    lr: float = 5e-4
    weight_decay: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "cosine-steps"
    warmup_epochs: float = 0.0
    batch_size: int = 2
    eval_batch_size: int = 1
    shuffle: bool = True
    flip: float = 0.5
    probe_dtype: str = "float32"
    seed: int = 0

    def check(self) -> None:
        _positive_int(self, "image_size", "epochs", "batch_size", "eval_batch_size")
        _non_negative(self, "weight_decay", "warmup_epochs")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr: a positive number, got {self.lr!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule: one of {SCHEDULES}, got {self.schedule!r}")
        if not 0 <= self.flip <= 1:
            raise ConfigError(f"flip: a probability in [0, 1], got {self.flip!r}")
        if self.probe_dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"probe_dtype: float32 or bfloat16, got {self.probe_dtype!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas: two numbers in [0, 1), got {self.betas!r}")


@dataclass(frozen=True)
class SegmentationProtocol(ProbeProtocol):
    """A linear probe for semantic segmentation: cross-entropy over the labelled pixels, mIoU from one
    confusion matrix over the whole validation set."""

    task: ClassVar[str] = "seg"
    ade20k_classes: int = 151
    coco_images: str = "curated"

    def check(self) -> None:
        super().check()
        if self.ade20k_classes not in (150, 151):
            raise ConfigError(f"ade20k_classes: 151 (label 0 counted) or 150 (mmseg), got {self.ade20k_classes!r}")
        if self.coco_images not in ("curated", "all"):
            raise ConfigError(f"coco_images: curated or all, got {self.coco_images!r}")


DEPTH_HEADS = ("bins", "linear")
DEPTH_LOSSES = ("sig+gradient", "l1")
TRAIN_FRAMES = ("geonet", "labelled")


@dataclass(frozen=True)
class DepthProtocol(ProbeProtocol):
    """A linear probe for monocular depth (NYUv2)."""

    task: ClassVar[str] = "depth"
    head: str = "bins"  # "bins": expectation over depth bins; "linear": one channel, metres
    bins: int = 256
    min_depth: float = 0.001
    max_depth: float = 10.0  # deeper ground truth is invalid
    loss: str = "sig+gradient"
    sig_weight: float = 10.0
    sig_lambda: float = 0.85
    gradient_weight: float = 0.5
    gradient_scales: int = 4
    train_frames: str = "geonet"  # "geonet" where present, else the labelled frames; or "labelled"
    raw_depth: bool = True  # the labelled frames' raw (not in-painted) depths

    def check(self) -> None:
        super().check()
        _positive_int(self, "bins", "gradient_scales")
        _non_negative(self, "sig_weight", "gradient_weight", "sig_lambda")
        if self.head not in DEPTH_HEADS:
            raise ConfigError(f"head: one of {DEPTH_HEADS}, got {self.head!r}")
        if self.loss not in DEPTH_LOSSES:
            raise ConfigError(f"loss: one of {DEPTH_LOSSES}, got {self.loss!r}")
        if not 0 < self.min_depth < self.max_depth:
            raise ConfigError(f"min_depth, max_depth: need 0 < min < max, got {self.min_depth}, {self.max_depth}")
        if self.train_frames not in TRAIN_FRAMES:
            raise ConfigError(f"train_frames: one of {TRAIN_FRAMES}, got {self.train_frames!r}")


@dataclass(frozen=True)
class VideoProtocol(Protocol):
    """Label propagation of the first frame's objects by feature affinity (DAVIS 2017 val), scored with
    the DAVIS toolkit's J&F over all objects."""

    task: ClassVar[str] = "video"
    image_size: int = 448  # frames resized to this shorter side before the upsampler
    stride: int = 4  # upsampled features average-pooled by this before propagation
    topk: int = 5
    context: int = 7
    radius: int = 12
    temperature: float = 0.1
    upsample: str = "bilinear"  # soft labels to the frame: "bilinear" + norm_mask, then argmax
    bound_th: float = 0.008

    def check(self) -> None:
        _positive_int(self, "image_size", "stride", "topk")
        if isinstance(self.context, bool) or not isinstance(self.context, int) or self.context < 0:
            raise ConfigError(f"context: an integer >= 0, got {self.context!r}")
        if isinstance(self.radius, bool) or not isinstance(self.radius, int) or self.radius < 0:
            raise ConfigError(f"radius: an integer >= 0, got {self.radius!r}")
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise ConfigError(f"temperature: a positive number, got {self.temperature!r}")
        if self.upsample not in ("bilinear", "nearest"):
            raise ConfigError(f"upsample: bilinear or nearest, got {self.upsample!r}")


# ----------------------------------------------------------------------------------------------
# The named protocols
# ----------------------------------------------------------------------------------------------

_JAFAR_PROBE = {
    "image_size": f"{JAFAR}: utils/training.py (Resize(448) + CenterCrop(448), labels NEAREST)",
    "epochs": f"{JAFAR}: config/eval.yaml",
    "lr": f"{JAFAR}: config/eval.yaml",
    "weight_decay": f"{JAFAR}: config/optimizer/adamw.yaml",
    "betas": f"{JAFAR}: config/optimizer/adamw.yaml",
    "batch_size": f"{JAFAR}: config/eval.yaml",
    "eval_batch_size": f"{JAFAR}: config/eval.yaml",
    "shuffle": f"{JAFAR}: config/eval.yaml (shuffle: True)",
    "flip": f"{JAFAR}: evaluation/train_probes.py (one draw per batch, image and label)",
    "probe_dtype": f"{JAFAR}: evaluation/train_probes.py (no autocast)",
    "seed": f"{JAFAR}: utils/training.py (loader generator seeded with 0)",
    "ade20k_classes": f"{JAFAR}: ADE20K with skip_other_class=false; {NAF}: evaluation/dataset/ade20k.py",
    "coco_images": f"{NAF}: evaluation/dataset/coco.py (curated lists, 97702 / 4172 asserted)",
}

NAF_SEGMENTATION = SegmentationProtocol(
    name="naf",
    summary="JAFAR's linear probe with NAF's fixed schedule (one cosine over all steps); what UPLiFT, AnyUp, "
    "JAFAR and NAF report",
    schedule="cosine-steps",
    sources={
        **_JAFAR_PROBE,
        "schedule": f"{NAF}: evaluation/eval_seg_probing.py (CosineAnnealingLR, T_max = epochs * steps, per step)",
        "warmup_epochs": f"{NAF}: evaluation/eval_seg_probing.py (no warm-up)",
    },
)

PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        NAF_SEGMENTATION,
        dataclasses.replace(
            NAF_SEGMENTATION,
            name="jafar",
            summary="JAFAR's script as published: CosineAnnealingLR(T_max=epochs) stepped every step",
            schedule="cosine-jafar",
            sources={**NAF_SEGMENTATION.sources, "schedule": f"{JAFAR}: evaluation/train_probes.py"},
        ),
        dataclasses.replace(
            NAF_SEGMENTATION,
            name="anyup",
            summary="JAFAR's probe with AnyUp's fix: the cosine stepped once per epoch",
            schedule="cosine-epochs",
            sources={**NAF_SEGMENTATION.sources, "schedule": "wimmerth/anyup: README.md (per-epoch LR scheduling)"},
        ),
        dataclasses.replace(
            NAF_SEGMENTATION,
            name="mmseg-ade20k",
            summary="NAF's probe, ADE20K scored as mmseg does: 150 classes, label 0 ignored",
            ade20k_classes=150,
            sources={
                **NAF_SEGMENTATION.sources,
                "ade20k_classes": "open-mmlab/mmsegmentation: ade.py (reduce_zero_label)",
            },
        ),
        dataclasses.replace(
            NAF_SEGMENTATION,
            name="cocostuff27-all",
            summary="NAF's probe, COCO-Stuff's 27 coarse classes on every image (not the curated lists)",
            coco_images="all",
            sources={**NAF_SEGMENTATION.sources, "coco_images": USER},
        ),
        DepthProtocol(
            name="probe3d",
            summary="probe3d's depth probe (256 bins, SigLoss + gradient loss, per-image metrics, scale-aware and "
            "scale-and-shift aligned) with a 1x1 probe on the upsampled features",
            image_size=480,
            epochs=10,
            lr=5e-4,
            weight_decay=0.01,
            schedule="warmup-cosine",
            warmup_epochs=1.5,
            batch_size=8,
            eval_batch_size=1,
            shuffle=False,
            flip=0.0,
            sources={
                "image_size": f"{PROBE3D}: evals/datasets/nyu.py (480x640 frames, centre crop 80:-80 = 480x480)",
                "epochs": f"{PROBE3D}: configs/optimizer/ten_epoch.yaml",
                "lr": f"{PROBE3D}: configs/optimizer/ten_epoch.yaml",
                "weight_decay": f"{PROBE3D}: train_depth.py (AdamW default, none passed)",
                "betas": f"{PROBE3D}: train_depth.py (AdamW default)",
                "schedule": f"{PROBE3D}: evals/utils/optim.py (cosine_decay_linear_warmup, per step)",
                "warmup_epochs": f"{PROBE3D}: configs/optimizer/ten_epoch.yaml",
                "batch_size": f"{PROBE3D}: configs/depth_training.yaml",
                "eval_batch_size": FEATLIFT,
                "shuffle": f"{PROBE3D}: evals/datasets/builder.py (shuffles only split 'train'; trains on 'trainval')",
                "flip": f"{PROBE3D}: evals/datasets/utils.py (rotateflip off)",
                "probe_dtype": f"{PROBE3D}: train_depth.py (no autocast)",
                "seed": FEATLIFT,
                "head": f"{PROBE3D}: evals/models/probes.py (bindepth)",
                "bins": f"{PROBE3D}: evals/models/probes.py",
                "min_depth": f"{PROBE3D}: evals/models/probes.py",
                "max_depth": f"{PROBE3D}: evals/models/probes.py, evals/datasets/nyu.py (deeper set to 0)",
                "loss": f"{PROBE3D}: evals/utils/losses.py (DepthLoss)",
                "sig_weight": f"{PROBE3D}: evals/utils/losses.py",
                "sig_lambda": f"{PROBE3D}: evals/utils/losses.py",
                "gradient_weight": f"{PROBE3D}: evals/utils/losses.py",
                "gradient_scales": f"{PROBE3D}: evals/utils/losses.py",
                "train_frames": f"{PROBE3D}: evals/datasets/nyu.py (NYU_geonet, trainval)",
                "raw_depth": f"{PROBE3D}: data_processing/create_nyu_pkl.py (rawDepths)",
            },
        ),
        DepthProtocol(
            name="l1",
            summary="featlift's earlier depth probe: one channel regressing metres with an L1 loss (no paper's)",
            head="linear",
            loss="l1",
            image_size=448,
            weight_decay=0.01,
            schedule="cosine-steps",
            flip=0.0,
            train_frames="labelled",
            raw_depth=False,
        ),
        VideoProtocol(
            name="dino",
            summary="DINO's label propagation (top-5 of the first and 7 previous frames within 12 cells, "
            "temperature 0.1, soft labels upsampled bilinearly and min-max normalised before the argmax) on "
            "pooled upsampled features; J&F as the DAVIS 2017 toolkit computes it",
            sources={
                "image_size": FEATLIFT,
                "stride": FEATLIFT,
                "topk": f"{DINO} (--topk 5)",
                "context": f"{DINO} (--n_last_frames 7)",
                "radius": f"{DINO} (--size_mask_neighborhood 12)",
                "temperature": f"{DINO} (affinity / 0.1)",
                "upsample": f"{DINO} (bilinear to the frame, norm_mask, argmax)",
                "bound_th": DAVIS,
            },
        ),
    )
}

DEFAULT_PROTOCOLS = {"seg": "naf", "depth": "probe3d", "video": "dino"}

# What each setting means (the command line's help; the README lists the values and sources).
SETTING_HELP = {
    "image_size": "shorter side resized to this, then the centre square crop (video: the shorter side only)",
    "epochs": "probe training epochs",
    "lr": "AdamW's base learning rate",
    "weight_decay": "AdamW's weight decay",
    "betas": "AdamW's betas",
    "schedule": "learning-rate schedule: " + ", ".join(SCHEDULES),
    "warmup_epochs": "linear warm-up length in epochs (warmup-cosine)",
    "batch_size": "global training batch",
    "eval_batch_size": "evaluation batch",
    "shuffle": "shuffle the training set every epoch (from the seed)",
    "flip": "probability of flipping a training batch left-right (image and target)",
    "probe_dtype": "the probe's precision: float32, or bfloat16 (autocast, CUDA only)",
    "seed": "seed of the data order, flips and the probe's initialisation",
    "ade20k_classes": "ADE20K: 151 (label 0 'other' is a class) or 150 (label 0 ignored)",
    "coco_images": "cocostuff27: curated (IIC's lists) or all images",
    "head": "depth head: bins (expectation over depth bins) or linear (metres)",
    "bins": "number of depth bins",
    "min_depth": "first bin centre, metres",
    "max_depth": "last bin centre, metres; deeper ground truth is invalid",
    "loss": "depth loss: sig+gradient or l1",
    "sig_weight": "weight of the scale-invariant log loss",
    "sig_lambda": "lambda of the scale-invariant log loss",
    "gradient_weight": "weight of the multi-scale gradient loss",
    "gradient_scales": "scales of the gradient loss (strides 1, 2, 4, 6, ...)",
    "train_frames": "NYUv2 training frames: geonet (probe3d's, where present) or labelled (the 795)",
    "raw_depth": "NYUv2 labelled frames: raw depths rather than the in-painted ones",
    "stride": "upsampled features average-pooled by this before propagation",
    "topk": "source positions voting for each target position",
    "context": "previous frames used as sources besides the first",
    "radius": "neighbourhood half-side in grid cells",
    "temperature": "softmax temperature of the affinities",
    "upsample": "soft labels to the frame: bilinear (+ min-max normalisation) or nearest, then the argmax",
    "bound_th": "DAVIS boundary tolerance (fraction of the diagonal; >= 1: pixels)",
}


def task_default(task: str) -> Protocol:
    """The protocol a task runs unless told otherwise."""
    if task not in DEFAULT_PROTOCOLS:
        raise ConfigError(f"task: one of {tuple(DEFAULT_PROTOCOLS)}, got {task!r}")
    return PROTOCOLS[DEFAULT_PROTOCOLS[task]]


def protocol(name: str | None, task: str) -> Protocol:
    """The protocol ``name`` for ``task`` (None: the task's default)."""
    if name is None:
        return task_default(task)
    found = PROTOCOLS.get(name)
    if found is None or found.task != task:
        choices = [p.name for p in PROTOCOLS.values() if p.task == task]
        raise ConfigError(f"protocol: {name!r} is not a {task} protocol; choose one of {choices}")
    return found
