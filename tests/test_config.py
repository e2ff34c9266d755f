"""UpliftConfig: the authors' YAML schema, featlift's JSON round trip, named configs, validation."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import yaml

import featlift
from featlift.backbones.normalisation import image_normalisation
from featlift.config import (
    BackboneConfig,
    BlockGroupConfig,
    DecoderConfig,
    DownConfig,
    EncoderConfig,
    EncoderStageConfig,
    UpConfig,
    UpliftConfig,
)
from featlift.errors import ConfigError, UnknownModelError
from featlift.registry import get_variant

from .conftest import FIXTURES


@pytest.mark.parametrize("name", ["dinov2_s14", "dinov3_splus16"])
def test_registered_configs_equal_the_published_yaml(name):
    # These two fixture configs are the published files verbatim. The authors' schema states no image
    # normalisation, so the YAML leaves it unstated; it resolves to what the registered config states.
    registered = get_variant(name).config
    published = UpliftConfig.from_yaml(FIXTURES / name / "config.yaml")
    assert published.backbone.mean is None and published.backbone.std is None
    unstated = dataclasses.replace(registered, backbone=dataclasses.replace(registered.backbone, mean=None, std=None))
    assert unstated == published
    assert image_normalisation(published.backbone) == image_normalisation(registered.backbone)
    assert image_normalisation(published.backbone) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_an_authors_yaml_for_clip_resolves_to_clips_normalisation(tmp_path):
    import timm

    name = "vit_base_patch16_clip_224.openai"
    raw = copy.deepcopy(_raw())
    raw["backbone"].update(model_type=name, channel=768, patch=16, stride=16)
    backbone = UpliftConfig.from_yaml(_write(tmp_path, raw)).backbone
    assert (backbone.name, backbone.source, backbone.channels, backbone.patch) == (name, "timm", 768, 16)
    assert backbone.mean is None and backbone.std is None, "the schema states no normalisation: no guess"
    mean, std = image_normalisation(backbone)
    want = timm.models.get_pretrained_cfg(name)
    assert mean == pytest.approx(want.mean) and std == pytest.approx(want.std)
    assert mean != pytest.approx((0.5, 0.5, 0.5)) and mean != pytest.approx((0.485, 0.456, 0.406))


def test_sd15_vae_has_the_published_structure():
    cfg = get_variant("sd15_vae").config
    mini = UpliftConfig.from_yaml(FIXTURES / "vae_mini" / "config.yaml")
    assert cfg.backbone.channels == 4 and cfg.backbone.patch == 8 and cfg.backbone.source == "diffusers"
    assert cfg.backbone.mean is None  # the VAE takes [0, 1] images
    assert cfg.encoder.out_channels() == [64, 128, 256, 512, 512]
    assert cfg.refiner is not None and cfg.refiner.blocks.widths == (512,) * 12
    assert cfg.decoder.noise_channels == cfg.refiner.noise_channels == 4
    assert cfg.decoder.noise_scale == cfg.refiner.noise_scale == 1.0
    # Same layout as the reduced-width fixture apart from widths and noise scale.
    assert [s.blocks.block for s in cfg.encoder.stages] == [s.blocks.block for s in mini.encoder.stages]
    assert cfg.refiner_guidance_index == mini.refiner_guidance_index == -1
    assert cfg.default_iters == 3


def test_list_upsamplers():
    assert featlift.list_upsamplers() == ["dinov2_s14", "dinov3_splus16", "sd15_vae"]


def test_unknown_name_lists_known_names():
    with pytest.raises(UnknownModelError, match="dinov2_s14, dinov3_splus16, sd15_vae"):
        get_variant("dinov2_b14")


def test_parameter_count_matches_the_reference():
    meta = json.loads((FIXTURES / "dinov2_s14" / "meta.json").read_text())
    assert featlift.UPLiFT(get_variant("dinov2_s14").config).num_parameters() == meta["params"] == 789521


@pytest.mark.parametrize("source", ["dinov2_s14", "dinov3_splus16", "sd15_vae", "vae_mini"])
def test_dict_and_json_round_trip_is_lossless(source):
    cfg = (
        get_variant(source).config
        if source != "vae_mini"
        else UpliftConfig.from_yaml(FIXTURES / source / "config.yaml")
    )
    data = cfg.to_dict()
    assert json.loads(json.dumps(data)) == data
    again = UpliftConfig.from_dict(data)
    assert again == cfg and again.description == cfg.description
    assert UpliftConfig.from_json(cfg.to_json()) == cfg


def test_json_file_round_trip(tmp_path):
    cfg = get_variant("dinov2_s14").config
    cfg.to_json(tmp_path / "config.json")
    assert UpliftConfig.from_json(tmp_path / "config.json") == cfg


def test_default_iters_reach_pixel_density():
    assert get_variant("dinov2_s14").config.default_iters == 4
    assert get_variant("dinov3_splus16").config.default_iters == 4
    assert get_variant("dinov2_s14").config.resolved_guidance_patch == 16
    assert get_variant("dinov3_splus16").config.resolved_guidance_patch == 16


def _raw(name="dinov2_s14"):
    return yaml.safe_load((FIXTURES / name / "config.yaml").read_text())


def _write(tmp_path, raw):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (
            lambda r: r["uplift"]["encoder"]["block_2"].update(block="TripleConv"),
            "uplift.encoder.block_2.block: got 'TripleConv'",
        ),
        (lambda r: r["uplift"].update(attender=7), "uplift.attender: neighbourhood size must be one of"),
        (lambda r: r["uplift"]["decoder"]["block_0"].update(norm="group"), "uplift.decoder.block_0.norm: got 'group'"),
        (
            lambda r: r["uplift"]["decoder"]["block_1"].update(hc=[]),
            "uplift.decoder.block_1.hc: needs at least count=1",
        ),
        (
            lambda r: r["uplift"]["decoder"]["up_1"].update(up_op="pixelshuffle"),
            "uplift.decoder.up_1.op: got 'pixelshuffle'",
        ),
        (
            lambda r: r["uplift"]["decoder"].update(enc_resample="cubic"),
            "uplift.decoder.guidance_resample: got 'cubic'",
        ),
        (lambda r: r["uplift"]["encoder"].update(colour="red"), "uplift.encoder: unknown key\\(s\\) \\['colour'\\]"),
        (lambda r: r["uplift"].update(up_factor=4), "uplift.up_factor: is 4 but the decoder's up ops scale by 2"),
        (lambda r: r["backbone"].update(channel=0), "backbone.channels: must be a positive integer"),
        (lambda r: r["uplift"].update(attender=-1), "no Local Attender"),
        (lambda r: r["uplift"]["encoder"]["down_1"].update(down_op="max", factor=0.25), "uplift.encoder.down_1.factor"),
        (lambda r: r["uplift"]["decoder"].update(up_steps=2), "uplift.decoder.up_2: missing"),
    ],
)
def test_invalid_yaml_names_the_field(tmp_path, edit, match):
    raw = copy.deepcopy(_raw())
    edit(raw)
    with pytest.raises(ConfigError, match=match):
        UpliftConfig.from_yaml(_write(tmp_path, raw))


def test_invalid_values_fail_when_the_dataclass_is_built():
    with pytest.raises(ConfigError, match="block: got 'Conv'"):
        BlockGroupConfig(block="Conv")
    with pytest.raises(ConfigError, match="widths\\[1\\]"):
        BlockGroupConfig(widths=(8, -1))
    with pytest.raises(ConfigError, match="attender: neighbourhood size"):
        dataclasses.replace(get_variant("dinov2_s14").config, attender=11)
    with pytest.raises(ConfigError, match="factor"):
        UpConfig(factor=0)
    with pytest.raises(ConfigError, match="stages\\[0\\].down.op"):
        EncoderConfig(stages=(EncoderStageConfig(down=DownConfig(op="max", factor=0.5)),))
    with pytest.raises(ConfigError, match="mean and std"):
        BackboneConfig(mean=(0.5, 0.5, 0.5))
    with pytest.raises(ConfigError, match="decoder.stages"):
        UpliftConfig(
            backbone=BackboneConfig(),
            encoder=EncoderConfig(stages=(EncoderStageConfig(),)),
            decoder=DecoderConfig(),
        )


def test_from_dict_rejects_unknown_and_mistyped_fields():
    data = get_variant("dinov2_s14").config.to_dict()
    bad = copy.deepcopy(data)
    bad["decoder"]["noise_chanels"] = 3
    with pytest.raises(ConfigError, match="config.decoder: unknown field\\(s\\) \\['noise_chanels'\\]"):
        UpliftConfig.from_dict(bad)
    bad = copy.deepcopy(data)
    bad["attender"] = "17"
    with pytest.raises(ConfigError, match="config.attender: expected int"):
        UpliftConfig.from_dict(bad)
    bad = copy.deepcopy(data)
    bad["encoder"]["stages"][1]["blocks"]["norm"] = "instance"
    with pytest.raises(ConfigError, match="config.encoder.stages\\[1\\].blocks.norm"):
        UpliftConfig.from_dict(bad)


def test_unreadable_config_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        UpliftConfig.from_yaml(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("uplift: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        UpliftConfig.from_yaml(tmp_path / "bad.yaml")
    (tmp_path / "other.yaml").write_text("model: resnet\n")
    with pytest.raises(ConfigError, match="'backbone' and 'uplift'"):
        UpliftConfig.from_yaml(tmp_path / "other.yaml")
    with pytest.raises(ConfigError, match="not valid JSON"):
        UpliftConfig.from_json("{not json")


def test_configs_are_frozen():
    cfg = get_variant("dinov2_s14").config
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.attender = 9
