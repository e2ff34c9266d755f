"""The demo's pictures besides the PCA ones (:mod:`featlift.viz`): cosine-similarity maps, heat maps and
the bundled example photos. numpy, torch and PIL only (no gradio), so they are testable alone.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter
from torch import Tensor

from ..errors import ConfigError
from ..viz import STRIP_ROWS, check_features

__all__ = ["example_images", "heatmap", "resize_picture", "similarity_map"]

# Anchor colours of the heat map, low -> high similarity (the "inferno" look: black, purple, red, orange,
# pale yellow), interpolated linearly.
_HEAT = np.array(
    [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]],
    dtype=np.float32,
)


def similarity_map(
    features: Tensor, pixel: tuple[int, int], *, size: tuple[int, int] | None = None, eps: float = 1e-8
) -> Tensor:
    """Cosine similarity of every pixel's feature to the feature at ``pixel`` (row, column): [H, W] float32
    on the CPU, in [-1, 1], exactly 1 (up to rounding) at ``pixel`` itself.

    With ``size`` (H, W) different from the map's own, the features are first bilinearly upsampled to
    ``size`` (``align_corners=False``, the usual baseline) and ``pixel`` indexes that grid. The work goes
    in strips of channels, so the upsampled features are never held at once.
    """
    check_features(features)
    c, h, w = features.shape
    size = (h, w) if size is None else (int(size[0]), int(size[1]))
    y, x = int(pixel[0]), int(pixel[1])
    if not (0 <= y < size[0] and 0 <= x < size[1]):
        raise ConfigError(f"pixel {pixel} is outside the {size[0]}x{size[1]} map; pick a (row, column) inside it")
    dot = torch.zeros(size, dtype=torch.float32)
    norm2 = torch.zeros(size, dtype=torch.float32)
    if size == (h, w):  # strips of rows, each as [rows, W, C] (no copy for channels-last maps)
        query = features[:, y, x].float().cpu()
        query2 = float(query.square().sum())
        for top in range(0, h, STRIP_ROWS):
            strip = features[:, top : top + STRIP_ROWS].float().cpu().permute(1, 2, 0)
            dot[top : top + STRIP_ROWS] = strip @ query
            norm2[top : top + STRIP_ROWS] = strip.square().sum(-1)
    else:  # strips of channels, each upsampled on its own
        query2 = 0.0
        step = max(1, min(c, 16_000_000 // max(1, size[0] * size[1])))
        for start in range(0, c, step):
            part = features[start : start + step].float()
            part = F.interpolate(part[None], size=size, mode="bilinear", align_corners=False)[0].cpu()
            query = part[:, y, x].clone()
            dot += torch.einsum("chw,c->hw", part, query)
            norm2 += part.square().sum(0)
            query2 += float(query.square().sum())
    return (dot / (norm2.sqrt() * query2**0.5).clamp_min(eps)).clamp(-1, 1)


def resize_picture(picture: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 at ``size`` (H, W), bilinear (unchanged when it already has that size)."""
    if picture.shape[:2] == tuple(size):
        return picture
    return np.asarray(Image.fromarray(picture).resize((size[1], size[0]), Image.Resampling.BILINEAR))


def heatmap(
    similarity: Tensor | np.ndarray,
    photo: np.ndarray | None = None,
    *,
    marker: tuple[int, int] | None = None,
    opacity: float = 0.65,
) -> np.ndarray:
    """A similarity map [H, W] -> uint8 RGB [H, W, 3]: 0 (or less) black through purple, red and orange to
    pale yellow at 1, laid with ``opacity`` over a grey copy of ``photo`` (uint8 [H, W, 3]) when given, with
    a cross at ``marker`` (row, column). The colour scale is fixed, so maps compare across pictures."""
    sim = similarity.detach().float().cpu().numpy() if isinstance(similarity, Tensor) else np.asarray(similarity)
    if sim.ndim != 2:
        raise ConfigError(f"expected a similarity map [H, W] (from similarity_map), got shape {sim.shape}")
    pos = np.clip(np.nan_to_num(sim, nan=0.0), 0.0, 1.0) * (len(_HEAT) - 1)
    low = np.minimum(pos.astype(np.int64), len(_HEAT) - 2)
    frac = (pos - low)[..., None]
    colour = _HEAT[low] * (1 - frac) + _HEAT[low + 1] * frac
    if photo is not None:
        if photo.shape[:2] != sim.shape:
            raise ConfigError(
                f"photo {photo.shape[:2]} and similarity map {sim.shape} differ in size; resize one to the other"
            )
        grey = photo[..., :3].astype(np.float32).mean(-1, keepdims=True)
        colour = opacity * colour + (1 - opacity) * grey
    out = Image.fromarray(colour.round().clip(0, 255).astype(np.uint8))
    if marker is not None:
        _draw_cross(out, marker)
    return np.asarray(out)


