"""Quick start: pixel-dense DINOv2 features for one image, and a PCA picture of them.

python examples/quickstart.py photo.jpg --out features_pca.png
python examples/quickstart.py photo.jpg --weights uplift_dinov2-s14.safetensors --backbone-weights dinov2.safetensors
"""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", help="an image file")
    parser.add_argument("--model", default="dinov2_s14", help="registered name, model directory or Hub repo id")
    parser.add_argument("--out", default="features_pca.png", help="where to write the PCA picture")
    parser.add_argument("--weights", help="local UPLiFT weights (no download)")
    parser.add_argument("--backbone-weights", help="local backbone weights (no download)")
    args = parser.parse_args()

    from PIL import Image

    import featlift
    from featlift.viz import pca_rgb

    up = featlift.load_upsampler(args.model, weights=args.weights, backbone_weights=args.backbone_weights)
    feats = up(Image.open(args.image))  # [1, C, H, W] at the image's own size
    print(f"features: {tuple(feats.shape)} {feats.dtype}")
    Image.fromarray(pca_rgb(feats[0])).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
