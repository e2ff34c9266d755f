"""Write a small synthetic segmentation dataset in the PASCAL VOC layout, to try ``featlift eval`` (and
``featlift train``) end to end without downloading anything.

Each image is a textured background with a few small shapes; a shape's colour family is its class (1-4),
the background is class 0, and a one-pixel ring around each shape is marked 255 (ignored), as VOC marks
object borders. Shapes are small and their edges are sharp, so the label resolution matters: an upsampler
that follows image edges should beat bilinear upsampling of 14-pixel patch features.

Also written: ``backbone.safetensors``, random-init weights of timm's DINOv2-S/14 (the stand-in for a
pretrained backbone on a machine without network), and ``train_images.txt``, the training images as a
file list for ``featlift train``.

    python examples/synthetic_eval.py --out synth --train 96 --val 24
    featlift train --backbone vit_small_patch14_dinov2.lvd142m --backbone-weights synth/backbone.safetensors \\
        --data synth/train_images.txt --out synth/uplift --image-size 112 --depths 2 --batch-size 8 --steps 300 \\
        --device cpu
    featlift eval seg --dataset voc --root synth --image-size 112 --backbone vit_small_patch14_dinov2.lvd142m \\
        --backbone-weights synth/backbone.safetensors --upsampler bilinear --upsampler nearest \\
        --upsampler synth/uplift --epochs 5 --out synth/results.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# class -> base RGB colour of its shapes (the background is grey-green)
COLOURS = {1: (220, 40, 40), 2: (40, 60, 220), 3: (240, 200, 30), 4: (40, 190, 80)}
SIZE = 160


def _image(rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    background = rng.normal(120, 18, size=(SIZE, SIZE, 3)) + np.array([0, 10, -10])
    image = Image.fromarray(background.clip(0, 255).astype(np.uint8))
    label = Image.new("L", (SIZE, SIZE), 0)
    border = Image.new("L", (SIZE, SIZE), 0)
    draw, draw_label, draw_border = ImageDraw.Draw(image), ImageDraw.Draw(label), ImageDraw.Draw(border)
    for _ in range(int(rng.integers(3, 7))):
        cls = int(rng.integers(1, 5))
        w, h = (int(v) for v in rng.integers(10, 36, size=2))
        x, y = int(rng.integers(0, SIZE - w)), int(rng.integers(0, SIZE - h))
        box = (x, y, x + w, y + h)
        colour = tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in COLOURS[cls])
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape(box, fill=colour)
        (draw_label.ellipse if shape == draw.ellipse else draw_label.rectangle)(box, fill=cls)
        (draw_border.ellipse if shape == draw.ellipse else draw_border.rectangle)(box, outline=1, width=1)
    label = np.array(label)
    label[np.array(border) > 0] = 255
    return image, label


def _palette() -> list[int]:
    palette = [0, 0, 0] * 256
    for cls, colour in COLOURS.items():
        palette[3 * cls : 3 * cls + 3] = colour
    palette[3 * 255 : 3 * 256] = [224, 224, 192]
    return palette


def write(out: Path, n_train: int, n_val: int, seed: int = 0) -> Path:
    """Write the dataset under ``out`` (``out/VOCdevkit/VOC2012/...``) and return ``out``."""
    voc = out / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    splits = {"train": [f"train_{i:04d}" for i in range(n_train)], "val": [f"val_{i:04d}" for i in range(n_val)]}
    for ids in splits.values():
        for item in ids:
            image, label = _image(rng)
            image.save(voc / "JPEGImages" / f"{item}.jpg", quality=95)
            png = Image.fromarray(label, mode="L").convert("P")
            png.putpalette(_palette())
            png.save(voc / "SegmentationClass" / f"{item}.png")
    for split, ids in splits.items():
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    (out / "train_images.txt").write_text(
        "\n".join(str((voc / "JPEGImages" / f"{i}.jpg").resolve()) for i in splits["train"]) + "\n"
    )
    return out


def write_backbone(path: Path, name: str = "vit_small_patch14_dinov2.lvd142m", seed: int = 0) -> Path:
    """Random-init weights of the timm model ``name``, saved as safetensors (a stand-in for pretrained)."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--train", type=int, default=96)
    parser.add_argument("--val", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = write(Path(args.out), args.train, args.val, args.seed)
    write_backbone(out / "backbone.safetensors")
    print(f"wrote {args.train} training and {args.val} validation images in the VOC layout under {out}")


if __name__ == "__main__":
    main()
