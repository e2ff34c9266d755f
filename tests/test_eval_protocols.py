"""featlift.eval protocols: the named settings and their sources, the schedules worked by hand, the
training flip, and the hub: upsamplers' guidance statistics and trust."""

from __future__ import annotations

import math
import textwrap

import pytest
import torch
import torch.nn.functional as F

from featlift import LoadOptions
from featlift.config import IMAGENET_MEAN, IMAGENET_STD
from featlift.errors import ConfigError
from featlift.eval.datasets import flip_batch
from featlift.eval.probe import evaluate_probe, train_probe
from featlift.eval.protocols import PROTOCOLS, lr_factor, protocol, task_default
from featlift.eval.upsamplers import FeatureSource, make_source

from .conftest import TIMM_NAME

RANDOM = LoadOptions(pretrained=False)


# ----------------------------------------------------------------------------------------------
# the protocols as data
# ----------------------------------------------------------------------------------------------


def test_the_defaults_are_the_published_protocols():
    seg, depth, video = task_default("seg"), task_default("depth"), task_default("video")
    assert seg.name == "naf" and (seg.lr, seg.weight_decay, seg.betas) == (5e-4, 1e-5, (0.9, 0.999))
    assert (seg.epochs, seg.batch_size, seg.flip, seg.probe_dtype) == (20, 2, 0.5, "float32")
    assert (seg.schedule, seg.ade20k_classes, seg.coco_images, seg.image_size) == ("cosine-steps", 151, "curated", 448)
    assert depth.name == "probe3d" and (depth.bins, depth.min_depth, depth.max_depth) == (256, 0.001, 10.0)
    assert (depth.epochs, depth.batch_size, depth.warmup_epochs, depth.schedule) == (10, 8, 1.5, "warmup-cosine")
    assert (depth.sig_weight, depth.sig_lambda, depth.gradient_weight) == (10.0, 0.85, 0.5)
    assert video.name == "dino" and (video.temperature, video.topk, video.context, video.radius) == (0.1, 5, 7, 12)


def test_every_setting_of_every_protocol_has_a_value_and_a_source():
    for p in PROTOCOLS.values():
        record = p.record()
        assert record["name"] == p.name and record["task"] == p.task and record["summary"]
        assert set(record["settings"]) == set(p.settings())
        for key, entry in record["settings"].items():
            assert set(entry) == {"value", "source"} and entry["source"], (p.name, key)
    naf = protocol("naf", "seg").record()["settings"]
    assert naf["weight_decay"]["source"] == "PaulCouairon/JAFAR@94d4d54: config/optimizer/adamw.yaml"
    assert naf["schedule"]["source"].startswith("valeoai/NAF@ad4e24d")


def test_a_changed_setting_is_recorded_as_the_users_and_bad_ones_are_refused():
    naf = protocol(None, "seg")
    changed = naf.with_settings(lr=1e-3, epochs=20, seed=None)
    assert changed.name == "naf" and changed.lr == 1e-3 and changed.seed == 0
    settings = changed.record()["settings"]
    assert settings["lr"] == {"value": 1e-3, "source": "set by the user"}
    assert settings["epochs"]["source"] == naf.source("epochs")  # the same value keeps its source
    with pytest.raises(ConfigError, match=r"no setting \['temperature'\]"):
        naf.with_settings(temperature=0.2)
    with pytest.raises(ConfigError, match="flip: a probability"):
        naf.with_settings(flip=1.5)
    with pytest.raises(ConfigError, match="schedule: one of"):
        naf.with_settings(schedule="linear")
    with pytest.raises(ConfigError, match="not a depth protocol; choose one of \\['probe3d', 'l1'\\]"):
        protocol("naf", "depth")


