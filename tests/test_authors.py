"""featlift._authors: the UPLiFT authors' YAML schema (defaults, refused keys, errors) and checkpoint layout."""

from __future__ import annotations

import copy
import dataclasses
import logging

import pytest
import yaml

from featlift import _authors as authors
from featlift._authors import DEFAULTS, convert_state_dict, from_authors_dict, is_authors_layout, read_yaml
from featlift._registry import get_variant
from featlift.backbones import image_normalisation
from featlift.config import (
    BlockGroupConfig,
    DecoderConfig,
    DownConfig,
    RefinerConfig,
    UpConfig,
    UpliftConfig,
)
from featlift.errors import ConfigError

from .conftest import FIXTURES


def _raw(name="dinov2_s14"):
    return yaml.safe_load((FIXTURES / name / "config.yaml").read_text())


def _write(tmp_path, raw):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _read(tmp_path, edit, name="dinov2_s14"):
    raw = copy.deepcopy(_raw(name))
    edit(raw)
    return read_yaml(_write(tmp_path, raw))


# -- the published files ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dinov2_s14", "dinov3_splus16"])
def test_registered_configs_equal_the_published_yaml(name):
    # These two fixture configs are the published files verbatim. The authors' schema states no image
    # normalisation, so the YAML leaves it unstated; it resolves to what the registered config states.
    registered = get_variant(name).config
    published = read_yaml(FIXTURES / name / "config.yaml")
    assert published.backbone.mean is None and published.backbone.std is None
    unstated = dataclasses.replace(registered, backbone=dataclasses.replace(registered.backbone, mean=None, std=None))
    assert unstated == published
    assert image_normalisation(published.backbone) == image_normalisation(registered.backbone)
    assert image_normalisation(published.backbone) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_an_authors_yaml_for_clip_resolves_to_clips_normalisation(tmp_path):
    import timm

    name = "vit_base_patch16_clip_224.openai"
    backbone = _read(
        tmp_path, lambda r: r["backbone"].update(model_type=name, channel=768, patch=16, stride=16)
    ).backbone
    assert (backbone.name, backbone.source, backbone.channels, backbone.patch) == (name, "timm", 768, 16)
    assert backbone.mean is None and backbone.std is None, "the schema states no normalisation: no guess"
    mean, std = image_normalisation(backbone)
    want = timm.models.get_pretrained_cfg(name)
    assert mean == pytest.approx(want.mean) and std == pytest.approx(want.std)
    assert mean != pytest.approx((0.5, 0.5, 0.5)) and mean != pytest.approx((0.485, 0.456, 0.406))


def test_from_authors_dict_equals_read_yaml():
    assert from_authors_dict(_raw("vae_mini")) == read_yaml(FIXTURES / "vae_mini" / "config.yaml")


# -- defaults ---------------------------------------------------------------------------------------------

# Schema field -> the authors' key it is read from, as (DEFAULTS section, key).
_FIELD_TO_KEY = {
    (BlockGroupConfig, "norm"): ("block", "norm"),
    (BlockGroupConfig, "residual"): ("block", "residual"),
    (BlockGroupConfig, "stride"): ("block", "stride"),
    (BlockGroupConfig, "one_by"): ("block", "one_by"),
    (DownConfig, "factor"): ("down", "factor"),
    (DownConfig, "residual"): ("down", "residual"),
    (UpConfig, "factor"): ("up", "factor"),
    (UpConfig, "residual"): ("up", "residual"),
    (DecoderConfig, "noise_channels"): ("decoder", "ncat_c"),
    (DecoderConfig, "noise_scale"): ("decoder", "ncat_s"),
    (DecoderConfig, "guidance_resample"): ("decoder", "enc_resample"),
    (RefinerConfig, "noise_channels"): ("refiner", "ncat_c"),
    (RefinerConfig, "noise_scale"): ("refiner", "ncat_s"),
    (RefinerConfig, "guidance_resample"): ("refiner", "enc_resample"),
    (RefinerConfig, "guidance_index"): ("refiner", "ref_con"),
    (UpliftConfig, "up_factor"): ("uplift", "up_factor"),
    (UpliftConfig, "share_encoder"): ("uplift", "enc_share"),
    (UpliftConfig, "refiner"): ("uplift", "refiner"),
}
# Authors' keys with a default that map to no schema field with a default of its own.
_NOT_SCHEMA_DEFAULTS = {
    ("backbone", "stride"),  # must equal the patch
    ("backbone", "diff_pipe_name"),  # with model_type: BackboneConfig.name and .source
    ("backbone", "model_type"),
    ("uplift", "no_UEP"),  # refused unless it describes what featlift does
    ("decoder", "residual_outc"),  # refused unless null
    ("block", "hc"),  # with the required count: BlockGroupConfig.widths
}


