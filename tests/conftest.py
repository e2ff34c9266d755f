from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from featlift.backbones.base import Backbone

FIXTURES = Path(__file__).parent / "fixtures" / "uplift_reference"
REPO = Path(__file__).resolve().parents[1]


def tiny_autoencoder(widths: tuple[int, ...] = (8, 16), sample_size: int = 16):
    """A small seeded diffusers ``AutoencoderKL`` in eval mode (one down block per width, so the patch is
    2 ** (len(widths) - 1)); skips the calling test when diffusers is not installed."""
    diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (pip install 'featlift[vae]')")
    torch.manual_seed(0)
    return diffusers.AutoencoderKL(
        block_out_channels=widths,
        down_block_types=("DownEncoderBlock2D",) * len(widths),
        up_block_types=("UpDecoderBlock2D",) * len(widths),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=sample_size,
    ).eval()


TIMM_NAME = "vit_small_patch14_dinov2.lvd142m"
CASES = ["dinov2_s14", "dinov3_splus16", "vae_mini"]


class Case:
    def __init__(self, name: str) -> None:
        self.name = name
        self.dir = FIXTURES / name
        self.config_path = self.dir / "config.yaml"
        self.weights_path = self.dir / "weights.safetensors"
        self.raw_config = yaml.safe_load(self.config_path.read_text())
        self.weights = load_file(str(self.weights_path))
        self.inputs = load_file(str(self.dir / "inputs.safetensors"))
        self.outputs = load_file(str(self.dir / "outputs.safetensors"))


@pytest.fixture(scope="session", params=CASES)
def case(request) -> Case:
    return Case(request.param)


@pytest.fixture(scope="session")
def dinov2_case() -> Case:
    return Case("dinov2_s14")


@pytest.fixture(scope="session")
def vae_case() -> Case:
    return Case("vae_mini")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


# -- an offline Hugging Face cache ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def backbone_file(tmp_path_factory) -> Path:
    """Random-init weights of the dinov2_s14 backbone, as timm publishes them (a safetensors file)."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(TIMM_NAME, pretrained=False)
    path = tmp_path_factory.mktemp("backbone") / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def add_to_cache(hub: Path, repo: str, filename: str, source: Path) -> None:
    """Put ``source`` into the Hugging Face cache folder ``hub`` as ``filename`` of ``repo`` (branch main)."""
    folder = hub / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    target = folder / "snapshots" / commit / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, target)


@pytest.fixture(scope="session")
def hf_home(tmp_path_factory, backbone_file) -> Path:
    """An offline Hugging Face cache holding the published dinov2 file names (fixture / random weights)."""
    home = tmp_path_factory.mktemp("hf_home")
    hub = home / "hub"
    add_to_cache(
        hub,
        "UPLiFT-upsampler/uplift_dinov2-s14",
        "uplift_dinov2-s14.safetensors",
        FIXTURES / "dinov2_s14" / "weights.safetensors",
    )
    add_to_cache(hub, f"timm/{TIMM_NAME}", "model.safetensors", backbone_file)
    return home


def run_python(code: str, hf_home: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with ``hf_home`` as HF_HOME and HF_HUB_OFFLINE=1."""
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


class ConvBackbone(Backbone):
    """A frozen, seeded random strided conv standing in for a ViT: [B, 3, H, W] -> [B, 6, H / 14, W / 14]."""

    channels_out, patch_size = 6, 14

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, self.channels_out, self.patch_size, stride=self.patch_size)
        self.patch, self.channels = self.patch_size, self.channels_out
        self.freeze()

    def forward(self, image):
        return self.conv(image)


@pytest.fixture
def attended(monkeypatch) -> list[tuple[torch.dtype, torch.dtype, torch.dtype]]:
    """What every Local Attender computes in while the test runs: one (its weights' dtype, the logits'
    dtype, the values' dtype) per call, in call order."""
    from featlift.modeling.attender import LocalAttender

    seen = []
    attend = LocalAttender.attend

    def spy(self, logits, values, **kwargs):
        seen.append((self.to_logits.weight.dtype, logits.dtype, values.dtype))
        return attend(self, logits, values, **kwargs)

    monkeypatch.setattr(LocalAttender, "attend", spy)
    return seen
