"""Tiny random-initialised backbones of every source, built offline from configs (nothing downloaded), for
tests/test_backbone_sources.py and tests/test_backbone_training.py."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

# Distinct statistics, so a test can tell which ones a backbone took.
HF_STATS = ((0.11, 0.22, 0.33), (0.41, 0.52, 0.63))
TEXT_TOWER = {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}

# open_clip architectures registered by open_clip_configs (names prefixed so they cannot clash)
OPEN_CLIP_CONFIGS = {
    "featlift-test-vit": {"image_size": 64, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
    "featlift-test-vit14": {"image_size": 56, "layers": 1, "width": 16, "head_width": 8, "patch_size": 14},
    "featlift-test-timm": {
        "timm_model_name": "test_vit",
        "timm_model_pretrained": False,
        "timm_pool": "map",
        "timm_proj": "none",
        "image_size": 64,
    },
    "featlift-test-rn": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8},
}


def transformers_configs() -> dict:
    """model kind -> a tiny transformers config of that kind."""
    tf = pytest.importorskip("transformers", reason="transformers is not installed (featlift[transformers])")
    common = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
    return {
        "dinov2": tf.Dinov2Config(**common, intermediate_size=64, patch_size=14, image_size=56),
        "dinov2_registers": tf.Dinov2WithRegistersConfig(
            **common, intermediate_size=64, patch_size=14, image_size=56, num_register_tokens=4
        ),
        "dinov3": tf.DINOv3ViTConfig(
            **common, intermediate_size=64, patch_size=16, image_size=64, num_register_tokens=4
        ),
        "clip": tf.CLIPVisionConfig(**common, intermediate_size=64, patch_size=16, image_size=64),
        "siglip": tf.SiglipVisionConfig(**common, intermediate_size=64, patch_size=16, image_size=64),
        "siglip2": tf.Siglip2VisionConfig(**common, intermediate_size=64, patch_size=16, num_patches=16),
        "sam": tf.SamVisionConfig(
            **common,
            mlp_dim=64,
            patch_size=16,
            image_size=64,
            output_channels=24,
            window_size=2,
            global_attn_indexes=[1],
        ),
    }


def save_transformers_model(kind: str, folder: Path, seed: int = 0, stats=HF_STATS) -> Path:
    """A seeded tiny transformers model of ``kind`` saved in ``folder`` (``save_pretrained``), with a
    ``preprocessor_config.json`` stating ``stats`` (none when ``stats`` is None)."""
    tf = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    model = tf.AutoModel.from_config(transformers_configs()[kind])
    model.save_pretrained(folder)
    if stats is not None:
        processor = {"do_normalize": True, "image_mean": list(stats[0]), "image_std": list(stats[1])}
        (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


def register_open_clip_configs(folder: Path) -> None:
    """Register the tiny open_clip architectures (:data:`OPEN_CLIP_CONFIGS`) with open_clip."""
    open_clip = pytest.importorskip("open_clip", reason="open_clip is not installed (featlift[open_clip])")
    folder.mkdir(parents=True, exist_ok=True)
    for name, vision in OPEN_CLIP_CONFIGS.items():
        (folder / f"{name}.json").write_text(
            json.dumps({"embed_dim": 16, "vision_cfg": vision, "text_cfg": TEXT_TOWER})
        )
    open_clip.add_model_config(folder)


def save_open_clip_tower(name: str, path: Path, seed: int = 0, prefix: str = "visual.") -> Path:
    """A seeded random tiny open_clip model's visual tower weights, keys under ``prefix``, in ``path``."""
    import open_clip

    torch.manual_seed(seed)
    visual = open_clip.create_model(name).visual
    save_file({prefix + k: v.contiguous() for k, v in visual.state_dict().items()}, str(path))
    return path


# A torch.hub repository whose entry returns a module with RADIO's calling convention: (summary, tokens
# [B, N, C]) with N = two prefix tokens + the patch tokens, and patch_size stated.
RADIO_LIKE = textwrap.dedent(
    """
    import torch
    from torch import nn

    dependencies = ["torch"]


    class RadioLike(nn.Module):
        patch_size = 16

        def __init__(self, width, prefix, seed):
            super().__init__()
            gen = torch.Generator().manual_seed(seed)
            self.embed = nn.Conv2d(3, width, 16, stride=16)
            with torch.no_grad():
                self.embed.weight.copy_(torch.randn(self.embed.weight.shape, generator=gen) * 0.1)
                self.embed.bias.zero_()
            self.mix = nn.Linear(width, width)
            with torch.no_grad():
                self.mix.weight.copy_(torch.randn(width, width, generator=gen) / width**0.5)
                self.mix.bias.zero_()
            self.prefix = nn.Parameter(torch.randn(prefix, width, generator=gen))

        def forward(self, x):
            tokens = self.embed(x).flatten(2).transpose(1, 2)
            tokens = tokens + torch.tanh(self.mix(tokens))
            tokens = torch.cat([self.prefix.expand(x.shape[0], -1, -1), tokens], dim=1)
            return tokens[:, 0], tokens


    class NoStride(nn.Module):
        def forward(self, x):
            return x


    def radio_model(version="", width=8, prefix=2, seed=0):
        return RadioLike(width, prefix, seed)


    def no_stride():
        return NoStride()
    """
)


def hub_repo(folder: Path) -> Path:
    """A local torch.hub repository (``hubconf.py``) with :data:`RADIO_LIKE`'s entries."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hubconf.py").write_text(RADIO_LIKE)
    return folder


class TinyConvNet(torch.nn.Module):
    """A user's own backbone: two strided convs, stride 8, 12 channels."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.a = torch.nn.Conv2d(3, 16, 4, stride=4)
        self.b = torch.nn.Conv2d(16, 12, 2, stride=2)

    def forward(self, x):
        return self.b(torch.nn.functional.gelu(self.a(x)))
