"""Super-resolution through the SD1.5 VAE: encode, upsample the latents with UPLiFT, decode.

Needs the VAE extra: pip install 'featlift[vae]'.

    python examples/vae_superres.py photo.jpg --iters 1 --out photo_2x.png
"""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", help="an image file")
    parser.add_argument("--iters", type=int, default=1, help="2x latent upsampling steps (output is 2**iters larger)")
    parser.add_argument("--out", default="superres.png")
    parser.add_argument("--weights", help="local UPLiFT weights (no download)")
    parser.add_argument("--backbone-weights", help="local VAE folder with config.json and weights (no download)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the model's noise channels")
    args = parser.parse_args()

    import torch
    from PIL import Image

    import featlift

    torch.manual_seed(args.seed)
    up = featlift.load_upsampler(
        "sd15_vae", iters=args.iters, weights=args.weights, backbone_weights=args.backbone_weights
    )
    image = Image.open(args.image).convert("RGB")
    latents = up(image, output_size="native")  # [1, 4, h * 2**iters, w * 2**iters]
    decoded = up.decode(latents)[0]  # [3, 8h * 2**iters, ...] in [0, 1]
    array = (decoded.permute(1, 2, 0).float().cpu().numpy() * 255).round().astype("uint8")
    Image.fromarray(array).save(args.out)
    print(f"{image.width}x{image.height} -> {array.shape[1]}x{array.shape[0]}: wrote {args.out}")


if __name__ == "__main__":
    main()
