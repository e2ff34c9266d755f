"""UpliftConfig, the schema: featlift's dict/JSON round trip, required fields, named configs, validation.

Reading the authors' YAML files is tested in test_authors.py."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest

import featlift
from featlift._authors import read_yaml
from featlift._neighbourhood import NEIGHBOURHOOD_SIZES
from featlift._registry import get_variant
from featlift.config import (
    BackboneConfig,
    BlockGroupConfig,
    DecoderConfig,
    DownConfig,
    EncoderConfig,
    EncoderStageConfig,
    RefinerConfig,
    UpConfig,
    UpliftConfig,
)
from featlift.errors import ConfigError, UnknownModelError
from featlift.weights import read_config_json

from .configs import tiny_config
from .conftest import FIXTURES


def test_sd15_vae_has_the_published_structure():
    cfg = get_variant("sd15_vae").config
    mini = read_yaml(FIXTURES / "vae_mini" / "config.yaml")
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
    cfg = get_variant(source).config if source != "vae_mini" else read_yaml(FIXTURES / source / "config.yaml")
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


def test_invalid_values_fail_when_the_dataclass_is_built():
    with pytest.raises(ConfigError, match="block: got 'Conv'"):
        BlockGroupConfig(block="Conv")
    with pytest.raises(ConfigError, match="widths\\[1\\]"):
        BlockGroupConfig(widths=(8, -1))
    with pytest.raises(ConfigError, match="attender: neighbourhood size"):
        dataclasses.replace(get_variant("dinov2_s14").config, attender=11)
    with pytest.raises(ConfigError, match="factor"):
        UpConfig(factor=0, residual="bilinear")
    with pytest.raises(ConfigError, match="stages\\[0\\].down.op"):
        EncoderConfig(stages=(EncoderStageConfig(down=DownConfig(op="max", factor=0.5)),))
    with pytest.raises(ConfigError, match="mean and std"):
        BackboneConfig(mean=(0.5, 0.5, 0.5))
    with pytest.raises(ConfigError, match="decoder.stages"):
        UpliftConfig(
            backbone=BackboneConfig(),
            encoder=EncoderConfig(stages=(EncoderStageConfig(),)),
            decoder=tiny_config().decoder,
            share_encoder=True,
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


def test_unreadable_config_json(tmp_path):
    with pytest.raises(ConfigError, match="^config: not valid JSON"):
        UpliftConfig.from_json("{not json")
    with pytest.raises(FileNotFoundError, match="config file not found"):
        UpliftConfig.from_json(tmp_path / "config.json")
    (tmp_path / "config.json").write_text("[1, 2]")
    for read in (UpliftConfig.from_json, read_config_json):
        with pytest.raises(ConfigError, match="expected a JSON object .* got a JSON list") as info:
            read(tmp_path / "config.json")
        assert str(info.value).startswith(f"{tmp_path / 'config.json'}: ")
        assert "save_pretrained" in str(info.value)


def test_config_json_errors_name_the_file_and_the_field(tmp_path):
    data = get_variant("dinov2_s14").config.to_dict()
    data["decoder"]["noise_scale"] = "loud"
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"config.decoder.noise_scale: expected float") as info:
        read_config_json(path)
    assert str(info.value).startswith(f"{path}: ")


@pytest.mark.parametrize(("name", "value"), [("sd15_vae", True), ("dinov2_s14", False)])
def test_config_json_from_an_older_featlift_still_loads(tmp_path, name, value):
    """featlift 0.1 wrote raw_image_guidance (true for the VAE, false otherwise) and never used it: such
    files, saved model directories and Hub repos, load as the same model; other unknown keys still fail."""
    config = get_variant(name).config
    data = config.to_dict()
    data["raw_image_guidance"] = value
    assert UpliftConfig.from_dict(data) == config
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert read_config_json(tmp_path / "config.json") == config
    data["raw_image_guidence"] = value
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['raw_image_guidence'\]"):
        UpliftConfig.from_dict(data)


def test_old_config_json_without_a_required_field_names_it():
    data = get_variant("dinov2_s14").config.to_dict()
    del data["share_encoder"]
    del data["decoder"]["stages"][0]["up"]["residual"]
    with pytest.raises(ConfigError, match=r"config: missing required key\(s\) \['share_encoder'\]"):
        UpliftConfig.from_dict(data)
    data["share_encoder"] = True
    with pytest.raises(ConfigError, match=r"config.decoder.stages\[0\].up: missing required key\(s\) \['residual'\]"):
        UpliftConfig.from_dict(data)


def test_fields_without_a_featlift_default_must_be_stated():
    with pytest.raises(TypeError, match="residual"):
        UpConfig(op="tconv", factor=2)
    decoder = tiny_config().decoder
    with pytest.raises(TypeError, match="guidance_resample"):
        DecoderConfig(input_blocks=decoder.input_blocks, stages=decoder.stages)
    with pytest.raises(TypeError, match="guidance_resample"):
        RefinerConfig(blocks=BlockGroupConfig(widths=(8,)))
    cfg = tiny_config()
    with pytest.raises(TypeError, match="share_encoder"):
        UpliftConfig(backbone=cfg.backbone, encoder=cfg.encoder, decoder=cfg.decoder, attender=cfg.attender)


@pytest.mark.parametrize("size", NEIGHBOURHOOD_SIZES)
def test_attender_accepts_every_neighbourhood_size(size):
    assert tiny_config(attender=size).attender == size


@pytest.mark.parametrize("size", [0, 3, 7, 16, 49, 17.0, True])
def test_attender_refuses_other_sizes(size):
    with pytest.raises(ConfigError, match="attender: neighbourhood size must be one of \\(5, 9, 13, 17, 25\\)"):
        tiny_config(attender=size)


def test_removed_conveniences_are_gone():
    cfg = get_variant("dinov2_s14").config
    assert not hasattr(cfg, "replace") and not hasattr(cfg, "raw_image_guidance")
    assert not hasattr(cfg.decoder.input_blocks, "count")
    assert not hasattr(featlift.config, "ATTENDER_SIZES")


def test_configs_are_frozen():
    cfg = get_variant("dinov2_s14").config
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.attender = 9
