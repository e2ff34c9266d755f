"""Every backbone source, offline, with random-initialised models built from configs: names, tokens reshaped
to the right grid (checked index by index), prefix tokens dropped, the right normalisation, any image size
that is a multiple of the stride, the stated stride checked against the output, weights, clear errors; and
the derived-stride rule."""

from __future__ import annotations

import dataclasses
import sys

import pytest
import torch
from safetensors.torch import save_file

import featlift
from featlift._registry import get_variant
from featlift.backbones import (
    BACKBONE_CLASSES,
    HubBackbone,
    ModuleBackbone,
    OpenClipBackbone,
    TimmBackbone,
    TransformersBackbone,
    UserModule,
    create_backbone,
    load_backbone,
    parse_backbone,
)
from featlift.config import BACKBONE_SOURCES, BackboneConfig, UpliftConfig
from featlift.errors import CheckpointError, ConfigError, MissingDependencyError, UnknownModelError

from . import zoo

OPENAI = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


def _image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _assert_grid(features: torch.Tensor, tokens: torch.Tensor, prefix: int, size: tuple[int, int]) -> None:
    """features[:, :, r, c] is patch token prefix + r * w + c: the row-major layout, prefix dropped."""
    h, w = size
    assert features.shape == (tokens.shape[0], tokens.shape[2], h, w)
    for r in range(h):
        for c in range(w):
            assert torch.allclose(features[:, :, r, c], tokens[:, prefix + r * w + c], atol=1e-5), (r, c)


# -- names and the table ------------------------------------------------------------------------------


def test_the_table_serves_every_config_source_and_each_class_names_an_example():
    assert tuple(BACKBONE_CLASSES) == BACKBONE_SOURCES
    for source, cls in BACKBONE_CLASSES.items():
        assert cls.source == source and cls.example, source


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("open_clip:ViT-B-16/openai", ("open_clip", "ViT-B-16/openai")),
        ("transformers:facebook/dinov2-small", ("transformers", "facebook/dinov2-small")),
        ("timm:resnet50.a1_in1k", ("timm", "resnet50.a1_in1k")),
        ("hub:NVlabs/RADIO:radio_model", ("hub", "NVlabs/RADIO:radio_model")),
        ("diffusers:org/pipe", ("diffusers", "org/pipe")),
        ("vit_small_patch14_dinov2.lvd142m", ("timm", "vit_small_patch14_dinov2.lvd142m")),  # bare: timm
        ("hf-hub:timm/vit_small_patch14_dinov2.lvd142m", ("timm", "hf-hub:timm/vit_small_patch14_dinov2.lvd142m")),
    ],
)
def test_names_read_source_colon_name_and_a_bare_name_is_timm(text, want):
    assert parse_backbone(text) == want


def test_bad_names_say_what_to_write():
    with pytest.raises(ConfigError, match="names no model after open_clip:, e.g. open_clip:ViT-B-16/openai"):
        parse_backbone("open_clip:")
    with pytest.raises(ConfigError, match="your own module is given in Python.*UserModule"):
        parse_backbone("module:mine")
    with pytest.raises(ConfigError, match="expected SOURCE:NAME"):
        parse_backbone("  ")


# -- timm: ViTs and convolutional networks --------------------------------------------------------------


@pytest.mark.parametrize(("stride", "channels"), [(8, 48), (16, 192), (32, 96), (None, 96)])
def test_timm_conv_net_gives_the_stage_at_the_stated_stride(stride, channels):
    import timm

    backbone = create_backbone("timm:test_resnet", stride=stride, pretrained=False)
    assert isinstance(backbone, TimmBackbone) and not backbone.tokens
    assert backbone.patch == (stride or 32) and backbone.channels == channels
    assert backbone.normalisation == ((0.5,) * 3, (0.5,) * 3), "timm's pretrained config for the name"
    index = [f["reduction"] for f in timm.create_model("test_resnet").feature_info].index(backbone.patch)
    oracle = timm.create_model("test_resnet", features_only=True, out_indices=(index,)).eval()
    oracle.load_state_dict(backbone.model.state_dict())
    for h, w in ((2, 3), (4, 1)):  # any multiple of the stride
        image = _image(h * backbone.patch, w * backbone.patch)
        with torch.no_grad():
            out = backbone(image)
        assert out.shape == (1, channels, h, w)
        assert torch.equal(out, oracle(image)[0])


