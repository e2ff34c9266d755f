"""Dataset extraction (featlift upsample / featlift.extract): torchrun sharding, same-size batching with
DataLoader workers, storage dtypes, per-tile heads and output sizes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import featlift
from featlift.errors import CheckpointError
from featlift.extract import Job, extract, load_head, plan_jobs
from featlift.extract._plan import batches

from .conftest import FIXTURES
from .test_bf16 import MAX_RELATIVE_ERROR, MIN_COSINE, agreement

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = FIXTURES / "dinov2_s14" / "weights.safetensors"


def _photos(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    shapes = {"a.png": (28, 42), "b.png": (28, 42), "c.jpg": (42, 28), "d/e.png": (28, 42), "d/f.png": (30, 30)}
    for name, (h, w) in shapes.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / name, quality=95)
    return folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return _photos(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def up(backbone_file):
    return featlift.load_upsampler("dinov2_s14", weights=WEIGHTS, backbone_weights=backbone_file, device="cpu")


@pytest.fixture(scope="module")
def up_bf16(backbone_file):
    return featlift.load_upsampler(
        "dinov2_s14", weights=WEIGHTS, backbone_weights=backbone_file, device="cpu", dtype=torch.bfloat16
    )


def _argv(photos, out, backbone_file, *extra):
    argv = ["upsample", str(photos), "--out", str(out), "--model", "dinov2_s14", "--weights", str(WEIGHTS)]
    return [*argv, "--backbone-weights", str(backbone_file), "--device", "cpu", *extra]


def _read(out: Path) -> dict[str, torch.Tensor]:
    return {str(p.relative_to(out)): load_file(str(p))["features"] for p in sorted(out.rglob("*.safetensors"))}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_same_size_images_are_batched_together_in_first_seen_order():
    sizes = [(2, 3), (4, 4), (2, 3), None, (2, 3), (4, 4), (2, 3)]
    assert batches([None] * 7, sizes, 2) == [[0, 2], [4, 6], [1, 5], [3]]
    assert batches([None] * 7, sizes, 10) == [[0, 2, 4, 6], [1, 5], [3]]


def test_cli_outputs_equal_the_in_memory_call_with_batches_and_workers(photos, tmp_path, backbone_file, up):
    from featlift.cli import main

    out = tmp_path / "out"
    assert main(_argv(photos, out, backbone_file, "--batch-size", "3", "--workers", "2")) == 0
    got = _read(out)
    assert sorted(got) == ["a.png.safetensors", "b.png.safetensors", "c.jpg.safetensors", "d/e.png.safetensors",
                           "d/f.png.safetensors"]  # fmt: skip
    for name, feats in got.items():
        with Image.open(photos / name.removesuffix(".safetensors")) as im:
            want = up(im)[0]
        assert feats.dtype == torch.float32 and feats.shape == want.shape
        assert (feats - want).abs().max().item() <= 1e-4, name


def test_save_dtypes_size_and_a_head(photos, tmp_path, backbone_file, up):
    from featlift.cli import main

    full = tmp_path / "f32"
    assert main(_argv(photos, full, backbone_file, "--size", "56x56")) == 0
    reference = _read(full)
    assert all(t.shape == (384, 56, 56) for t in reference.values())
    for dtype, tol in (("float16", 2e-3), ("bfloat16", 2e-2)):
        out = tmp_path / dtype
        assert main(_argv(photos, out, backbone_file, "--size", "56x56", "--save-dtype", dtype)) == 0
        for name, t in _read(out).items():
            assert t.dtype == getattr(torch, dtype)
            assert (t.float() - reference[name]).abs().max().item() <= tol * reference[name].abs().max().item()
        ratio = (out / "a.png.safetensors").stat().st_size / (full / "a.png.safetensors").stat().st_size
        assert 0.49 < ratio < 0.51

    gen = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(5, 384, generator=gen) / 20, torch.randn(5, generator=gen)
    head_file = tmp_path / "pca.safetensors"
    save_file({"weight": weight[:, :, None, None].contiguous(), "bias": bias}, str(head_file))
    out = tmp_path / "head"
    assert main(_argv(photos, out, backbone_file, "--head", str(head_file), "--tile", "2")) == 0
    for name, t in _read(out).items():
        with Image.open(photos / name.removesuffix(".safetensors")) as im:
            feats = up(im)[0]
        want = torch.einsum("kc,chw->khw", weight, feats) + bias[:, None, None]
        assert t.shape == want.shape and (t - want).abs().max().item() <= 1e-3 * want.abs().max().item(), name


def _stored(path: Path) -> tuple[torch.Tensor, dict[str, str]]:
    with safe_open(str(path), "pt") as f:
        return f.get_tensor("features"), f.metadata()


def test_cli_computes_in_bfloat16_and_stores_what_it_computed(photos, tmp_path, backbone_file, up, up_bf16, attended):
    """--dtype bfloat16: the attender runs on bfloat16 weights and inputs; each file holds, by default in
    bfloat16 (half float32's bytes, nothing lost), exactly what the library's bfloat16 model returns, which
    is not float32's result rounded, and agrees with float32. With a head (applied in float32 per tile) the
    files hold float32 probabilities of the same bfloat16 features."""
    from featlift.cli import main

    names = ["a.png", "d/f.png"]  # 28x42 and 30x30 pixels (own size: resized from the native grid)
    argv = ["upsample", *(str(photos / name) for name in names), "--model", "dinov2_s14", "--weights", str(WEIGHTS)]
    argv += ["--backbone-weights", str(backbone_file), "--device", "cpu", "--dtype", "bfloat16", "--workers", "0"]
    assert main([*argv, "--out", str(tmp_path / "bf16")]) == 0
    assert attended and set(attended) == {(torch.bfloat16,) * 3}
    for name in names:
        got, metadata = _stored(tmp_path / "bf16" / (Path(name).name + ".safetensors"))
        assert got.dtype == torch.bfloat16 and metadata["dtype"] == metadata["compute_dtype"] == "bfloat16"
        with Image.open(photos / name) as im:
            want, full = up_bf16(im)[0], up(im)[0]
        assert torch.equal(got, want) and not torch.equal(got, full.bfloat16()), name
        cosine, relative = agreement(got[None], full[None])
        assert cosine >= MIN_COSINE and relative <= MAX_RELATIVE_ERROR, (name, cosine, relative)

    weight = torch.randn(5, 384, generator=torch.Generator().manual_seed(0)) / 20
    save_file({"weight": weight}, str(tmp_path / "probe.safetensors"))
    attended.clear()
    head = ["--head", str(tmp_path / "probe.safetensors"), "--tile", "1"]
    assert main([*argv, *head, "--out", str(tmp_path / "head")]) == 0
    assert len(attended) == 4 * (6 + 4) and set(attended) == {(torch.bfloat16,) * 3}  # 4 steps, 2x3 + 2x2 tiles
    got, metadata = _stored(tmp_path / "head" / "a.png.safetensors")
    assert got.dtype == torch.float32 and (metadata["dtype"], metadata["compute_dtype"]) == ("float32", "bfloat16")
    with Image.open(photos / "a.png") as im:
        want = torch.einsum("kc,chw->khw", weight, up_bf16(im)[0].float())
    cosine, relative = agreement(got[None], want[None])
    assert cosine >= MIN_COSINE and relative <= MAX_RELATIVE_ERROR, (cosine, relative)


def test_bad_heads_are_refused_with_the_fix(tmp_path):
    path = tmp_path / "h.safetensors"
    save_file({"weight": torch.zeros(3, 10)}, str(path))
    with pytest.raises(CheckpointError, match="maps 10 channels, but this model's features have 384"):
        load_head(path, 384)
    save_file({"proj": torch.zeros(3, 384)}, str(path))
    with pytest.raises(CheckpointError, match=r"no 'weight' tensor \(found \['proj'\]\)"):
        load_head(path, 384)
    save_file({"weight": torch.zeros(3, 384), "bias": torch.zeros(4)}, str(path))
    with pytest.raises(CheckpointError, match=r"'bias' must be \[3\]"):
        load_head(path, 384)
    path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable .safetensors"):
        load_head(path, 384)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_head(tmp_path / "missing.safetensors")
    head = load_head(_saved(tmp_path / "ok.safetensors", weight=torch.eye(2, 3)), 3)
    x = torch.randn(1, 3, 2, 2)
    assert torch.equal(head(x), x[:, :2])


def _saved(path, **tensors):
    save_file(tensors, str(path))
    return path


def test_one_bad_file_in_a_batch_loses_only_itself(tmp_path, backbone_file):
    from featlift.cli import main

    photos = _photos(tmp_path / "photos")
    (photos / "z.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    assert main(_argv(photos, out, backbone_file, "--batch-size", "4")) == 1
    assert len(_read(out)) == 5 and not list(out.rglob("z.png*"))


def test_two_torchrun_processes_write_the_files_of_one(photos, tmp_path, hf_home):
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    common = ["upsample", str(photos), "--model", "dinov2_s14", "--device", "cpu", "--batch-size", "2"]
    common += ["--save-dtype", "float16"]
    one, two = tmp_path / "one", tmp_path / "two"
    single = subprocess.run(
        [sys.executable, "-m", "featlift.cli", *common, "--out", str(one)],
        capture_output=True, text=True, env=env, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port())]
    double = subprocess.run(
        [*cmd, "-m", "featlift.cli", *common, "--out", str(two)],
        capture_output=True, text=True, env=env, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert double.returncode == 0, double.stderr[-3000:]
    assert "wrote features for 5 image(s)" in double.stdout and "by 2 processes" in double.stdout
    a, b = _read(one), _read(two)
    assert sorted(a) == sorted(b) and len(a) == 5
    for name in a:
        assert a[name].dtype == b[name].dtype == torch.float16
        assert (a[name].float() - b[name].float()).abs().max().item() <= 1e-3, name


def test_plan_keeps_one_order_for_every_process(photos, tmp_path):
    jobs = plan_jobs([photos], tmp_path / "out")
    assert [j.source.name for j in jobs] == [j.source.name for j in plan_jobs([photos], tmp_path / "out")]
    assert all(isinstance(j, Job) for j in jobs)


def test_a_failed_write_loses_only_its_image_and_never_hangs(photos, tmp_path, up, monkeypatch):
    """A full disk (safetensors raises its own error type) fails that image; the writer keeps draining."""
    import safetensors.torch
    from safetensors import SafetensorError

    saved = safetensors.torch.save_file

    def flaky(tensors, filename, metadata=None):
        if Path(metadata["source"]).name == "b.png":
            raise SafetensorError("I/O error: No space left on device (os error 28)")
        saved(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", flaky)
    summary = extract(up, [photos], tmp_path / "out", workers=0)
    assert summary.written == 4 and [Path(f).name for f, _ in summary.failed] == ["b.png"]
    assert "No space left" in summary.failed[0][1]


class _OutOfMemoryOnBatches:
    """A stand-in upsampler that runs out of memory on any batch of two or more images while holding that
    batch's activations, and records whether they are still alive when each one-image retry starts."""

    patch = 14
    device = torch.device("cpu")

    def __init__(self) -> None:
        self.activations: weakref.ref | None = None
        self.alive_at_retry: list[bool] = []

    def __call__(self, pixels, output_size, head):
        if pixels.shape[0] > 1:
            activations = torch.zeros(pixels.shape[0], 8, *pixels.shape[-2:])
            self.activations = weakref.ref(activations)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.alive_at_retry.append(self.activations is not None and self.activations() is not None)
        return torch.zeros(1, 4, *output_size)


def test_an_out_of_memory_batch_is_retried_image_by_image_after_its_tensors_are_released(tmp_path):
    """The one-image retries start only once the failed batch's tensors are gone (the error's traceback no
    longer holds them), so on a GPU the retry does not run out of memory again for the same reason."""
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(tmp_path / name)
    up = _OutOfMemoryOnBatches()
    summary = extract(up, [tmp_path], tmp_path / "out", batch_size=2, workers=0)
    assert up.activations is not None  # the batch of two was tried and failed
    assert up.alive_at_retry == [False, False]
    assert summary.written == 2 and summary.failed == []
    assert sorted(_read(tmp_path / "out")) == ["a.png.safetensors", "b.png.safetensors"]


def test_a_decompression_bomb_and_a_half_precision_model_with_a_head(tmp_path, backbone_file, monkeypatch):
    from PIL import Image as PILImage

    photos = _photos(tmp_path / "photos")
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(photos / "huge.png")
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 2000)  # 100x100 is over twice this: PIL refuses it
    up = featlift.load_upsampler(
        "dinov2_s14", weights=WEIGHTS, backbone_weights=backbone_file, device="cpu", dtype=torch.bfloat16
    )
    head = torch.nn.Conv2d(384, 3, 1)
    summary = extract(up, [photos], tmp_path / "out", head=head, workers=0)
    assert summary.written == 5 and [Path(f).name for f, _ in summary.failed] == ["huge.png"]
    assert "DecompressionBomb" in summary.failed[0][1]
    assert all(t.shape[0] == 3 for t in _read(tmp_path / "out").values())