def _default(cls, name):
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def test_every_authors_default_is_accounted_for():
    tabled = {(kind, key) for kind, keys in DEFAULTS.items() for key in keys}
    assert tabled == set(_FIELD_TO_KEY.values()) | _NOT_SCHEMA_DEFAULTS


@pytest.mark.parametrize(("field", "key"), list(_FIELD_TO_KEY.items()), ids=lambda x: ".".join(map(str, x)))
def test_schema_defaults_never_disagree_with_the_authors(field, key):
    cls, name = field
    default = _default(cls, name)
    authors_default = DEFAULTS[key[0]][key[1]]
    assert default is dataclasses.MISSING or default == authors_default, (
        f"{cls.__name__}.{name} defaults to {default!r} but the authors' {key[1]} defaults to {authors_default!r}: "
        "make the field required"
    )


@pytest.mark.parametrize(
    ("cls", "name"),
    [
        (UpConfig, "residual"),
        (DecoderConfig, "guidance_resample"),
        (RefinerConfig, "guidance_resample"),
        (UpliftConfig, "share_encoder"),
    ],
)
def test_fields_whose_authors_default_is_not_featlifts_are_required(cls, name):
    assert _default(cls, name) is dataclasses.MISSING


def _minimal_raw():
    """A config that states only what the authors' schema requires."""
    return {
        "backbone": {"channel": 6, "patch": 16},
        "uplift": {
            "attender": 9,
            "encoder": {
                "down_steps": 1,
                "block_0": {"block": "SingleConv", "count": 1, "hc": [4]},
                "down_1": {"down_op": "none"},
                "block_1": {"block": "SingleConv", "count": 1, "hc": [8]},
            },
            "decoder": {
                "up_steps": 1,
                "block_0": {"block": "DoubleConv", "count": 1, "hc": [8]},
                "up_1": {"up_op": "tconv"},
                "block_1": {"block": "DoubleConv", "count": 1, "hc": [8]},
            },
            "refiner": {"block_0": {"block": "SingleConv", "count": 1, "hc": [8]}},
        },
    }


def test_omitted_keys_take_the_authors_defaults():
    cfg = from_authors_dict(_minimal_raw())
    assert cfg.share_encoder is False and cfg.up_factor == 2
    assert cfg.backbone.name is None and cfg.backbone.source is None
    stage = cfg.decoder.stages[0]
    assert (stage.up.op, stage.up.factor, stage.up.residual) == ("tconv", 2, "none")
    assert (cfg.decoder.noise_channels, cfg.decoder.noise_scale, cfg.decoder.guidance_resample) == (0, 1.0, "none")
    ref = cfg.refiner
    assert (ref.noise_channels, ref.noise_scale, ref.guidance_resample, ref.guidance_index) == (0, 1.0, "none", None)
    down = cfg.encoder.stages[1].down
    assert (down.op, down.factor, down.residual) == ("none", 1.0, "none")
    group = cfg.encoder.stages[0].blocks
    assert (group.norm, group.residual, group.stride, group.one_by) == ("batch", True, 1, True)


def test_a_group_without_hc_needs_count_zero():
    raw = _minimal_raw()
    raw["uplift"]["refiner"]["block_0"] = {"block": "SingleConv", "count": 0}
    assert from_authors_dict(raw).refiner.blocks.widths == ()
    raw["uplift"]["refiner"]["block_0"] = {"block": "SingleConv", "count": 2}
    with pytest.raises(ConfigError, match="uplift.refiner.block_0.hc: needs at least count=2"):
        from_authors_dict(raw)


def test_the_defaults_table_is_read_only():
    with pytest.raises(TypeError):
        DEFAULTS["up"]["residual"] = "bilinear"  # type: ignore[index]


# -- keys featlift would drop are refused unless they describe what it does -----------------------------------


def test_backbone_stride_equal_to_the_patch_or_absent_is_accepted(tmp_path):
    stated = _read(tmp_path, lambda r: r["backbone"].update(stride=14))
    absent = _read(tmp_path, lambda r: r["backbone"].pop("stride"))
    assert stated == absent == read_yaml(FIXTURES / "dinov2_s14" / "config.yaml")


def test_backbone_stride_other_than_the_patch_is_refused(tmp_path):
    with pytest.raises(ConfigError) as info:
        _read(tmp_path, lambda r: r["backbone"].update(stride=8))
    message = str(info.value)
    assert "backbone.stride: got 8 with patch 14" in message
    assert "token stride equals the patch" in message and "set stride to 14 or remove it" in message
    assert str(tmp_path / "c.yaml") in message


def test_no_uep_true_is_accepted_for_a_diffusers_backbone():
    raw = _raw("vae_mini")
    assert raw["uplift"]["no_UEP"] is True and raw["backbone"]["diff_pipe_name"]
    cfg = read_yaml(FIXTURES / "vae_mini" / "config.yaml")
    assert cfg.backbone.source == "diffusers"
    without = copy.deepcopy(raw)
    del without["uplift"]["no_UEP"]
    assert from_authors_dict(without) == cfg


