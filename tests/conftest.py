from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

FIXTURES = Path(__file__).parent / "fixtures" / "uplift_reference"
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
