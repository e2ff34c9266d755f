"""featlift.backbones.load_backbone and the backbone's own normalisation: one source table, statistics
from the config, direct construction, the rule when backbone and UPLiFT config disagree."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import featlift
from featlift._registry import get_variant
from featlift.backbones import BACKBONE_CLASSES, Backbone, DiffusersVAE, TimmViT, load_backbone
from featlift.config import BACKBONE_SOURCES, BackboneConfig

from .configs import tiny_config
from .conftest import TIMM_NAME, tiny_autoencoder

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class _Stub(Backbone):
    """A user's backbone: patch 7, 6 channels, no statement about normalisation unless given one."""

    def __init__(self, normalisation=None) -> None:
        super().__init__()
        self.patch, self.channels = 7, 6
        self.conv = torch.nn.Conv2d(3, 6, 7, stride=7)
        if normalisation is not None:
            self.normalisation = normalisation

    def forward(self, image):
        return self.conv(image)


def test_every_config_source_has_one_backbone_class():
    assert set(BACKBONE_CLASSES) == set(BACKBONE_SOURCES)
    assert BACKBONE_CLASSES["timm"] is TimmViT and BACKBONE_CLASSES["diffusers"] is DiffusersVAE


def test_load_backbone_carries_the_config_normalisation():
    unstated = load_backbone(BackboneConfig(name=TIMM_NAME, source="timm"), pretrained=False)
    assert isinstance(unstated, TimmViT) and unstated.patch == 14 and unstated.channels == 384
    mean, std = unstated.normalisation
    assert mean == pytest.approx(IMAGENET[0]) and std == pytest.approx(IMAGENET[1])
    stated = BackboneConfig(name=TIMM_NAME, source="timm", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert load_backbone(stated, pretrained=False).normalisation == ((0.5,) * 3, (0.25,) * 3), "the config wins"


def test_a_config_without_a_backbone_is_refused():
    with pytest.raises(ValueError, match="names no backbone.*build_upsampler"):
        load_backbone(BackboneConfig(channels=6, patch=14))


def test_normalise_against_hand_arithmetic():
    stub = _Stub(normalisation=((0.5, 0.25, 0.0), (0.5, 2.0, 1.0)))
    images = torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    out = stub.normalise(images)
    want = torch.tensor([(0.0 - 0.5) / 0.5, (0.5 - 0.25) / 2.0, 1.0]).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    assert out.dtype == torch.float32 and torch.equal(out, want)
    assert stub.normalise(images, dtype=torch.bfloat16).dtype == torch.bfloat16
    assert torch.equal(_Stub().normalise(images), images), "unstated: images stay in [0, 1]"


def test_directly_built_backbones_know_their_normalisation():
    bare = TimmViT(TIMM_NAME)
    mean, std = bare.normalisation
    assert mean == pytest.approx(IMAGENET[0]) and std == pytest.approx(IMAGENET[1])
    vae = tiny_autoencoder((8, 8), sample_size=16)
    assert DiffusersVAE("tiny", vae=vae).normalisation == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def test_upsampler_rule_for_backbone_and_config_statistics():
    dino = get_variant("dinov2_s14").config
    # Both state statistics and agree: used.
    up = featlift.Upsampler(TimmViT(TIMM_NAME), featlift.UPLiFT(dino))
    assert up.mean.flatten().tolist() == pytest.approx(IMAGENET[0])
    # Both state them and disagree: a clear error naming both, not a silent choice.
    other = dataclasses.replace(dino, backbone=dataclasses.replace(dino.backbone, mean=(0.5,) * 3, std=(0.5,) * 3))
    with pytest.raises(ValueError, match=r"mean \[0\.485.*implies mean \[0\.5, 0\.5, 0\.5\].*Fix:"):
        featlift.Upsampler(TimmViT(TIMM_NAME), featlift.UPLiFT(other))
    # A backbone that states none takes the config's; a config that names no backbone takes the backbone's.
    cfg = tiny_config(patch=7, channels=6)
    stated = dataclasses.replace(cfg, backbone=dataclasses.replace(cfg.backbone, mean=(0.1,) * 3, std=(2.0,) * 3))
    unstated = _Stub()
    up = featlift.Upsampler(unstated, featlift.UPLiFT(stated))
    assert up.normalisation == ((0.1,) * 3, (2.0,) * 3)
    assert unstated.normalisation is None, "the caller's backbone is left alone"
    up = featlift.Upsampler(_Stub(normalisation=((0.3,) * 3, (0.7,) * 3)), featlift.UPLiFT(cfg))
    assert up.std.flatten().tolist() == pytest.approx([0.7] * 3)
    image = torch.full((1, 3, 14, 14), 0.5)
    assert torch.allclose(up.normalize(image), torch.full((1, 3, 14, 14), (0.5 - 0.3) / 0.7))