def test_the_schedules_by_hand():
    # NAF: one cosine over all 4 x 10 = 40 steps: 1 at step 0, 1/2 at step 20, (1 + cos(pi/4)) / 2 at 10
    assert lr_factor("cosine-steps", 0, 10, 4) == 1.0
    assert lr_factor("cosine-steps", 20, 10, 4) == pytest.approx(0.5)
    assert lr_factor("cosine-steps", 10, 10, 4) == pytest.approx((1 + math.sqrt(0.5)) / 2)
    # AnyUp: constant within an epoch, cos over epochs: epoch 2 of 4 -> 1/2
    assert lr_factor("cosine-epochs", 25, 10, 4) == lr_factor("cosine-epochs", 20, 10, 4) == pytest.approx(0.5)
    # JAFAR as published: T_max = epochs (4) counted in steps: 0 at step 4, back to 1 at step 8
    assert lr_factor("cosine-jafar", 4, 10, 4) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor("cosine-jafar", 8, 10, 4) == pytest.approx(1.0)
    # probe3d: 10 steps an epoch, warm-up 1.5 epochs = 15 steps from 0.01 to 1, then a quarter cosine to 0.01
    assert lr_factor("warmup-cosine", 0, 10, 10, 1.5) == pytest.approx(0.01)
    assert lr_factor("warmup-cosine", 5, 10, 10, 1.5) == pytest.approx(0.99 * 5 / 15 + 0.01)
    assert lr_factor("warmup-cosine", 15, 10, 10, 1.5) == pytest.approx(1.0)
    assert lr_factor("warmup-cosine", 100, 10, 10, 1.5) == pytest.approx(0.01)
    assert lr_factor("warmup-cosine", 57.5, 10, 10, 1.5) == pytest.approx(0.99 * math.cos(math.pi / 4) + 0.01)
    assert lr_factor("constant", 99, 10, 10) == 1.0


# ----------------------------------------------------------------------------------------------
# the training flip: image, label and guidance alike
# ----------------------------------------------------------------------------------------------


def test_flip_batch_flips_image_and_target_together():
    images = torch.arange(2 * 3 * 2 * 3, dtype=torch.float32).view(2, 3, 2, 3)
    target = torch.tensor([[[0, 1, 2], [3, 4, 5]]] * 2)
    always = flip_batch(images, target, 1.0, torch.Generator().manual_seed(0))
    never = flip_batch(images, target, 0.0, torch.Generator().manual_seed(0))
    assert always[2] and torch.equal(always[0][0, 0, 0], torch.tensor([2.0, 1.0, 0.0]))
    assert always[1][0].tolist() == [[2, 1, 0], [5, 4, 3]]
    assert not never[2] and torch.equal(never[0], images) and torch.equal(never[1], target)