def test_timm_strides_are_checked():
    with pytest.raises(
        ConfigError, match=r"no feature stage at stride 14; its stages have strides \[2, 4, 8, 16, 32\]"
    ):
        create_backbone("timm:test_resnet", stride=14, pretrained=False)
    with pytest.raises(ConfigError, match="stride 8 was asked for, but the timm model 'test_vit' has stride 16"):
        create_backbone("test_vit", stride=8, pretrained=False)
    vit = create_backbone("test_vit", stride=16, pretrained=False)
    assert vit.tokens and vit.patch == 16 and vit.channels == 64
    assert vit(_image(32, 80)).shape == (1, 64, 2, 5)


@pytest.mark.slow
def test_timm_swin_takes_any_multiple_of_its_stride_in_nchw():
    backbone = create_backbone("swin_tiny_patch4_window7_224", stride=16, pretrained=False)
    assert backbone.patch == 16 and backbone.channels == 384
    for h, w in ((3, 5), (7, 2)):
        assert backbone(_image(16 * h, 16 * w)).shape == (1, 384, h, w)


def test_a_timm_model_that_does_not_build_on_the_meta_device_is_laid_out_on_the_cpu(monkeypatch):
    from types import SimpleNamespace

    from featlift.backbones import timm_models

    def no_meta(kind):
        raise RuntimeError(f"no {kind} device here")

    monkeypatch.setattr(timm_models, "torch", SimpleNamespace(device=no_meta))
    backbone = create_backbone("timm:test_resnet", stride=16, pretrained=False)
    assert (backbone.patch, backbone.channels) == (16, 192)


def test_the_stated_stride_is_checked_against_the_output():
    """Negative control: a backbone whose stride or channels are stated wrongly fails its check."""
    backbone = create_backbone("timm:test_resnet", stride=16, pretrained=False)
    assert backbone.verify() is backbone
    backbone.patch = 32
    with pytest.raises(ConfigError, match=r"returned features of shape \(1, 192, 4, 6\) for a 64x96 image.*imply"):
        backbone.verify()
    backbone.patch, backbone.channels = 16, 100
    with pytest.raises(ConfigError, match=r"stated stride 16 and 100 channels imply \(1, 100, 2, 3\)"):
        backbone.verify()


def test_a_saved_timm_conv_config_rebuilds_its_stage():
    config = BackboneConfig(channels=192, patch=16, name="test_resnet", source="timm")
    backbone = load_backbone(config, pretrained=False)
    assert (backbone.patch, backbone.channels) == (16, 192)
    with pytest.raises(ConfigError, match="records 100 channels but the timm model 'test_resnet' gives 192"):
        load_backbone(dataclasses.replace(config, channels=100), pretrained=False)


# -- transformers --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    zoo.transformers_configs()  # skips without transformers
    root = tmp_path_factory.mktemp("hf")
    return {kind: zoo.save_transformers_model(kind, root / kind) for kind in zoo.transformers_configs()}


# kind -> (prefix tokens, whether featlift applies a final norm the model leaves off)
TOKEN_KINDS = {
    "dinov2": (1, False),
    "dinov2_registers": (5, False),
    "dinov3": (5, False),
    "clip": (1, True),
    "siglip": (0, False),
}


@pytest.mark.parametrize("kind", sorted(TOKEN_KINDS))
def test_transformers_tokens_become_the_grid_with_the_prefix_dropped(kind, hf_models):
    backbone = create_backbone(f"transformers:{hf_models[kind]}")
    assert isinstance(backbone, TransformersBackbone)
    prefix, post_norm = TOKEN_KINDS[kind]
    assert backbone.prefix_tokens == prefix
    assert backbone.normalisation == zoo.HF_STATS, "the image processor config's statistics"
    p = backbone.patch
    for size in ((2, 3), (3, 1)):  # interpolated position embeddings: any multiple of the patch
        image = backbone.normalise(_image(size[0] * p, size[1] * p))
        with torch.no_grad():
            out = backbone(image)
            kwargs = backbone.reader.kwargs
            tokens = backbone.tower(pixel_values=image, **kwargs).last_hidden_state
            if post_norm:
                tokens = backbone.tower.post_layernorm(tokens)
        assert tokens.shape[1] == prefix + size[0] * size[1], "the prefix count is the model's"
        _assert_grid(out, tokens, prefix, size)


