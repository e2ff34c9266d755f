"""The issue's calibrated check (marked ``slow``, about 5 minutes on 2 CPU cores): 256 synthetic 224 px
images, random-init vit_small_patch14_dinov2, 150 steps. On held-out images, upsampling the 112 px
image's features once must give at most 0.85x the error of bilinear upsampling."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from .test_training import REPO, TIMM_NAME, _shapes

pytestmark = pytest.mark.slow


def test_calibrated_check(tmp_path):
    import timm

    torch.manual_seed(0)
    save_file(timm.create_model(TIMM_NAME, pretrained=False).state_dict(), str(tmp_path / "vit.safetensors"))
    _shapes(tmp_path / "images", 256, size=224)
    cmd = [sys.executable, "-m", "featlift.cli", "train", "--backbone", TIMM_NAME, "--data", str(tmp_path / "images")]
    cmd += ["--out", str(tmp_path / "out"), "--image-size", "224", "--depths", "2", "--batch-size", "8"]
    cmd += ["--steps", "150", "--lr", "1e-3", "--seed", "0", "--backbone-weights", str(tmp_path / "vit.safetensors")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    heldout = json.loads((tmp_path / "out" / "metrics.json").read_text())["heldout"]["depth1"]
    print(heldout)
    assert heldout["ratio"] <= 0.85, heldout


def test_a_clip_backbone_trains_and_records_its_normalisation(tmp_path):
    _shapes(tmp_path / "images", 6, size=128)
    cmd = [sys.executable, "-m", "featlift.cli", "train", "--backbone", "vit_base_patch16_clip_224.openai"]
    cmd += ["--no-pretrained-backbone", "--data", str(tmp_path / "images"), "--out", str(tmp_path / "out")]
    cmd += ["--image-size", "128", "--depths", "2", "--batch-size", "2", "--steps", "2"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    backbone = json.loads((tmp_path / "out" / "config.json").read_text())["backbone"]
    assert backbone["channels"] == 768 and backbone["patch"] == 16
    assert backbone["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
