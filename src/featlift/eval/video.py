"""Video object segmentation by label propagation (the DAVIS 2017 semi-supervised protocol as DINO and STC
evaluate frozen features) and its J&F score.

:func:`propagate` carries the first frame's object masks through a sequence using only feature affinities;
:func:`labels_from_probabilities` turns its soft labels into masks at the annotation's size (DINO's bilinear
upsampling and :func:`norm_mask`); :func:`j_and_f` scores predicted masks against ground truth as the DAVIS 2017
toolkit does (region IoU J and boundary F-measure F with their mean, recall and decay per object, first and last
frames excluded); :func:`evaluate_video` runs it all for a list of upsamplers and averages over all objects.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .._atomic import atomic_write
from .._distributed import shard
from .._images import nearest_index, resize_image
from ._common import dtype_name, label, make_sources, processes, write_report
from .protocols import VideoProtocol
from .protocols import protocol as get_protocol

__all__ = [
    "BOUND_TH",
    "DEFAULT_MAX_AFFINITY_ELEMENTS",
    "VOID",
    "boundary_map",
    "davis_palette",
    "evaluate_video",
    "j_and_f",
    "labels_from_probabilities",
    "mask_to_grid",
    "norm_mask",
    "propagate",
    "resize_labels",
    "save_indexed_png",
]

logger = logging.getLogger(__name__)

BOUND_TH = 0.008
"""Boundary tolerance of the F-measure, as a fraction of the image diagonal (DAVIS's ``bound_th``)."""

VOID = 255
"""DAVIS's void label: scored as background."""

DEFAULT_MAX_AFFINITY_ELEMENTS = 2**24
"""Default cap on the affinity block of one chunk of target positions (64 MiB of float32)."""


def _check_int_mask(mask: Tensor, what: str) -> None:
    if not isinstance(mask, Tensor):
        raise TypeError(f"{what} must be a torch tensor, got {type(mask).__name__}")
    if mask.dtype.is_floating_point or mask.dtype.is_complex:
        raise ValueError(f"{what} must hold integer object ids, got dtype {mask.dtype}")
    if mask.ndim != 2:
        raise ValueError(f"{what} must be [H, W], got shape {tuple(mask.shape)}")


def _tile_side(sources: int, radius: int, h: int, w: int, budget: int) -> int:
    """Largest square tile side T (at most the frame's longer side) whose affinity block
    ``T² targets × sources × (T + 2·radius)² window positions`` fits in ``budget`` elements; at least 1."""
    side = 1
    limit = max(h, w)
    while side < limit and (side + 1) ** 2 * sources * (side + 1 + 2 * radius) ** 2 <= budget:
        side += 1
    return side


def _band(start: int, side: int, n: int, radius: int, device) -> tuple[int, int, int, Tensor]:
    """Along one axis of ``n`` cells: the target band ``start .. stop`` (``side`` long at most), the
    source band ``lo .. hi`` around it (``radius`` more on each side), and ``near[t, s]``: whether
    source cell ``lo + s`` lies within ``radius`` of target cell ``start + t``."""
    stop = min(n, start + side)
    lo, hi = max(0, start - radius), min(n, stop + radius)
    targets = torch.arange(start, stop, device=device)
    sources = torch.arange(lo, hi, device=device)
    return stop, lo, hi, (targets[:, None] - sources[None, :]).abs() <= radius


def _propagate_frame(
    target: Tensor,
    src_feats: Tensor,
    src_labels: Tensor,
    *,
    topk: int,
    radius: int | None,
    temperature: float,
    budget: int,
) -> Tensor:
    """Soft labels ``[L, h, w]`` of one target frame.

    ``target``: ``[C, h, w]`` unit features; ``src_feats``: ``[S, C, h, w]`` unit features; ``src_labels``:
    ``[S, L, h, w]`` label distributions.
    """
    c, h, w = target.shape
    s, num_labels = src_labels.shape[:2]
    out = torch.empty(num_labels, h, w, dtype=src_labels.dtype, device=src_labels.device)
    if radius is None:
        # Global affinity: chunks of flattened target positions against every source position.
        tgt = target.reshape(c, h * w).t()  # [hw, C]
        src = src_feats.permute(1, 0, 2, 3).reshape(c, s * h * w)  # [C, S·hw]
        labels = src_labels.permute(1, 0, 2, 3).reshape(num_labels, s * h * w)  # [L, S·hw]
        k = min(topk, s * h * w)
        chunk = max(1, budget // (s * h * w))
        flat_out = out.view(num_labels, h * w)
        for q0 in range(0, h * w, chunk):
            aff = tgt[q0 : q0 + chunk] @ src  # [Q, S·hw]
            vals, idx = aff.topk(k, dim=1)
            weights = torch.softmax(vals / temperature, dim=1)  # [Q, k]
            flat_out[:, q0 : q0 + chunk] = (labels[:, idx] * weights).sum(dim=2)
        return out

    side = _tile_side(s, radius, h, w, budget)
    for y0 in range(0, h, side):
        y1, sy0, sy1, near_y = _band(y0, side, h, radius, target.device)  # near_y [th, sh]
        for x0 in range(0, w, side):
            x1, sx0, sx1, near_x = _band(x0, side, w, radius, target.device)  # near_x [tw, sw]
            th, tw, sh, sw = y1 - y0, x1 - x0, sy1 - sy0, sx1 - sx0
            # window[ty, tx, sy, sx]: the source cell lies within `radius` rows and columns of the target cell
            window = (near_y[:, None, :, None] & near_x[None, :, None, :]).reshape(th * tw, sh * sw)
            tgt = target[:, y0:y1, x0:x1].reshape(c, th * tw).t()  # [Q, C]
            src = src_feats[:, :, sy0:sy1, sx0:sx1].permute(1, 0, 2, 3).reshape(c, s * sh * sw)
            labels = src_labels[:, :, sy0:sy1, sx0:sx1].permute(1, 0, 2, 3).reshape(num_labels, s * sh * sw)
            aff = (tgt @ src).view(th * tw, s, sh * sw)
            aff = aff.masked_fill(~window[:, None, :], float("-inf")).view(th * tw, s * sh * sw)
            # Every target sees at least its own cell in each source, so each row has >= S finite entries;
            # beyond the window's size, top-k picks -inf entries, which the softmax weighs 0.
            vals, idx = aff.topk(min(topk, s * sh * sw), dim=1)
            weights = torch.softmax(vals / temperature, dim=1)
            out[:, y0:y1, x0:x1] = (labels[:, idx] * weights).sum(dim=2).view(num_labels, th, tw)
    return out


def propagate(
    features: list[Tensor],
    first_mask: Tensor,
    *,
    topk: int = 5,
    context: int = 7,
    radius: int | None = 12,
    temperature: float = 0.1,
    return_probabilities: bool = False,
    max_affinity_elements: int = DEFAULT_MAX_AFFINITY_ELEMENTS,
) -> list[Tensor] | tuple[list[Tensor], list[Tensor]]:
    """Propagate the first frame's object masks through a sequence by feature affinity.

    Args:
        features: T >= 1 tensors ``[C, h, w]`` (float, one per frame, all on one device and grid). Each position
            is L2-normalised over C here, so affinities are cosine similarities. Half precision is computed in
            float32.
        first_mask: int ``[h, w]`` object ids of frame 0 on the same grid (0 = background, ids >= 0; ids need
            not be contiguous). There are ``L = first_mask.max() + 1`` label channels.
        topk: how many source positions (over all source frames together) vote for each target position.
        context: how many preceding predicted frames join frame 0 as sources (fewer near the start).
        radius: a source position takes part only if it lies within ``radius`` rows *and* columns of the
            target position (a square window of side ``2·radius + 1`` grid cells); ``None`` = the whole frame.
        temperature: the top-k affinities are weighted by ``softmax(affinity / temperature)``.
        return_probabilities: also return the soft labels.
        max_affinity_elements: memory bound. Target positions are processed in chunks (square tiles with a
            window, runs of positions without) so that one chunk's affinity block holds at most this many
            elements, or one tile of a single position (``S·(2·radius + 1)²``, global: ``S·h·w``) when that is
            larger; S = 1 + min(context, t - 1) source frames. Peak extra memory is a small multiple of it
            (affinities, window mask, the gathered top-k labels ``L·Q·topk``), plus the S source frames' features
            and ``L``-channel soft labels of every frame.

    For frame t >= 1 the sources are frame 0 with its one-hot ground truth and frames ``max(1, t - context)
    .. t - 1`` with their *predicted soft* label distributions. Each target position takes the top-k affinities
    among the (windowed) source positions, and its label distribution is the softmax-weighted sum of theirs.

    Returns:
        T int64 ``[h, w]`` masks (the argmax of the soft labels; frame 0 is ``first_mask`` itself), on the
        features' device. With ``return_probabilities=True``, ``(masks, probabilities)`` where probabilities are
        T float ``[L, h, w]`` (frame 0 one-hot) whose channels sum to 1.
    """
    if not isinstance(features, (list, tuple)) or not features:
        raise ValueError("features must be a non-empty list of [C, h, w] tensors, one per frame")
    _check_int_mask(first_mask, "first_mask")
    shape = tuple(features[0].shape)
    for t, f in enumerate(features):
        if not isinstance(f, Tensor) or not f.dtype.is_floating_point:
            raise ValueError(f"features[{t}] must be a float tensor, got {getattr(f, 'dtype', type(f).__name__)}")
        if f.ndim != 3 or tuple(f.shape) != shape:
            raise ValueError(f"features[{t}] has shape {tuple(f.shape)}; every frame must be [C, h, w] = {shape}")
    c, h, w = shape
    if tuple(first_mask.shape) != (h, w):
        raise ValueError(
            f"first_mask is {tuple(first_mask.shape)} but the features' grid is {(h, w)}; resize the mask to the "
            "feature grid (nearest) first"
        )
    if int(first_mask.min()) < 0:
        raise ValueError("first_mask holds negative ids; object ids must be >= 0 (0 = background)")
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ValueError(f"topk must be a positive int, got {topk!r}")
    if isinstance(context, bool) or not isinstance(context, int) or context < 0:
        raise ValueError(f"context must be an int >= 0, got {context!r}")
    if radius is not None and (isinstance(radius, bool) or not isinstance(radius, int) or radius < 0):
        raise ValueError(f"radius must be an int >= 0 or None, got {radius!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    if (
        isinstance(max_affinity_elements, bool)
        or not isinstance(max_affinity_elements, int)
        or max_affinity_elements < 1
    ):
        raise ValueError(f"max_affinity_elements must be a positive int, got {max_affinity_elements!r}")

    device = features[0].device
    dtype = torch.float64 if features[0].dtype == torch.float64 else torch.float32
    num_labels = int(first_mask.max()) + 1
    first_mask = first_mask.to(device=device, dtype=torch.int64)
    unit = [F.normalize(f.detach().to(dtype), dim=0) for f in features]
    first_soft = F.one_hot(first_mask, num_labels).permute(2, 0, 1).to(dtype)  # [L, h, w]
    soft = [first_soft]
    masks = [first_mask.clone()]
    logger.debug(
        "propagating %d labels through %d frames of [%d, %d, %d] features (topk=%d, context=%d, radius=%s)",
        num_labels, len(features), c, h, w, topk, context, radius,
    )  # fmt: skip
    with torch.no_grad():
        for t in range(1, len(features)):
            previous = range(max(1, t - context), t)
            src_feats = torch.stack([unit[0], *(unit[i] for i in previous)])
            src_labels = torch.stack([soft[0], *(soft[i] for i in previous)])
            probs = _propagate_frame(
                unit[t],
                src_feats,
                src_labels,
                topk=topk,
                radius=radius,
                temperature=float(temperature),
                budget=max_affinity_elements,
            )
            soft.append(probs)
            masks.append(probs.argmax(dim=0))
    if return_probabilities:
        return masks, soft
    return masks


def boundary_map(mask: Tensor) -> Tensor:
    """Boundary pixels of a binary ``[H, W]`` mask, as DAVIS's ``seg2bmap`` marks them (``[H, W]`` bool).

    A pixel is on the boundary when it differs from its right, lower or lower-right neighbour, comparing only
    with neighbours inside the image (so the image border itself is no boundary). Foreground pixels on the
    right/bottom side of an object and background pixels on its left/top side are marked.
    """
    seg = mask.to(torch.bool)
    b = torch.zeros_like(seg)
    b[:, :-1] |= seg[:, :-1] ^ seg[:, 1:]
    b[:-1, :] |= seg[:-1, :] ^ seg[1:, :]
    b[:-1, :-1] |= seg[:-1, :-1] ^ seg[1:, 1:]
    return b


def _disk(radius: int, device: torch.device) -> Tensor:
    r = torch.arange(-radius, radius + 1, device=device)
    return ((r[:, None] ** 2 + r[None, :] ** 2) <= radius**2).to(torch.float32)


def _dilate(mask: Tensor, disk: Tensor) -> Tensor:
    radius = disk.shape[0] // 2
    out = F.conv2d(mask[None, None].to(torch.float32), disk[None, None], padding=radius)
    return out[0, 0] > 0.5


def _region_j(pred: Tensor, gt: Tensor) -> float:
    union = int((pred | gt).sum())
    if union == 0:
        return 1.0
    return int((pred & gt).sum()) / union


def _boundary_f(pred: Tensor, gt: Tensor, disk: Tensor) -> float:
    pb, gb = boundary_map(pred), boundary_map(gt)
    n_p, n_g = int(pb.sum()), int(gb.sum())
    if n_p == 0 and n_g == 0:
        return 1.0
    if n_p == 0 or n_g == 0:
        return 0.0  # precision or recall is 0 (DAVIS sets the other to 1), so F is 0
    precision = int((pb & _dilate(gb, disk)).sum()) / n_p
    recall = int((gb & _dilate(pb, disk)).sum()) / n_g
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def _statistics(values: list[float]) -> tuple[float, float, float]:
    """The DAVIS toolkit's ``db_statistics`` of one object's per-frame values: mean, recall (the fraction of
    frames above 0.5) and decay.

    Decay: the frames are cut into 4 bins at ``ids = round(linspace(1, n, 5)) - 1`` (halves rounded up); bin i
    holds frames ``ids[i] .. ids[i + 1]`` *inclusive* (so neighbouring bins share a frame), and the decay is
    the mean of bin 0 minus the mean of bin 3. (The toolkit stores ``ids`` as uint8, which wraps past 256
    scored frames; no DAVIS sequence is that long, and here the indices do not wrap.)
    """
    n = len(values)
    mean = sum(values) / n
    recall = sum(v > 0.5 for v in values) / n
    ids = [math.floor(1 + i * (n - 1) / 4 + 0.5) - 1 for i in range(5)]  # linspace(1, n, 5), halves up
    first, last = values[ids[0] : ids[1] + 1], values[ids[3] : ids[4] + 1]
    return mean, recall, sum(first) / len(first) - sum(last) / len(last)


def j_and_f(pred: list[Tensor], gt: list[Tensor], num_objects: int, *, bound_th: float = BOUND_TH) -> dict:
    """DAVIS 2017 J&F of one sequence, as the official toolkit (``davis2017-evaluation``, semi-supervised task)
    scores it.

    Args:
        pred, gt: T >= 3 int ``[H, W]`` masks each (object ids, 0 = background), pairwise on the same grid.
            Void pixels (255) in ``gt`` count as background, as in the toolkit (which sets them to 0 and does
            not use its void masks in the semi-supervised task).
        num_objects: the objects scored are ids ``1 .. num_objects`` (an id absent from both masks of a frame
            scores J = F = 1 there; ids above ``num_objects`` are ignored, where the toolkit refuses the
            prediction).
        bound_th: boundary tolerance; below 1 it is a fraction of the diagonal, the disk radius being
            ``ceil(bound_th · sqrt(H² + W²))`` pixels; from 1 up it is the radius itself.

    The first and last frames are left out. Per frame and object, J is the region IoU of the binary masks (an
    empty union scores 1) and F the boundary F-measure: boundaries (:func:`boundary_map`) matched within the
    disk dilation of the other's, precision and recall from the matched fractions (both boundaries empty:
    F = 1; one empty: F = 0). Per object, over the scored frames: the mean, the recall (fraction of frames
    above 0.5) and the decay (mean of the first quarter of the frames minus that of the last; see
    :func:`_statistics` for the toolkit's exact, overlapping bins).

    Returns:
        ``{"j_mean", "f_mean", "jf_mean", "j_recall", "f_recall", "j_decay", "f_decay", "per_object": {id:
        {"j", "f", "j_recall", "f_recall", "j_decay", "f_decay"}}}`` (floats). The sequence-level values are
        plain means over its objects (``jf_mean = (j_mean + f_mean) / 2``); a dataset's score is the mean over
        all its objects, not over sequences (see :func:`evaluate_video`).
    """
    if len(pred) != len(gt):
        raise ValueError(f"pred has {len(pred)} frames but gt has {len(gt)}")
    if len(gt) < 3:
        raise ValueError(f"J&F needs at least 3 frames (the first and last are not scored), got {len(gt)}")
    if isinstance(num_objects, bool) or not isinstance(num_objects, int) or num_objects < 1:
        raise ValueError(f"num_objects must be a positive int, got {num_objects!r}")
    if not (math.isfinite(bound_th) and bound_th > 0):
        raise ValueError(f"bound_th must be positive, got {bound_th!r}")
    for t, (p, g) in enumerate(zip(pred, gt, strict=True)):
        _check_int_mask(p, f"pred[{t}]")
        _check_int_mask(g, f"gt[{t}]")
        if p.shape != g.shape:
            raise ValueError(
                f"frame {t}: pred {tuple(p.shape)} and gt {tuple(g.shape)} differ in shape; resize the prediction "
                "to the annotation's resolution (nearest) first"
            )
        if g.shape != gt[0].shape:
            raise ValueError(f"frame {t} is {tuple(g.shape)} but frame 0 is {tuple(gt[0].shape)}")
    h, w = gt[0].shape
    radius = int(bound_th) if bound_th >= 1 else math.ceil(bound_th * math.hypot(h, w))
    disk = _disk(radius, gt[0].device)
    j_frames: list[list[float]] = [[] for _ in range(num_objects)]
    f_frames: list[list[float]] = [[] for _ in range(num_objects)]
    for t in range(1, len(gt) - 1):
        p = pred[t].to(gt[0].device)
        g = gt[t].to(gt[0].device)
        g = g.masked_fill(g == VOID, 0)
        for obj in range(1, num_objects + 1):
            pm, gm = p == obj, g == obj
            j_frames[obj - 1].append(_region_j(pm, gm))
            f_frames[obj - 1].append(_boundary_f(pm, gm, disk))
    per_object = {}
    for obj in range(1, num_objects + 1):
        jm, jr, jd = _statistics(j_frames[obj - 1])
        fm, fr, fd = _statistics(f_frames[obj - 1])
        per_object[obj] = {"j": jm, "f": fm, "j_recall": jr, "f_recall": fr, "j_decay": jd, "f_decay": fd}
    out = _object_means(list(per_object.values()))
    out["per_object"] = per_object
    return out


def _object_means(objects: list[dict]) -> dict:
    """Plain means over ``objects`` (each ``{"j", "f", "j_recall", ...}``), as the toolkit's global table."""
    n = len(objects)
    means = {
        f"{key}_{stat}": sum(o[name] for o in objects) / n
        for key in ("j", "f")
        for stat, name in (("mean", key), ("recall", f"{key}_recall"), ("decay", f"{key}_decay"))
    }
    return {"jf_mean": (means["j_mean"] + means["f_mean"]) / 2, **means}


def norm_mask(probabilities: Tensor) -> Tensor:
    """DINO's ``norm_mask``: each channel of ``[L, H, W]`` soft labels whose maximum is above 0 is min-max
    scaled to [0, 1] (``(x - min) / max(x - min)``); channels with maximum <= 0 are left as they are. A new
    tensor.

    Where DINO divides 0 by 0 (a constant positive channel) and gets NaN, the channel becomes 0 here.
    """
    out = probabilities.clone()
    for c in range(out.shape[0]):
        channel = out[c]
        if channel.max() > 0:
            shifted = channel - channel.min()
            top = shifted.max()
            out[c] = shifted / top if top > 0 else shifted
    return out


def resize_labels(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Integer labels ``[H, W]`` resized to ``size`` by pixel-centre nearest sampling (PIL's ``NEAREST``,
    PyTorch's ``nearest-exact``: output pixel i takes input pixel ``floor((i + 0.5) · in / out)``)."""
    rows = nearest_index(labels.shape[0], size[0]).to(labels.device)
    cols = nearest_index(labels.shape[1], size[1]).to(labels.device)
    return labels[rows][:, cols]


def mask_to_grid(mask: Tensor, grid: tuple[int, int]) -> Tensor:
    """The first frame's annotation ``[H, W]`` on the feature grid: pixel-centre nearest sampling (as DINO's
    PIL ``NEAREST``; PyTorch's legacy ``nearest`` would sample each cell's top-left pixel, half a cell off),
    void (255) set to background. int64."""
    _check_int_mask(mask, "mask")
    small = resize_labels(mask.to(torch.int64), grid)
    return small.masked_fill(small == VOID, 0)


def labels_from_probabilities(
    probabilities: Tensor, frame_size: tuple[int, int], out_size: tuple[int, int], *, upsample: str = "bilinear"
) -> Tensor:
    """One propagated frame's mask at the annotation's size from its soft labels ``[L, h, w]`` on the grid.

    ``upsample="bilinear"`` (DINO): the soft labels are resized bilinearly (``align_corners=False``) to the
    frame's (resized) size ``frame_size``, scaled by :func:`norm_mask`, and the argmax is taken there.
    ``"nearest"`` (featlift's earlier way): the argmax is taken on the grid. Either way the labels are then
    resized to ``out_size`` by pixel-centre nearest (:func:`resize_labels`). Returns int64 ``[H, W]``.
    """
    if probabilities.ndim != 3 or not probabilities.dtype.is_floating_point:
        raise ValueError(
            f"probabilities must be float [L, h, w], got {probabilities.dtype} {tuple(probabilities.shape)}"
        )
    if upsample == "bilinear":
        up = F.interpolate(probabilities[None].float(), size=tuple(frame_size), mode="bilinear", align_corners=False)
        labels = norm_mask(up[0]).argmax(dim=0)
    elif upsample == "nearest":
        labels = probabilities.argmax(dim=0)
    else:
        raise ValueError(f"upsample must be 'bilinear' or 'nearest', got {upsample!r}")
    return resize_labels(labels, tuple(out_size))


def davis_palette() -> list[int]:
    """The DAVIS / PASCAL VOC colour map (768 ints): index i's colour spreads the bits of i over R, G and B,
    most significant first (1 = dark red, 2 = dark green, 3 = olive, ...)."""
    palette = []
    for i in range(256):
        rgb = [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((i >> (3 * bit + channel)) & 1) << (7 - bit)
        palette.extend(rgb)
    return palette


def save_indexed_png(path: Path, mask: Tensor, palette: list[int] | None) -> None:
    """An int ``[H, W]`` mask (ids 0..255) as an indexed (mode ``P``) PNG with ``palette`` (default
    :func:`davis_palette`), written atomically."""
    array = mask.to("cpu", torch.uint8).numpy()
    image = Image.frombytes("P", (array.shape[1], array.shape[0]), array.tobytes())
    colours = list(palette) if palette is not None else davis_palette()
    image.putpalette((colours + [0] * 768)[:768])
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        image.save(tmp, format="PNG")


@torch.no_grad()
def evaluate_video(
    dataset: str,
    root: str | os.PathLike,
    upsamplers: list,
    *,
    protocol: VideoProtocol | None = None,
    max_val: int | None = None,
    out: str | os.PathLike | None = None,
    progress: bool = False,
    feature_cache: str | os.PathLike | None = None,
    save_predictions: str | os.PathLike | None = None,
    **source_options,
) -> dict:
    """Video object segmentation by label propagation (DAVIS 2017 val, semi-supervised) for each upsampler,
    scored as the DAVIS 2017 toolkit does.

    Args:
        dataset, root: the video dataset (``"davis"``) and its folder.
        upsamplers: what :func:`featlift.eval.upsamplers.make_source` builds, one source at a time.
        protocol: the settings (:class:`~featlift.eval.protocols.VideoProtocol`; default the task's default,
            ``"dino"``). Change one with ``protocol.with_settings(radius=6)``, which the report records.
        max_val: score only the first ``max_val`` sequences.
        out: where the JSON report goes (optional).
        progress: a progress bar over the sequences.
        feature_cache: a folder caching the backbone's low-resolution features.
        save_predictions: a folder; every frame's predicted mask (frame 0 included, the given annotation with
            void set to 0) is written to ``DIR/<upsampler>/SEQ/FRAME.png`` as an indexed PNG at the
            annotation's size with the sequence's palette, the layout the DAVIS toolkit reads.
        source_options: the keywords of :func:`~featlift.eval.upsamplers.make_source` (``backbone``,
            ``device``, ``options``, ...).

    Per sequence: frames are resized so the shorter side is ``protocol.image_size`` (aspect kept); each
    upsampler's features at that size are average-pooled by ``protocol.stride`` to the grid; the first
    annotation goes to the grid by pixel-centre nearest (:func:`mask_to_grid`); :func:`propagate` carries it
    through the sequence (``topk``, ``context``, ``radius`` in grid cells, ``temperature``); every later frame's
    soft labels become a mask (:func:`labels_from_probabilities` with ``protocol.upsample``: DINO's bilinear +
    :func:`norm_mask` at the frame size, or ``"nearest"``, featlift's earlier argmax on the grid) at the
    annotation's size, scored by :func:`j_and_f` with ``protocol.bound_th``. Under ``torchrun`` the sequences
    are shared out across the processes and the per-object scores gathered.

    Returns:
        ``{"task": "video", "dataset", "protocol": {**protocol.record(), "val_images": sequences, "objects",
        "backbone", "dtype", "processes"}, "results": {upsampler: {"jf_mean", "j_mean", "f_mean", "j_recall",
        "f_recall", "j_decay", "f_decay", "compute_dtype", "objects": {"SEQ_k": {"j", "f", "j_recall",
        "f_recall", "j_decay", "f_decay"}}, "sequences": {SEQ: the mean of (j + f) / 2 over its objects}}}}``.
        ``dtype`` and ``compute_dtype`` are as in :mod:`featlift.eval.run`'s report. The top-level means
        are over all objects of the dataset (61 in DAVIS 2017 val), as the toolkit's J&F-Mean, not over
        sequences.
    """
    from .datasets import make_dataset
    from .probe import slug

    settings = get_protocol(None, "video")
    if protocol is None:
        protocol = settings
    elif not isinstance(protocol, VideoProtocol):
        raise ValueError(
            f"protocol must be a VideoProtocol (featlift.eval.protocols.protocol(name, 'video')), got "
            f"{type(protocol).__name__}"
        )
    loose = sorted(set(source_options) & set(settings.settings()))
    if loose:
        raise TypeError(
            f"evaluate_video no longer takes {loose} as keywords; pass them in the protocol: "
            f"protocol=protocol(None, 'video').with_settings({', '.join(f'{k}=...' for k in loose)})"
        )
    sequences = make_dataset(dataset, root, "val", None, limit=max_val)
    if getattr(sequences, "task", None) != "video":
        raise ValueError(f"dataset {dataset!r} is not a video dataset; eval video reads davis")
    d = processes(source_options, feature_cache)
    saves = None if save_predictions is None else Path(save_predictions)
    results = {}
    objects_total = 0
    for source in make_sources(upsamplers, source_options):
        scored = []  # (SEQ, j_and_f of the sequence) for this process's share
        items = shard(len(sequences), d)
        if progress and d.main:
            from tqdm import tqdm

            items = tqdm(items, unit="sequence", desc=f"video {source.name}", leave=False)
        for i in items:
            seq = sequences[i]
            masks = _predict_sequence(source, seq, protocol)
            if saves is not None:
                folder = saves / slug(source.name) / seq["id"]
                for frame_id, mask in zip(seq["frame_ids"], masks, strict=True):
                    save_indexed_png(folder / f"{frame_id}.png", mask, seq.get("palette"))
            if seq["num_objects"] < 1:
                logger.warning("sequence %s has no object in its first annotation; it is not scored", seq["id"])
                continue
            score = j_and_f(masks, seq["masks"], seq["num_objects"], bound_th=protocol.bound_th)
            logger.debug(
                "%s %s: J&F %.4f over %d objects", source.name, seq["id"], score["jf_mean"], len(score["per_object"])
            )
            scored.append((seq["id"], score))
        scored = [s for part in d.gather(scored) for s in part]  # rank order: the single-process order
        objects = {f"{seq_id}_{k}": values for seq_id, score in scored for k, values in score["per_object"].items()}
        if not objects:
            raise ValueError(f"{dataset} at {root}: no object to score (every first annotation is empty)")
        objects_total = len(objects)
        results[source.name] = {
            **_object_means(list(objects.values())),
            "compute_dtype": getattr(source, "compute_dtype", None),
            "objects": objects,
            "sequences": {
                seq_id: sum((o["j"] + o["f"]) / 2 for o in score["per_object"].values()) / len(score["per_object"])
                for seq_id, score in scored
            },
        }
        logger.info(
            "%s: J&F %.4f (J %.4f, F %.4f) over %d objects",
            source.name, results[source.name]["jf_mean"], results[source.name]["j_mean"],
            results[source.name]["f_mean"], objects_total,
        )  # fmt: skip
    report = {
        "task": "video",
        "dataset": dataset,
        "protocol": {
            **protocol.record(),
            "val_images": len(sequences),
            "objects": objects_total,
            "backbone": label(source_options.get("backbone")),
            "dtype": dtype_name(source_options),
            "processes": d.world,
        },
        "results": results,
    }
    if d.main:
        write_report(report, out)
    d.barrier()
    return report


def _predict_sequence(source, seq: dict, protocol: VideoProtocol) -> list[Tensor]:
    """Every frame's predicted mask (int64, the annotation's size) of one sequence; frame 0 is the given
    annotation with void set to 0."""
    first = seq["masks"][0]
    h, w = first.shape
    stride = protocol.stride
    scale = protocol.image_size / min(h, w)
    size = (max(stride, round(h * scale)), max(stride, round(w * scale)))
    grid = (size[0] // stride, size[1] // stride)
    feats = []
    for frame in seq["frames"]:
        f = source.features(resize_image(frame[None], size))[0]
        feats.append(F.adaptive_avg_pool2d(f, grid).cpu())
    _, probabilities = propagate(
        feats,
        mask_to_grid(first, grid),
        topk=protocol.topk,
        context=protocol.context,
        radius=protocol.radius,
        temperature=protocol.temperature,
        return_probabilities=True,
    )
    masks = [first.to(torch.int64).masked_fill(first == VOID, 0)]
    for p in probabilities[1:]:
        masks.append(labels_from_probabilities(p, size, (h, w), upsample=protocol.upsample))
    return masks