def test_transformers_sam_runs_any_size_and_equals_the_model_at_its_own(hf_models):
    import transformers

    backbone = create_backbone(f"transformers:{hf_models['sam']}")
    assert (backbone.patch, backbone.channels) == (16, 24)
    model = transformers.AutoModel.from_pretrained(hf_models["sam"]).eval()
    image = _image(64, 64)
    with torch.no_grad():
        assert torch.allclose(backbone(image), model(pixel_values=image).last_hidden_state, atol=1e-5)
        assert backbone(_image(48, 80)).shape == (1, 24, 3, 5)
        with pytest.raises(ValueError, match="doesn't match model"):  # why featlift runs it itself
            model(pixel_values=_image(48, 80))


def test_transformers_siglip2_gets_the_image_processors_patches(hf_models):
    from transformers.models.siglip2.image_processing_siglip2 import convert_image_to_patches

    backbone = create_backbone(f"transformers:{hf_models['siglip2']}")
    image = _image(32, 48)
    patches = convert_image_to_patches(image[0], 16)[None]
    with torch.no_grad():
        tokens = backbone.tower(
            pixel_values=patches,
            pixel_attention_mask=torch.ones(1, 6, dtype=torch.int32),
            spatial_shapes=torch.tensor([[2, 3]]),
        ).last_hidden_state
        out = backbone(image)
    _assert_grid(out, tokens, 0, (2, 3))


def test_transformers_statistics_weights_and_errors(hf_models, tmp_path):
    folder = zoo.save_transformers_model("dinov2", tmp_path / "plain", stats=None)
    assert TransformersBackbone.published_normalisation(str(folder)) is None, "no processor config: unknown"
    (folder / "preprocessor_config.json").write_text('{"do_normalize": false}')
    assert create_backbone(f"transformers:{folder}").normalisation == ((0.0,) * 3, (1.0,) * 3)
    with pytest.raises(ConfigError, match="stride 16 was asked for, but the transformers model .* has stride 14"):
        create_backbone(f"transformers:{hf_models['dinov2']}", stride=16)
    # weights= is a folder loaded instead of the name; pretrained=False is a random model of the same config
    torch.manual_seed(5)
    loaded = create_backbone("transformers:label-only", weights=hf_models["dinov2"])
    named = create_backbone(f"transformers:{hf_models['dinov2']}")
    image = _image(28, 42)
    assert torch.equal(loaded(image), named(image)) and loaded.name == "label-only"
    bare = zoo.save_transformers_model("dinov2", tmp_path / "bare", stats=None)  # weights without statistics
    assert create_backbone(f"transformers:{hf_models['dinov2']}", weights=bare).normalisation == zoo.HF_STATS
    random = create_backbone(f"transformers:{hf_models['dinov2']}", pretrained=False)
    assert not torch.equal(random(image), named(image))
    with pytest.raises(featlift.DownloadError, match="could not load .*HF_HUB_OFFLINE=1"):
        create_backbone(f"transformers:{tmp_path / 'absent'}")


# -- open_clip -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def open_clip_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("open_clip")
    zoo.register_open_clip_configs(root / "configs")
    return root


