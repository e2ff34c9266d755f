"""The Hub model card a training run writes next to its weights (``README.md``)."""

from __future__ import annotations

from ..config import UpliftConfig
from .config import TrainConfig

__all__ = ["model_card"]


def model_card(cfg: TrainConfig, config: UpliftConfig, metrics: dict, *, n_train: int, n_val: int, world: int) -> str:
    """A Hub model card stating the backbone, data, steps and held-out figures."""
    bb = config.backbone
    rows = "\n".join(
        f"| {depth[5:]} | {row['uplift']:.5f} | {row['bilinear']:.5f} | {row['ratio']:.3f} |"
        for depth, row in metrics.get("heldout", {}).items()
    )
    table = (
        "| depth | UPLiFT MSE | bilinear MSE | ratio |\n| --- | --- | --- | --- |\n" + rows
        if rows
        else "No images were held out."
    )
    where = cfg.push_to_hub or "<this repo>"
    if bb.source == "module":  # a user's own module is passed in, by the name the config records
        load = (
            "from featlift.backbones import UserModule\n"
            f'mine = UserModule(module=..., name="{bb.name}", stride={bb.patch}, channels={bb.channels}, '
            f"mean={tuple(bb.mean)}, std={tuple(bb.std)})\n"
            f'up = featlift.load_upsampler("{where}", backbone=mine)'
        )
    else:
        load = f'up = featlift.load_upsampler("{where}")'
    return f"""---
library_name: featlift
tags:
- feature-upsampling
- uplift
license: mit
---

# UPLiFT upsampler for `{bb.name}`

Pixel-dense features for the frozen {bb.source} backbone `{bb.name}` ({bb.channels} channels, stride {bb.patch}),
trained with [featlift](https://pypi.org/project/featlift/)'s self-supervised multi-depth objective.

```python
import featlift
{load}
feats = up(image)  # [1, {bb.channels}, H, W]
```

## Training
- Data: `{cfg.data}`: {n_train} training images, {n_val} held out.
- {metrics.get("steps")} steps, batch {cfg.batch_size} x {world} process(es), {cfg.image_size} px crops,
  depths 1..{cfg.depths}, Adam lr {cfg.lr}, {cfg.loss} loss, feature noise {cfg.noise_std}, seed {cfg.seed}.
- Architecture base: `{cfg.base if isinstance(cfg.base, str) else cfg.base.description or "an UpliftConfig"}`.

## Held-out error against the full image's backbone features
Features of the image downsampled by 2^depth, upsampled `depth` times by UPLiFT or bilinearly.

{table}
"""