def test_no_uep_false_or_absent_is_accepted(tmp_path):
    base = read_yaml(FIXTURES / "dinov2_s14" / "config.yaml")
    assert _read(tmp_path, lambda r: r["uplift"].update(no_UEP=False)) == base


def test_no_uep_true_is_refused_for_a_normalised_backbone(tmp_path):
    with pytest.raises(ConfigError) as info:
        _read(tmp_path, lambda r: r["uplift"].update(no_UEP=True))
    message = str(info.value)
    assert "uplift.no_UEP: got true" in message and "only for a diffusers backbone" in message
    assert "cannot be reproduced" in message


def test_no_uep_must_be_a_boolean(tmp_path):
    with pytest.raises(ConfigError, match="uplift.no_UEP: must be true or false, got 'yes please'"):
        _read(tmp_path, lambda r: r["uplift"].update(no_UEP="yes please"), name="vae_mini")


@pytest.mark.parametrize("value", [True, 1, "conv"])
def test_decoder_residual_outc_is_refused(tmp_path, value):
    with pytest.raises(ConfigError) as info:
        _read(tmp_path, lambda r: r["uplift"]["decoder"].update(residual_outc=value))
    message = str(info.value)
    assert f"uplift.decoder.residual_outc: got {value!r}" in message
    assert "does not implement" in message and "remove the key or set it to null" in message


def test_decoder_residual_outc_null_is_accepted(tmp_path):
    cfg = _read(tmp_path, lambda r: r["uplift"]["decoder"].update(residual_outc=None))
    assert cfg == read_yaml(FIXTURES / "dinov2_s14" / "config.yaml")


def test_training_sections_are_ignored(tmp_path):
    def edit(raw):
        raw["train"] = {"lr": 7.0, "anything": [1, 2]}
        raw["data"] = "not even a mapping"

    assert _read(tmp_path, edit) == read_yaml(FIXTURES / "dinov2_s14" / "config.yaml")


def test_other_top_level_keys_are_ignored_with_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger=authors.__name__):
        cfg = _read(tmp_path, lambda r: r.update(trian={"lr": 1}))
    assert cfg == read_yaml(FIXTURES / "dinov2_s14" / "config.yaml")
    assert "trian" in caplog.text


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda r: r["backbone"].update(strides=14), r"backbone: unknown key\(s\) \['strides'\]"),
        (lambda r: r["uplift"].update(noUEP=True), r"uplift: unknown key\(s\) \['noUEP'\]"),
        (lambda r: r["uplift"]["decoder"]["up_1"].update(align=True), r"uplift.decoder.up_1: unknown key"),
        (lambda r: r["uplift"]["encoder"]["block_1"].update(width=3), r"uplift.encoder.block_1: unknown key"),
    ],
)
def test_unknown_keys_inside_sections_are_refused(tmp_path, edit, match):
    with pytest.raises(ConfigError, match=match):
        _read(tmp_path, edit)


# -- errors name the key and the file -----------------------------------------------------------------------


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
        (lambda r: r["uplift"]["decoder"]["block_0"].pop("count"), "uplift.decoder.block_0.count: missing"),
        (lambda r: r["backbone"].pop("patch"), "backbone.patch: missing"),
    ],
)
def test_invalid_yaml_names_the_field_and_the_file(tmp_path, edit, match):
    with pytest.raises(ConfigError, match=match) as info:
        _read(tmp_path, edit)
    assert str(info.value).startswith(f"{tmp_path / 'c.yaml'}: ")


def test_unreadable_yaml_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        read_yaml(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("uplift: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        read_yaml(tmp_path / "bad.yaml")
    (tmp_path / "other.yaml").write_text("model: resnet\n")
    with pytest.raises(ConfigError, match="other.yaml: expected the UPLiFT authors' schema"):
        read_yaml(tmp_path / "other.yaml")


# -- the checkpoint key layout ------------------------------------------------------------------------------


def test_authors_layout_is_recognised(case):
    assert is_authors_layout(case.weights)
    import featlift

    model = featlift.UPLiFT(read_yaml(case.config_path))
    assert not is_authors_layout(model.state_dict())
    assert not is_authors_layout(convert_state_dict(case.weights, model.config))


def test_converted_num_batches_tracked_is_int64(dinov2_case):
    import torch

    cfg = read_yaml(dinov2_case.config_path)
    tracked = {k: v for k, v in dinov2_case.weights.items() if k.endswith("num_batches_tracked")}
    assert tracked and all(v.dtype == torch.float32 for v in tracked.values()), "the published files store float32"
    converted = convert_state_dict(tracked, cfg)
    assert converted and all(v.dtype == torch.int64 for v in converted.values())
