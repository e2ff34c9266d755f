"""An independent, functional re-statement of UPLiFT's forward pass, for tests.

It reads the authors' YAML dict and a state dict in the authors' key layout directly and uses only
``torch.nn.functional``: no featlift module, key filter or attender code is involved. It is checked
against the stored reference outputs, then used to check featlift on sizes, batches and neighbourhoods
that the fixtures do not cover. Noise channels are supported only with a zero noise scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Neighbourhoods as DESIGN.md lists them, written out literally (row-major).
OFFSETS = {
    5: [(-1, 0), (0, -1), (0, 0), (0, 1), (1, 0)],
    9: [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)],
    13: [
        (-2, 0),
        (-1, -1),
        (-1, 0),
        (-1, 1),
        (0, -2),
        (0, -1),
        (0, 0),
        (0, 1),
        (0, 2),
        (1, -1),
        (1, 0),
        (1, 1),
        (2, 0),
    ],
    17: [
        (-2, -2),
        (-2, 0),
        (-2, 2),
        (-1, -1),
        (-1, 0),
        (-1, 1),
        (0, -2),
        (0, -1),
        (0, 0),
        (0, 1),
        (0, 2),
        (1, -1),
        (1, 0),
        (1, 1),
        (2, -2),
        (2, 0),
        (2, 2),
    ],
    25: [(dy, dx) for dy in (-2, -1, 0, 1, 2) for dx in (-2, -1, 0, 1, 2)],
}


def residual(inp, out):
    if inp.shape[1] >= out.shape[1]:
        return out + inp[:, : out.shape[1]]
    padded = torch.zeros_like(out)
    padded[:, : inp.shape[1]] = inp
    return out + padded


def attend(logits, values):
    """Brute-force-ish attender: n shifted, nearest-upsampled copies, weighted."""
    b, c, h, w = values.shape
    s = logits.shape[-2] // h
    weights = torch.softmax(logits, dim=1)
    out = torch.zeros(b, c, h * s, w * s, dtype=values.dtype)
    for k, (dy, dx) in enumerate(OFFSETS[logits.shape[1]]):
        rows = [min(max(i + dy, 0), h - 1) for i in range(h)]
        cols = [min(max(j + dx, 0), w - 1) for j in range(w)]
        shifted = values[:, :, rows][:, :, :, cols]
        up = shifted.repeat_interleave(s, 2).repeat_interleave(s, 3)
        out = out + weights[:, k : k + 1] * up
    return out


def oracle_forward(cfg: dict, sd: dict, image: torch.Tensor, features: torch.Tensor, iters: int) -> list[torch.Tensor]:
    up = cfg["uplift"]
    patch = cfg["backbone"]["patch"]

    def norm(x, p, kind):
        if kind == "batch":
            return F.batch_norm(
                x, sd[p + "running_mean"], sd[p + "running_var"], sd[p + "weight"], sd[p + "bias"], False, 0.0, 1e-5
            )
        mu = x.mean(1, keepdim=True)
        var = ((x - mu) ** 2).mean(1, keepdim=True)
        return sd[p + "weight"][:, None, None] * ((x - mu) / torch.sqrt(var + 1e-6)) + sd[p + "bias"][:, None, None]

    def block(x, p, kind, nk):
        y = F.relu(norm(F.conv2d(x, sd[p + "conv.0.weight"], padding=1), p + "conv.1.", nk))
        if kind == "DoubleConv":
            y = F.relu(norm(F.conv2d(y, sd[p + "conv.3.weight"], padding=1), p + "conv.4.", nk))
            y = F.conv2d(y, sd[p + "conv.6.weight"], sd[p + "conv.6.bias"])
        else:
            y = F.conv2d(y, sd[p + "conv.3.weight"], sd[p + "conv.3.bias"])
        return residual(x, y)

    def group(x, p, g):
        for j in range(g["count"]):
            x = block(x, f"{p}blocks.{j}.", g["block"], g["norm"])
        return x

    def fuse(x, g, sec):
        parts = [x, F.interpolate(g, size=x.shape[-2:], mode="nearest")]
        if sec.get("ncat_c", 0):
            assert sec["ncat_s"] == 0, "the oracle only supports zero-scale noise"
            parts.append(torch.zeros(x.shape[0], sec["ncat_c"], *x.shape[-2:]))
        return torch.cat(parts, 1)

    img = image
    if patch == 14:
        img = F.interpolate(
            img, size=(img.shape[2] * 16 // 14, img.shape[3] * 16 // 14), mode="bilinear", align_corners=False
        )
    enc = up["encoder"]
    maps, x = [], img
    for i in range(enc["down_steps"] + 1):
        if i:
            assert enc[f"down_{i}"]["down_op"] == "none"
        x = group(x, f"encoder.block_{i}.", enc[f"block_{i}"])
        maps.append(x)

    dec = up["decoder"]
    outs, x = [], features
    for _ in range(iters):
        x_in = x
        x = group(fuse(x, maps[-1], dec), "decoder.block_0.", dec["block_0"])
        for i in range(1, dec["up_steps"] + 1):
            t = F.conv_transpose2d(x, sd[f"decoder.up_{i}.up.weight"], sd[f"decoder.up_{i}.up.bias"], stride=2)
            x = t + F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
            x = group(fuse(x, maps[-1 - i], dec), f"decoder.block_{i}.", dec[f"block_{i}"])
        logits = residual(x, F.conv2d(x, sd["attender.conv1.weight"], sd["attender.conv1.bias"]))
        x = attend(logits, x_in)
        if "refiner" in up:
            ref = up["refiner"]
            x = group(fuse(x, maps[ref.get("ref_con", -1 - dec["up_steps"])], ref), "refiner.", ref["block_0"])
            x = F.conv2d(x, sd["ref_outc.weight"], sd["ref_outc.bias"])
        outs.append(x)
    return outs