def test_open_clip_vit_tokens_after_ln_post_with_the_class_token_dropped(open_clip_models):
    import open_clip

    backbone = create_backbone("open_clip:featlift-test-vit", pretrained=False)
    assert isinstance(backbone, OpenClipBackbone) and backbone.kind == "vit"
    assert (backbone.patch, backbone.channels) == (16, 32) and backbone.normalisation == OPENAI
    visual = backbone.visual
    image = backbone.normalise(_image(64, 64))
    with torch.no_grad():
        out = backbone(image)
        # open_clip's own reading at the tower's native size: ln_post on every token, the class dropped
        own = visual.forward_intermediates(image, indices=1, normalize_intermediates=True, intermediates_only=True)
        assert torch.allclose(out, own["image_intermediates"][0], atol=1e-5)
        # and by hand: the class token is the first
        x = visual.conv1(image).flatten(2).transpose(1, 2)
        x = torch.cat([visual.class_embedding.view(1, 1, -1), x], 1) + visual.positional_embedding
        tokens = visual.ln_post(visual.transformer(visual.ln_pre(x)))
        _assert_grid(out, tokens, 1, (4, 4))
        assert backbone(_image(32, 80)).shape == (1, 32, 2, 5), "position embeddings interpolated"
    assert isinstance(open_clip.create_model("featlift-test-vit").visual, type(visual))


def test_open_clip_timm_tower_gets_dynamic_sizes_as_timm_builds_them(open_clip_models):
    import timm

    backbone = create_backbone("open_clip:featlift-test-timm", pretrained=False)
    assert backbone.kind == "timm_vit" and (backbone.patch, backbone.channels) == (16, 64)
    oracle = timm.create_model("test_vit", dynamic_img_size=True, num_classes=0, global_pool="map").eval()
    oracle.load_state_dict(backbone.visual.trunk.state_dict())
    image = _image(48, 80)
    with torch.no_grad():
        want = oracle.forward_intermediates(image, indices=1, norm=True, intermediates_only=True)[0]
        assert torch.allclose(backbone(image), want, atol=1e-6) and want.shape == (1, 64, 3, 5)


def test_a_fixed_size_timm_vit_is_switched_to_dynamic_sizes_as_timm_builds_them():
    """The switch open_clip's timm towers get (SigLIP towers are built for one size)."""
    import timm

    from featlift.backbones.timm_models import dynamic_sizes

    fixed = timm.create_model("test_vit", dynamic_img_size=False, img_size=64).eval()
    dynamic = timm.create_model("test_vit", dynamic_img_size=True, img_size=64).eval()
    dynamic.load_state_dict(fixed.state_dict())
    image = _image(32, 80)
    with pytest.raises(AssertionError):  # negative control: built for 64 px, it refuses 32x80
        fixed.forward_intermediates(image, indices=1, norm=True, intermediates_only=True)
    dynamic_sizes(fixed)
    with torch.no_grad():
        got = fixed.forward_intermediates(image, indices=1, norm=True, intermediates_only=True)[0]
        want = dynamic.forward_intermediates(image, indices=1, norm=True, intermediates_only=True)[0]
    assert got.shape == (1, 64, 2, 5) and torch.allclose(got, want, atol=1e-6)


def test_open_clip_resnet_tower_gives_its_last_stage(open_clip_models):
    backbone = create_backbone("open_clip:featlift-test-rn", pretrained=False)
    assert backbone.kind == "resnet" and (backbone.patch, backbone.channels) == (32, 256)
    visual = backbone.visual
    image = _image(64, 96)
    with torch.no_grad():
        want = visual.forward_intermediates(image, indices=1, intermediates_only=True)["image_intermediates"][-1]
        assert torch.equal(backbone(image), want) and want.shape == (1, 256, 2, 3)