def _draw_cross(image: Image.Image, marker: tuple[int, int]) -> None:
    y, x = marker
    arm = max(3, min(image.size) // 30)
    draw = ImageDraw.Draw(image)
    for colour, width in (((0, 0, 0), 3), ((255, 255, 255), 1)):
        draw.line([(x - arm, y), (x + arm, y)], fill=colour, width=width)
        draw.line([(x, y - arm), (x, y + arm)], fill=colour, width=width)


# -- example photos, drawn here (nothing is downloaded) ----------------------------------------------------


def _noise(rng: np.random.Generator, size: tuple[int, int], scale: float, blur: float) -> np.ndarray:
    """Smooth random texture [H, W] with values around 0 of amplitude ``scale``."""
    field = Image.fromarray((rng.random(size) * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(blur))
    values = np.asarray(field, dtype=np.float32)
    values = (values - values.mean()) / max(float(values.std()), 1e-6)
    return values * scale


def _shade(image: Image.Image, rng: np.random.Generator, grain: float = 10.0) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32)
    pixels = pixels + _noise(rng, pixels.shape[:2], grain, 1.0)[..., None] + rng.normal(0, 3, pixels.shape)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def _garden(rng: np.random.Generator) -> Image.Image:
    """A house, a tree, a sun and a fence on a lawn under a sky."""
    h, w = 336, 448
    rows = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    sky = (1 - rows) * np.array([90, 150, 230], np.float32) + rows * np.array([200, 225, 250], np.float32)
    image = np.broadcast_to(sky, (h, w, 3)).copy()
    horizon = 220
    grass = np.array([70, 140, 60], np.float32) + _noise(rng, (h - horizon, w), 18, 2.0)[..., None] * [0.6, 1, 0.4]
    image[horizon:] = grass
    im = Image.fromarray(image.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    draw.ellipse([360, 30, 420, 90], fill=(255, 215, 60))  # sun
    draw.rectangle([70, 140, 210, 260], fill=(200, 90, 70))  # house
    draw.polygon([(55, 145), (140, 80), (225, 145)], fill=(110, 60, 50))  # roof
    draw.rectangle([125, 200, 160, 260], fill=(90, 60, 40))  # door
    draw.rectangle([85, 165, 115, 190], fill=(170, 210, 240))  # window
    draw.rectangle([300, 170, 318, 270], fill=(100, 70, 40))  # trunk
    draw.ellipse([255, 90, 365, 200], fill=(40, 110, 45))  # crown
    for x in range(0, w, 22):  # fence
        draw.rectangle([x, 250, x + 8, 300], fill=(235, 235, 225))
    draw.rectangle([0, 262, w, 268], fill=(235, 235, 225))
    return _shade(im, rng)


def _table(rng: np.random.Generator) -> Image.Image:
    """Fruit-like discs, a mug and a book on a wooden table."""
    h, w = 448, 448
    cols = np.arange(w, dtype=np.float32)[None, :]
    grain = np.sin(cols / 9 + _noise(rng, (h, w), 2.5, 6.0)) * 14
    wood = np.array([160, 110, 70], np.float32) + grain[..., None] * [1, 0.8, 0.5]
    im = Image.fromarray(wood.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    draw.rectangle([40, 40, 200, 250], fill=(40, 70, 140))  # book
    draw.rectangle([48, 40, 58, 250], fill=(220, 220, 210))
    draw.ellipse([250, 60, 360, 170], fill=(210, 40, 40))  # apple
    draw.ellipse([300, 220, 400, 320], fill=(250, 160, 30))  # orange
    draw.ellipse([230, 300, 300, 370], fill=(120, 180, 50))  # lime
    draw.rectangle([70, 300, 170, 410], fill=(240, 240, 235))  # mug
    draw.ellipse([160, 325, 205, 385], outline=(240, 240, 235), width=10)  # handle
    draw.ellipse([80, 290, 160, 315], fill=(60, 40, 30))  # coffee
    return _shade(im, rng, grain=6.0)


def _shapes(rng: np.random.Generator) -> Image.Image:
    """Overlapping shapes with hard edges on a checkerboard: a test of edge sharpness."""
    h, w = 320, 480
    yy, xx = np.mgrid[0:h, 0:w]
    board = ((yy // 40 + xx // 40) % 2).astype(np.float32)
    base = board[..., None] * np.array([60, 60, 60], np.float32) + np.array([150, 150, 150], np.float32)
    im = Image.fromarray(base.astype(np.uint8))
    draw = ImageDraw.Draw(im)
    draw.ellipse([30, 40, 190, 200], fill=(230, 50, 50))
    draw.rectangle([140, 120, 300, 280], fill=(40, 90, 220))
    draw.polygon([(320, 270), (400, 50), (470, 270)], fill=(250, 210, 40))
    draw.ellipse([250, 30, 330, 110], fill=(60, 180, 90))
    draw.line([(10, 300), (470, 230)], fill=(20, 20, 20), width=6)
    return _shade(im, rng, grain=4.0)


def example_images() -> dict[str, Image.Image]:
    """The demo's example photos, drawn by featlift (deterministic; nothing is downloaded): name -> RGB image."""
    makers = {"garden": _garden, "table": _table, "shapes": _shapes}
    return {name: make(np.random.default_rng(index)) for index, (name, make) in enumerate(makers.items())}
