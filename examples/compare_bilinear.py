"""Side by side: the image, bilinearly upsampled backbone features and UPLiFT features (PCA colours).

python examples/compare_bilinear.py photo.jpg --out comparison.png
"""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", help="an image file")
    parser.add_argument("--model", default="dinov2_s14")
    parser.add_argument("--out", default="comparison.png")
    parser.add_argument("--weights", help="local UPLiFT weights (no download)")
    parser.add_argument("--backbone-weights", help="local backbone weights (no download)")
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F
    from PIL import Image

    import featlift
    from featlift.viz import pca_rgb

    up = featlift.load_upsampler(args.model, weights=args.weights, backbone_weights=args.backbone_weights)
    image = Image.open(args.image).convert("RGB")
    feats, lowres = up(image, return_lowres=True)
    size = (image.height, image.width)
    bilinear = F.interpolate(lowres.float(), size=size, mode="bilinear", align_corners=False)
    # One PCA basis for both panels, so their colours are comparable.
    both = torch.cat([bilinear[0], feats[0].float()], dim=2)
    rgb = pca_rgb(both)
    canvas = Image.new("RGB", (3 * image.width, image.height))
    canvas.paste(image, (0, 0))
    canvas.paste(Image.fromarray(rgb[:, : image.width]), (image.width, 0))
    canvas.paste(Image.fromarray(rgb[:, image.width :]), (2 * image.width, 0))
    canvas.save(args.out)
    print(f"wrote {args.out}: image | bilinear | UPLiFT")


if __name__ == "__main__":
    main()