def test_open_clip_names_statistics_weights_and_errors(open_clip_models, tmp_path):
    assert OpenClipBackbone.published_normalisation("ViT-B-16/openai") == OPENAI
    assert OpenClipBackbone.published_normalisation("ViT-B-16-SigLIP/webli") == ((0.5,) * 3, (0.5,) * 3)
    from featlift.backbones.openclip import split_name

    assert split_name("ViT-B-16/openai") == ("ViT-B-16", "openai")
    assert split_name("hf-hub:timm/ViT-B-16-SigLIP") == ("hf-hub:timm/ViT-B-16-SigLIP", None)
    assert split_name("ViT-B-16") == ("ViT-B-16", None)
    weights = zoo.save_open_clip_tower("featlift-test-vit", tmp_path / "whole.safetensors", seed=3)
    tower_only = zoo.save_open_clip_tower("featlift-test-vit", tmp_path / "tower.safetensors", seed=3, prefix="")
    a = create_backbone("open_clip:featlift-test-vit", weights=weights)
    b = create_backbone("open_clip:featlift-test-vit", weights=tower_only)
    image = _image(32, 48)
    assert torch.equal(a(image), b(image)), "a whole model's visual. keys or the tower's own"
    other = zoo.save_open_clip_tower("featlift-test-timm", tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="do not fit the visual tower of open_clip model 'featlift-test-vit'"):
        create_backbone("open_clip:featlift-test-vit", weights=other)
    with pytest.raises(ConfigError, match="has no pretrained tag, so there are no weights to download"):
        create_backbone("open_clip:featlift-test-vit")
    with pytest.raises(UnknownModelError, match="no pretrained tag 'nonsense' for 'ViT-B-16' .*openai"):
        create_backbone("open_clip:ViT-B-16/nonsense")
    with pytest.raises(UnknownModelError, match="no architecture 'ViT-Nonsense'"):
        create_backbone("open_clip:ViT-Nonsense", pretrained=False)


# -- torch.hub ------------------------------------------------------------------------------------------


def test_hub_adapter_reads_radios_calling_convention(tmp_path):
    repo = zoo.hub_repo(tmp_path / "radio")
    backbone = create_backbone(f"hub:{repo}:radio_model,width=12,prefix=3,version=radio_v2.5-b")
    assert isinstance(backbone, HubBackbone)
    assert (backbone.patch, backbone.channels) == (16, 12) and backbone.normalisation == ((0.0,) * 3, (1.0,) * 3)
    assert backbone.name == f"{repo.resolve()}:radio_model,width=12,prefix=3,version=radio_v2.5-b"
    image = _image(48, 32)
    with torch.no_grad():
        _summary, tokens = backbone.module(image)
        out = backbone(image)
    assert tokens.shape == (1, 3 + 6, 12)
    _assert_grid(out, tokens, 3, (3, 2))
    # the recorded name rebuilds the same model from any working directory
    config = BackboneConfig(channels=12, patch=16, name=backbone.name, source="hub")
    assert torch.equal(load_backbone(config)(image), out)


def test_hub_names_and_contract_errors(tmp_path):
    from featlift.backbones.torch_hub import parse_hub_name, spatial_features

    assert parse_hub_name("NVlabs/RADIO:radio_model,version=radio_v2.5-b,width=8,x=null") == (
        "NVlabs/RADIO",
        "radio_model",
        {"version": "radio_v2.5-b", "width": 8, "x": None},
    )
    assert parse_hub_name("owner/repo:main:entry")[:2] == ("owner/repo:main", "entry")
    with pytest.raises(ConfigError, match="expected REPO:ENTRY"):
        parse_hub_name("just-a-repo")
    with pytest.raises(ConfigError, match="'novalue' in .* is not KEY=VALUE"):
        parse_hub_name("r:e,novalue")
    repo = zoo.hub_repo(tmp_path / "radio")
    with pytest.raises(ConfigError, match="states no stride; the adapter reads it from module.patch_size"):
        create_backbone(f"hub:{repo}:no_stride")
    with pytest.raises(ConfigError, match="entry 'radio_model' .* failed with the keywords {'bogus': 1}.*KEY=VALUE"):
        create_backbone(f"hub:{repo}:radio_model,bogus=1")
    with pytest.raises(ConfigError, match="is neither a folder here .* nor OWNER/NAME"):
        create_backbone(f"hub:{tmp_path / 'absent'}:radio_model")
    grid = torch.arange(12.0).view(1, 2, 2, 3)
    assert torch.equal(spatial_features((None, grid), (2, 3), what="m"), grid)
    with pytest.raises(ConfigError, match=r"returned \(2, 3\); the torch.hub adapter takes"):
        spatial_features(torch.zeros(2, 3), (1, 1), what="m")


# -- your own module ------------------------------------------------------------------------------------