class _Halves:
    """Left half red (class 1), right half blue (class 2): a flip of the image alone would swap the classes."""

    num_classes, ignore_index, class_names, task = 3, 255, ["background", "red", "blue"], "seg"

    def __init__(self, n: int) -> None:
        image = torch.full((3, 8, 8), 0.1)
        image[0, :, :4] = 1.0
        image[2, :, 4:] = 1.0
        image[:, :, 3] = 0.5  # an asymmetric column: column 3 (left) is grey, column 4 (right) is not
        label = torch.full((8, 8), 2, dtype=torch.int64)
        label[:, :4] = 1
        label[:, 3] = 0
        self.items = [{"image": image.clone(), "label": label.clone(), "id": f"i{i}"} for i in range(n)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class _Recorder(FeatureSource):
    """Features = the image; records every image it is given (the guidance an upsampler would see)."""

    name, channels, device = "recorder", 3, torch.device("cpu")

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def features(self, images):
        self.seen.append(images.clone())
        return images.float()


def test_the_probe_flips_image_label_and_guidance_alike():
    from featlift.eval.metrics import SegmentationMetric

    data = _Halves(4)
    source = _Recorder()
    always = protocol(None, "seg").with_settings(flip=1.0, epochs=40, lr=5e-2, batch_size=2)
    probe = train_probe(source, data, task="seg", protocol=always)
    original = data[0]["image"]
    assert all(torch.equal(seen[0], original.flip(-1)) for seen in source.seen)  # the source saw it flipped
    result, _ = evaluate_probe(source, probe, _Halves(2), task="seg", metric=SegmentationMetric(3, 255))
    assert result["miou"] > 0.99  # learnt on flipped pairs, right on unflipped ones: the label was flipped too

    # with p = 0.5 the draws follow the seed: some batches flipped, some not, the same every run
    half = always.with_settings(flip=0.5, epochs=8)
    runs = []
    for _ in range(2):
        recorder = _Recorder()
        train_probe(recorder, data, task="seg", protocol=half)
        runs.append([bool(torch.equal(seen[0], original.flip(-1))) for seen in recorder.seen])
    assert runs[0] == runs[1] and 0 < sum(runs[0]) < len(runs[0])


# ----------------------------------------------------------------------------------------------
# hub: upsamplers get ImageNet-normalised guidance, and run only trusted code
# ----------------------------------------------------------------------------------------------


def _hub_repo(tmp_path):
    repo = tmp_path / "guided"
    repo.mkdir()
    (repo / "hubconf.py").write_text(
        textwrap.dedent(
            """
            import torch.nn.functional as F
            from torch import nn

            dependencies = ["torch"]


            class Guided(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.seen = []

                def forward(self, image, lowres, output_size):
                    self.seen.append(image.clone())
                    return F.interpolate(lowres, size=output_size, mode="bilinear", align_corners=False)


            def guided(**kwargs):
                return Guided()
            """
        )
    )
    return repo


def test_hub_upsamplers_get_imagenet_statistics_whatever_the_backbone(tmp_path):
    repo = _hub_repo(tmp_path)
    source = make_source(f"hub:{repo}:guided", backbone=TIMM_NAME, options=RANDOM)
    clip = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
    source.backbone.normalise = lambda x: (
        (x - torch.tensor(clip[0]).view(1, 3, 1, 1)) / torch.tensor(clip[1]).view(1, 3, 1, 1)
    )  # a CLIP-like backbone: the guidance must still be ImageNet's
    images = torch.rand(1, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    source.features(images)
    seen = source.upsample.seen[-1]
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(seen, (images - mean) / std)
    # a Python callable keeps the backbone's statistics unless asked
    got = []

    def callable_up(image, lowres, size):
        got.append(image)
        return F.interpolate(lowres, size=size, mode="bilinear", align_corners=False)

    plain = make_source(callable_up, backbone=TIMM_NAME, options=RANDOM)
    plain.features(images)
    torch.testing.assert_close(got[-1], plain.backbone.normalise(images))
    with pytest.raises(ValueError, match="guidance must be one of"):
        make_source(callable_up, backbone=TIMM_NAME, options=RANDOM, guidance="clip")


def test_a_github_hub_repo_is_trusted_only_when_asked(monkeypatch):
    calls = []

    def fake_load(repo, entry, **kwargs):
        calls.append(kwargs)
        return lambda image, lowres, size: F.interpolate(lowres, size=size, mode="bilinear", align_corners=False)

    monkeypatch.setattr(torch.hub, "load", fake_load)
    make_source("hub:someone/upsampler:model", backbone=TIMM_NAME, options=RANDOM)
    make_source("hub:someone/upsampler:model", backbone=TIMM_NAME, options=RANDOM, trust_repo=True)
    assert [c["trust_repo"] for c in calls] == ["check", True]  # "check": torch.hub asks unless trusted before
    assert all(c["source"] == "github" for c in calls)


def test_the_command_line_refuses_another_tasks_setting(tmp_path, capsys):
    from featlift.cli import main

    argv = ["eval", "seg", "--dataset", "voc", "--root", str(tmp_path), "--upsampler", "bilinear"]
    assert main([*argv, "--temperature", "0.2"]) == 1
    assert "no setting ['temperature']" in capsys.readouterr().err
    assert main([*argv, "--protocol", "probe3d"]) == 1
    assert "'probe3d' is not a seg protocol" in capsys.readouterr().err
