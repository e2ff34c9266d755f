"""bfloat16 against float32 for a featlift upsampler on the CPU: the probe's mIoU with each, and the
per-pixel cosine between the two feature maps, on the same validation crops.

Run on the synthetic set of ``examples/synthetic_eval.py`` (its docstring trains the model):

    python benchmarks/eval_bf16.py --root synth --model synth/uplift --image-size 112 --epochs 5 \
        --backbone-weights synth/backbone.safetensors

Prints one table (mIoU per dtype, and the cosine's mean / 1st percentile / minimum over every pixel of
every validation crop) and writes it as JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="a VOC-layout dataset (examples/synthetic_eval.py)")
    parser.add_argument("--model", required=True, help="a featlift model directory or name")
    parser.add_argument("--dataset", default="voc")
    parser.add_argument("--backbone-weights", default=None, help="local backbone weights (offline)")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--max-val", type=int, default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--no-probe", action="store_true", help="only the feature cosine (the mIoU from two `featlift eval` runs)"
    )
    args = parser.parse_args()

    import featlift
    from featlift.eval import evaluate, make_dataset, protocol

    options = featlift.LoadOptions(backbone_weights=args.backbone_weights)
    chosen = protocol(None, "seg").with_settings(image_size=args.image_size, epochs=args.epochs)
    miou = {}
    for name, dtype in () if args.no_probe else (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        report = evaluate(
            "seg",
            args.dataset,
            args.root,
            [args.model],
            protocol=chosen,
            device="cpu",
            dtype=dtype,
            max_val=args.max_val,
        )
        miou[name] = report["results"][args.model]["miou"]

    val = make_dataset(args.dataset, args.root, "val", args.image_size, limit=args.max_val)
    fp32 = featlift.load_upsampler(args.model, device="cpu", options=options)
    bf16 = featlift.load_upsampler(args.model, device="cpu", dtype=torch.bfloat16, options=options)
    cosines = []
    with torch.inference_mode():
        for i in range(len(val)):
            image = val[i]["image"][None]
            a, b = fp32(image).float(), bf16(image).float()
            cosines.append(F.cosine_similarity(a, b, dim=1).flatten())
    cos = torch.cat(cosines).double()
    result = {
        "model": args.model,
        "val_images": len(val),
        "protocol": chosen.record(),
        "miou": miou,
        "cosine": {"mean": float(cos.mean()), "p01": float(torch.quantile(cos, 0.01)), "min": float(cos.min())},
    }
    print(f"{'dtype':<10} {'mIoU (%)':>9}")
    for name, value in miou.items():
        print(f"{name:<10} {100 * value:>9.2f}")
    c = result["cosine"]
    print(f"per-pixel cosine bf16 vs fp32 over {cos.numel()} pixels: mean {c['mean']:.5f}, "
          f"1st percentile {c['p01']:.5f}, min {c['min']:.5f}")  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