def test_a_user_module_states_stride_channels_and_normalisation_once():
    net = zoo.TinyConvNet()
    user = UserModule(module=net, name="tiny", stride=8, channels=12, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    backbone = create_backbone(user)
    assert isinstance(backbone, ModuleBackbone) and backbone.module is net and not net.training
    assert (backbone.source, backbone.name, backbone.patch, backbone.channels) == ("module", "tiny", 8, 12)
    assert backbone.normalisation == ((0.5,) * 3, (0.25,) * 3)
    image = _image(24, 40)
    assert torch.equal(backbone(image), net(image))
    plain = create_backbone(dataclasses.replace(user, module=lambda x: net(x) * 2))  # any callable
    assert torch.allclose(plain(image), 2 * net(image))
    with pytest.raises(ConfigError, match=r"returned features of shape \(1, 12, 4, 6\) .* stride 16"):
        create_backbone(dataclasses.replace(user, stride=16))
    with pytest.raises(ConfigError, match="channels: must be a positive integer"):
        dataclasses.replace(user, channels=0)
    with pytest.raises(ConfigError, match="mean: needs 3 finite numbers"):
        dataclasses.replace(user, mean=(0.5, 0.5))
    with pytest.raises(ConfigError, match="module: must be callable"):
        dataclasses.replace(user, module="net")


def test_a_saved_user_module_config_asks_for_the_module_by_name():
    config = BackboneConfig(channels=12, patch=8, name="tiny", source="module", mean=(0.5,) * 3, std=(0.25,) * 3)
    with pytest.raises(
        ConfigError, match=r"your own module 'tiny'.*load_upsampler\(dir, backbone=.*name='tiny', stride=8, channels=12"
    ):
        load_backbone(config)


# -- dependencies -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "module", "extra"),
    [
        ("open_clip:ViT-B-16/openai", "open_clip", "open_clip"),
        ("transformers:facebook/dinov2-small", "transformers", "transformers"),
    ],
)
def test_a_missing_library_names_its_extra(name, module, extra, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if it were not installed
    with pytest.raises(MissingDependencyError, match=rf'pip install "featlift\[{extra}\]"'):
        create_backbone(name)


# -- the derived stride rule ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stride", "guidance", "iters"), [(8, 8, 3), (14, 16, 4), (16, 16, 4), (32, 32, 5), (7, 8, 3), (28, 32, 5)]
)
def test_any_stride_reaches_pixel_density_with_guidance_at_every_iteration(stride, guidance, iters):
    assert UpliftConfig.derived_guidance_patch(stride) == guidance
    base = get_variant("dinov2_s14").config
    config = base.for_backbone(BackboneConfig(channels=6, patch=stride, name="x", source="timm"))
    assert config.resolved_guidance_patch == guidance and config.default_iters == iters
    model = featlift.UPLiFT(config).eval()
    image, features = torch.randn(1, 3, 2 * stride, 3 * stride), torch.randn(1, 6, 2, 3)
    guide = model.guidance_image(image)
    assert guide.shape[-2:] == (2 * guidance, 3 * guidance)
    with torch.no_grad():
        steps = model(image, features, return_steps=True)
    assert [s.shape[-2:] for s in steps] == [(2 * 2**i, 3 * 2**i) for i in range(1, iters + 1)]
    assert steps[-1].shape[-2:] == guide.shape[-2:], "the last iteration is at the guidance resolution"


def test_the_published_stride_keeps_the_published_config():
    base = get_variant("dinov2_s14").config
    same = base.for_backbone(dataclasses.replace(base.backbone, name="other"))
    assert same.guidance_patch is None and same.resolved_guidance_patch == 16
    assert dataclasses.replace(same, backbone=base.backbone) == base


# -- export with the backbone in the graph --------------------------------------------------------------


def _spec(kind: str, root):
    if kind == "timm":
        return "timm:test_resnet"
    if kind == "open_clip":
        zoo.register_open_clip_configs(root / "open_clip")
        return "open_clip:featlift-test-vit"
    if kind == "transformers":
        return f"transformers:{zoo.save_transformers_model('dinov2', root / 'dinov2')}"
    if kind == "hub":
        return f"hub:{zoo.hub_repo(root / 'radio')}:radio_model"
    return UserModule(module=zoo.TinyConvNet(), name="tiny", stride=8, channels=12, mean=(0.5,) * 3, std=(0.25,) * 3)