def test_bad_counts_are_refused_before_the_model_loads(photos, tmp_path, backbone_file, capsys):
    from featlift.cli import main

    for flag, value in (("--tile", "0"), ("--iters", "-1"), ("--batch-size", "0"), ("--workers", "-1")):
        with pytest.raises(SystemExit):
            main(_argv(photos, tmp_path / "out", backbone_file, flag, value))
        assert flag in capsys.readouterr().err


def test_the_writer_raises_what_stops_a_save_at_close_and_never_blocks_the_computing_thread(tmp_path):
    """An error that is not one image's failure (a BaseException) comes back from close(); the puts after
    it, more than the queue holds, still return."""
    import threading

    from featlift.extract._storage import Writer

    failed, saved = [], []

    def save(job, tensor, picture):
        if not saved:
            saved.append(job)
            raise KeyboardInterrupt
        saved.append(job)

    jobs = [Job(tmp_path / f"{i}.png", tmp_path / "out" / f"{i}.png") for i in range(6)]
    outcome = []

    def compute():
        writer = Writer(save, lambda job, err: failed.append(err))
        for job in jobs:
            writer.put(job, (torch.zeros(1, 1, 1), None))
        try:
            writer.close()
        except KeyboardInterrupt:
            outcome.append("raised")

    thread = threading.Thread(target=compute, daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive() and outcome == ["raised"]
    assert saved == jobs[:1] and failed == []