@pytest.mark.parametrize(
    "kind",  # tracing a library's model takes 10-30 s on a shared CPU: those run in the slow tier
    [*(pytest.param(k, marks=pytest.mark.slow) for k in ("timm", "open_clip", "transformers")), "hub", "module"],
)
def test_every_source_exports_with_its_backbone_and_runs_at_other_sizes(kind, tmp_path):
    from featlift.export import export_pt2

    from .configs import tiny_config

    backbone = create_backbone(_spec(kind, tmp_path), pretrained=False)
    mean, std = backbone.normalisation
    stated = BackboneConfig(backbone.channels, backbone.patch, backbone.name, backbone.source, mean, std)
    torch.manual_seed(1)
    up = featlift.Upsampler(backbone, featlift.UPLiFT(tiny_config().for_backbone(stated)).eval())
    program = torch.export.load(export_pt2(up, tmp_path / "model.pt2", with_backbone=True, iters=1)).module()
    p = backbone.patch
    image = _image(3 * p, 5 * p, seed=4)  # not the traced example's size
    with torch.no_grad():
        normalised = up.normalize(image)
        want = up.uplift(normalised, backbone(normalised), iters=1)
        got = program(image)
    assert got.shape == want.shape == (1, backbone.channels, 6, 10)
    assert torch.allclose(got, want, atol=1e-4)


# -- offline: each library's own Hugging Face download, from the cache ---------------------------------------


def test_library_downloads_work_offline_from_the_cache_and_fail_clearly_without_it(tmp_path):
    """transformers and open_clip fetch through their own Hugging Face paths: with HF_HUB_OFFLINE=1 a
    cached repo loads, a missing one (or open_clip weights missing beside a cached config) is a
    DownloadError naming the fix, not a hang or a silently random model."""
    import json as json_

    import open_clip

    from .conftest import add_to_cache, run_python

    hub = tmp_path / "hf" / "hub"
    folder = zoo.save_transformers_model("dinov2", tmp_path / "dinov2", seed=4)
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        add_to_cache(hub, "featlift-test/tiny-dinov2", name, folder / name)
    vision = {"image_size": 64, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16}
    config = {
        "model_cfg": {"embed_dim": 16, "vision_cfg": vision, "text_cfg": zoo.TEXT_TOWER},
        "preprocess_cfg": {"mean": [0.3, 0.3, 0.3], "std": [0.2, 0.2, 0.2]},
    }
    (tmp_path / "open_clip_config.json").write_text(json_.dumps(config))
    torch.manual_seed(4)
    model = open_clip.CLIP(**config["model_cfg"])
    save_file(model.state_dict(), str(tmp_path / "open_clip_model.safetensors"))
    for name in ("open_clip_config.json", "open_clip_model.safetensors"):
        add_to_cache(hub, "featlift-test/tiny-clip", name, tmp_path / name)
    add_to_cache(hub, "featlift-test/config-only", "open_clip_config.json", tmp_path / "open_clip_config.json")
    code = f"""
        import torch, featlift
        from featlift.backbones import create_backbone
        image = torch.rand(1, 3, 32, 48)
        dino = create_backbone("transformers:featlift-test/tiny-dinov2")
        local = create_backbone("transformers:{folder}")
        assert dino.normalisation == local.normalisation and torch.equal(dino(image), local(image))
        clip = create_backbone("open_clip:hf-hub:featlift-test/tiny-clip")
        assert clip.normalisation == ((0.3,) * 3, (0.2,) * 3), clip.normalisation
        assert torch.equal(clip.visual.conv1.weight, torch.load("{tmp_path / "conv1.pt"}"))
        for name in ("transformers:featlift-test/absent", "open_clip:hf-hub:featlift-test/config-only"):
            try:
                create_backbone(name)
            except featlift.DownloadError as err:
                assert "HF_HUB_OFFLINE=1" in str(err), err
            else:
                raise AssertionError(name + " loaded")
        print("ok")
    """
    torch.save(model.visual.conv1.weight.detach().clone(), tmp_path / "conv1.pt")
    result = run_python(code, tmp_path / "hf")
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
