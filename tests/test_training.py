"""Training: the objective against a direct computation, a short run that learns and reloads, exact
resume (with noise, after SIGTERM), checkpoint safety, the sampler's order and cost, 2-process DDP on CPU,
and data errors. Random-init small timm ViT, synthetic images, no network."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file

import featlift
from featlift._distributed import Dist
from featlift._feature_cache import FeatureCache
from featlift._registry import get_variant
from featlift.config import BackboneConfig
from featlift.errors import DataError
from featlift.training import TrainConfig, depth_targets, list_images, multi_depth_loss, train
from featlift.training._sampling import StreamSampler

TIMM_NAME = "vit_small_patch14_dinov2"
REPO = Path(__file__).resolve().parents[1]


def _shapes(folder: Path, n: int, size: int = 112, seed: int = 0) -> Path:
    """Random filled ellipses and rectangles, the calibrated check's kind of image."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        im = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 255, 3)))
        draw = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(2, 5))):
            x0, y0 = (int(v) for v in rng.integers(0, size, 2))
            box = [x0, y0, x0 + int(rng.integers(8, size // 2)), y0 + int(rng.integers(8, size // 2))]
            fill = tuple(int(v) for v in rng.integers(0, 255, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
        im.save(folder / f"img{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    import timm

    root = tmp_path_factory.mktemp("train")
    torch.manual_seed(0)
    save_file(timm.create_model(TIMM_NAME, pretrained=False).state_dict(), str(root / "vit.safetensors"))
    _shapes(root / "images", 24)
    return root


def _config(workdir: Path, out: Path, **changes) -> TrainConfig:
    base = {
        "backbone": TIMM_NAME,
        "data": str(workdir / "images"),
        "out": str(out),
        "image_size": 112,
        "depths": 2,
        "batch_size": 4,
        "steps": 4,
        "backbone_weights": str(workdir / "vit.safetensors"),
        "val_fraction": 0.25,
    }
    return TrainConfig(**{**base, **changes})


# -- the objective -----------------------------------------------------------------------------------


class _PatchBackbone(torch.nn.Module):
    """A deterministic stand-in backbone: one strided conv, patch 14, 6 channels."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = torch.nn.Conv2d(3, 6, 14, stride=14)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("kind", ["l2", "l1", "cosine"])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_targets_and_loss_equal_a_direct_computation(kind, depth):
    backbone = _PatchBackbone()
    cfg = dataclasses.replace(get_variant("dinov2_s14").config, backbone=BackboneConfig(channels=6, patch=14))
    model = featlift.UPLiFT(cfg).train()
    images = torch.randn(2, 3, 112, 112)
    targets = depth_targets(backbone, images, depth)
    for k, target in zip(range(depth, -1, -1), targets, strict=True):
        small = F.interpolate(images, scale_factor=1 / 2**k, mode="bilinear", antialias=True) if k else images
        assert torch.allclose(target, backbone(small), atol=1e-6)
        assert target.shape[-1] == 112 // 14 // 2**k
    loss, parts = multi_depth_loss(model, targets, images, kind=kind)
    steps = model(
        F.interpolate(images, size=(112 // 2**depth,) * 2, mode="bilinear", antialias=True),
        targets[0],
        iters=depth,
        return_steps=True,
    )
    direct = []
    for step, target in zip(steps, targets[1:], strict=True):
        if kind == "l2":
            direct.append(((step - target) ** 2).mean())
        elif kind == "l1":
            direct.append((step - target).abs().mean())
        else:
            cos = (step * target).sum(1) / (step.norm(dim=1) * target.norm(dim=1)).clamp_min(1e-8)
            direct.append((1 - cos).mean())
    assert len(parts) == depth
    assert torch.allclose(loss, torch.stack(direct).mean(), atol=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


# -- runs --------------------------------------------------------------------------------------------


def test_short_run_learns_and_reloads(workdir, tmp_path):
    before = train(_config(workdir, tmp_path / "init", steps=0))["heldout"]["depth1"]["uplift"]
    metrics = train(_config(workdir, tmp_path / "run", steps=25))
    after = metrics["heldout"]["depth1"]["uplift"]
    assert after < 0.9 * before, (before, after)

    out = tmp_path / "run"
    assert {"config.json", "model.safetensors", "checkpoint.pt", "metrics.json"} <= {p.name for p in out.iterdir()}
    config = json.loads((out / "config.json").read_text())["backbone"]
    assert config["name"] == TIMM_NAME and config["patch"] == 14 and config["channels"] == 384
    assert config["mean"] == pytest.approx([0.485, 0.456, 0.406]) and config["std"] == pytest.approx(
        [0.229, 0.224, 0.225]
    )

    up = featlift.load_upsampler(str(out), backbone_weights=workdir / "vit.safetensors", device="cpu")
    net = featlift.build_upsampler(str(out))
    image = torch.rand(1, 3, 56, 56)
    with torch.no_grad():
        feats, low = up(image, output_size="native", return_lowres=True)
        norm = (image - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
            [0.229, 0.224, 0.225]
        ).view(1, 3, 1, 1)
        want = net(norm, low)
    assert (feats - want).abs().max().item() <= 1e-4


def test_resume_continues_exactly(workdir, tmp_path):
    train(_config(workdir, tmp_path / "straight", steps=6))
    train(_config(workdir, tmp_path / "split", steps=3))
    train(_config(workdir, tmp_path / "split", steps=6, resume=True))
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # A different seed really gives different parameters (the comparison above can fail).
    train(_config(workdir, tmp_path / "other", steps=6, seed=1))
    c = load_file(str(tmp_path / "other" / "model.safetensors"))
    assert not all(torch.equal(a[k], c[k]) for k in a)


def _noise_channels_base(path: Path) -> Path:
    """dinov2_s14's architecture with two noise channels in the decoder (drawn inside the model)."""
    cfg = get_variant("dinov2_s14").config
    path.write_text(dataclasses.replace(cfg, decoder=dataclasses.replace(cfg.decoder, noise_channels=2)).to_json())
    return path


def test_resume_is_exact_with_feature_noise_and_noise_channels(workdir, tmp_path):
    base = str(_noise_channels_base(tmp_path / "noisy.json"))
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    common = {"base": base, "noise_std": 0.1, "val_fraction": 0.0}
    train(_config(workdir, tmp_path / "straight", steps=6, **common))
    train(_config(workdir, tmp_path / "split", steps=3, **common))
    train(_config(workdir, tmp_path / "split", steps=6, resume=True, **common))
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "3 + 3 resumed steps equal 6 straight ones, bit for bit"
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers, "handlers put back"
    state = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 6 and state["seed"] == 0 and state["global_batch"] == 4 and state["world"] == 1
    assert {"torch", "python", "numpy"} <= set(state["rng"][0])


def test_resume_restores_the_global_rng_states(workdir, tmp_path, monkeypatch):
    """Code that draws from the global generators (torch, ``random``, numpy) during training continues
    its sequence across a resume, as in an uninterrupted run."""
    import random

    from featlift.training import trainer

    draws = []
    real = trainer.multi_depth_loss

    def drawing_loss(*args, **kwargs):
        draws.append((torch.rand(1).item(), random.random(), float(np.random.rand())))
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "multi_depth_loss", drawing_loss)
    cfg = _config(workdir, tmp_path / "straight", steps=4, val_fraction=0.0)
    random.seed(0)
    np.random.seed(0)
    train(cfg)
    straight, draws[:] = draws[:], []
    random.seed(0)
    np.random.seed(0)
    train(dataclasses.replace(cfg, out=str(tmp_path / "split"), steps=2))
    random.seed(1)  # the resumed process starts elsewhere: the checkpoint puts the states back
    np.random.seed(1)
    train(dataclasses.replace(cfg, out=str(tmp_path / "split"), steps=4, resume=True))
    assert len(draws) == len(straight) == 4
    assert draws == straight


def _old_sampler_order(n: int, batch: int, world: int, rank: int, seed: int, start: int, total: int) -> list[int]:
    """The sampler's original formulation: a fresh permutation of n for every single index."""
    out = []
    for step in range(start, total):
        first = step * batch * world + rank * batch
        for position in range(first, first + batch):
            epoch, offset = divmod(position, n)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000003 + epoch))
            out.append(int(perm[offset]))
    return out


@pytest.mark.parametrize(
    ("n", "batch", "world", "start", "total", "window"),
    [(7, 3, 2, 0, 6, None), (10, 2, 3, 1, 9, None), (5, 4, 1, 2, 7, None), (11, 3, 2, 0, 9, 4), (4, 3, 3, 0, 5, 3)],
)
def test_sampler_keeps_the_old_order_with_one_permutation_per_epoch(monkeypatch, n, batch, world, start, total, window):
    seed = 5
    expected = [_old_sampler_order(n, batch, world, rank, seed, start, total) for rank in range(world)]
    if window is not None:  # several look-up windows, some of them across epoch boundaries
        monkeypatch.setattr(StreamSampler, "WINDOW", window)
    built = []
    real = torch.randperm
    monkeypatch.setattr(torch, "randperm", lambda *a, **k: built.append(a[0]) or real(*a, **k))
    for rank in range(world):
        built.clear()
        sampler = StreamSampler(n, batch, Dist(rank=rank, world=world), seed, start, total)
        got = list(sampler)
        assert got == expected[rank], f"rank {rank}"
        assert len(got) == len(sampler) == (total - start) * batch
        g = batch * world
        epochs = {
            p // n
            for step in range(start, total)
            for p in range(step * g + rank * batch, step * g + (rank + 1) * batch)
        }
        assert max(epochs) - min(epochs) >= 2, "the stream crosses at least two epoch boundaries"
        assert len(built) == len(epochs), f"one permutation per epoch, not {len(built)} for {len(epochs)} epochs"


def _train_cli(workdir: Path, out: Path, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "featlift.cli", "train", "--backbone", TIMM_NAME, "--data", str(workdir / "images")]
    cmd += ["--out", str(out), "--image-size", "112", "--depths", "2", "--batch-size", "4", "--steps", "5"]
    cmd += ["--backbone-weights", str(workdir / "vit.safetensors"), "--val-fraction", "0", "--noise", "0.1"]
    return cmd + list(extra)


def test_sigterm_stops_cleanly_with_a_checkpoint_and_resume_matches_an_uninterrupted_run(workdir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "stopped"
    ckpt = out / "checkpoint.pt"
    proc = subprocess.Popen(  # its own process group, signalled as a whole like Ctrl-C or a scheduler does
        _train_cli(workdir, out, "--checkpoint-every", "1", "--workers", "1"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not ckpt.exists():  # the step-1 checkpoint: training is under way
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGTERM)  # the DataLoader worker too
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert f"by SIGTERM; checkpoint written to {ckpt}; rerun with --resume to continue" in stderr
    state = torch.load(ckpt, weights_only=True)
    assert 1 <= state["step"] < 5 and f"interrupted at step {state['step']} " in stderr
    assert not (out / "model.safetensors").exists(), "an interrupted run writes no final model"

    resumed = subprocess.run(_train_cli(workdir, out, "--resume"), capture_output=True, text=True, env=env, cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight = subprocess.run(
        _train_cli(workdir, tmp_path / "straight"), capture_output=True, text=True, env=env, cwd=REPO
    )
    assert straight.returncode == 0, straight.stderr[-3000:]
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


_STOP_ONE_RANK = """
import json, os, signal, sys
from featlift.training import TrainConfig, trainer

real, calls = trainer.multi_depth_loss, []

def loss_then_signal(*args, **kwargs):  # rank 1 alone is signalled, during its second step
    calls.append(1)
    if len(calls) == 2 and os.environ["RANK"] == "1":
        os.kill(os.getpid(), signal.SIGTERM)
    return real(*args, **kwargs)

trainer.multi_depth_loss = loss_then_signal
metrics = trainer.train(TrainConfig(**json.loads(sys.argv[1])))
# One file per process: two processes printing to one pipe can interleave their lines.
report = {"rank": os.environ["RANK"], "interrupted": metrics.get("interrupted")}
with open(sys.argv[2] + "." + os.environ["RANK"], "w") as fh:
    json.dump(report, fh)
"""


def test_a_signal_to_one_ddp_process_stops_every_process_at_the_same_step(workdir, tmp_path):
    script = tmp_path / "stop_one_rank.py"
    script.write_text(_STOP_ONE_RANK)
    cfg = dataclasses.asdict(_config(workdir, tmp_path / "ddp", steps=6, batch_size=2, val_fraction=0.0))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29518",
         str(script), json.dumps(cfg), str(tmp_path / "report")],
        capture_output=True, text=True, env=env, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("report.*"))]
    assert sorted(r["rank"] for r in reports) == ["0", "1"]
    assert all(
        r["interrupted"] == {"step": 2, "signal": "SIGTERM", "checkpoint": str(tmp_path / "ddp" / "checkpoint.pt")}
        for r in reports
    )
    state = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 2 and state["world"] == 2 and len(state["rng"]) == 2


def test_a_crash_while_writing_a_checkpoint_keeps_the_previous_one(workdir, tmp_path, monkeypatch):
    cfg = _config(workdir, tmp_path / "run", steps=2, val_fraction=0.0)
    train(cfg)
    ckpt = tmp_path / "run" / "checkpoint.pt"
    before, names = ckpt.read_bytes(), sorted(p.name for p in ckpt.parent.iterdir())

    def torn_save(obj, f, *args, **kwargs):  # a few bytes reach the disk, then the write fails
        Path(f).write_bytes(b"PK\x03\x04torn")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        train(dataclasses.replace(cfg, steps=3, resume=True))
    monkeypatch.undo()
    assert ckpt.read_bytes() == before
    assert torch.load(ckpt, weights_only=True)["step"] == 2
    assert sorted(p.name for p in ckpt.parent.iterdir()) == names, "no partial or temporary file left behind"


def test_a_bad_checkpoint_names_the_file_and_the_fix(workdir, tmp_path):
    cfg = _config(workdir, tmp_path / "run", steps=1, val_fraction=0.0)
    train(cfg)
    ckpt = tmp_path / "run" / "checkpoint.pt"
    good = ckpt.read_bytes()
    resume = dataclasses.replace(cfg, steps=2, resume=True)
    fix = f"delete {re.escape(str(ckpt))} to start over, or run without --resume"
    for content in (b"", b"not a checkpoint", good[: len(good) // 2]):
        ckpt.write_bytes(content)
        with pytest.raises(featlift.CheckpointError, match=f"^{re.escape(str(ckpt))} .*truncated or corrupt.*{fix}"):
            train(resume)
    torch.save({"model": {}, "step": 1}, ckpt)
    with pytest.raises(featlift.CheckpointError, match=f"lacks optimizer, seed.*{fix}"):
        train(resume)
    ckpt.write_bytes(good)
    with pytest.raises(featlift.CheckpointError, match="seed 0, but this run has seed 1; pass --seed 0"):
        train(dataclasses.replace(resume, seed=1))
    with pytest.raises(featlift.CheckpointError, match="global batch of 4 .* this run's is 2"):
        train(dataclasses.replace(resume, batch_size=2))
    with pytest.raises(featlift.CheckpointError, match=f"does not fit this run's model.*{fix}"):
        train(dataclasses.replace(resume, base=str(_noise_channels_base(tmp_path / "other.json"))))
    train(resume)  # the intact checkpoint still resumes
    assert torch.load(ckpt, weights_only=True)["step"] == 2


def test_the_trainer_records_the_one_normalisation_rule(workdir, tmp_path):
    import timm

    from featlift.backbones import image_normalisation
    from featlift.training.trainer import build

    name = "vit_base_patch16_clip_224.openai"
    cfg = TrainConfig(backbone=name, data=".", out=str(tmp_path), steps=1, pretrained_backbone=False)
    _, config = build(cfg, torch.device("cpu"))
    want = timm.models.get_pretrained_cfg(name)
    assert config.backbone.mean == pytest.approx(want.mean) and config.backbone.std == pytest.approx(want.std)
    assert config.backbone.mean != pytest.approx((0.485, 0.456, 0.406)), "CLIP's statistics, not ImageNet's"
    assert image_normalisation(BackboneConfig(name=name, source="timm")) == (config.backbone.mean, config.backbone.std)


def _layernorm_base(path: Path) -> Path:
    """dinov2_s14's architecture with LayerNorm: per-sample statistics, so DDP equals one big batch."""
    cfg = get_variant("dinov2_s14").config
    enc = dataclasses.replace(
        cfg.encoder,
        stages=tuple(
            dataclasses.replace(s, blocks=dataclasses.replace(s.blocks, norm="layer")) for s in cfg.encoder.stages
        ),
    )
    layer = lambda g: dataclasses.replace(g, norm="layer")  # noqa: E731
    dec = dataclasses.replace(
        cfg.decoder,
        input_blocks=layer(cfg.decoder.input_blocks),
        stages=tuple(dataclasses.replace(s, blocks=layer(s.blocks)) for s in cfg.decoder.stages),
    )
    path.write_text(dataclasses.replace(cfg, encoder=enc, decoder=dec).to_json())
    return path


def test_two_process_ddp_matches_one_process_with_the_doubled_batch(workdir, tmp_path):
    base = _layernorm_base(tmp_path / "base.json")
    common = ["--backbone", TIMM_NAME, "--data", str(workdir / "images"), "--image-size", "112", "--depths", "2"]
    common += ["--steps", "3", "--backbone-weights", str(workdir / "vit.safetensors"), "--base", str(base)]
    common += ["--val-fraction", "0.25"]  # as _config, so both runs train on the same images
    common += ["--noise", "0.1"]  # one draw for the global batch: DDP still equals the big batch
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         "-m", "featlift.cli", "train", *common, "--batch-size", "2", "--out", str(tmp_path / "ddp")],
        capture_output=True, text=True, env=env, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    sums = json.loads((tmp_path / "ddp" / "metrics.json").read_text())["rank_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1], "both ranks end with the same parameters"

    train(_config(workdir, tmp_path / "single", steps=3, batch_size=4, base=str(base), noise_std=0.1))
    a = load_file(str(tmp_path / "ddp" / "model.safetensors"))
    b = load_file(str(tmp_path / "single" / "model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5


# -- data --------------------------------------------------------------------------------------------


def test_bad_data_gives_clear_errors(workdir, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        list_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found under"):
        train(_config(workdir, tmp_path / "o1", data=str(tmp_path / "empty")))
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="no images found under"):
        list_images(tmp_path / "text")
    with pytest.raises(featlift.UnknownModelError, match="timm has no model named 'vit_nonsense'"):
        train(_config(workdir, tmp_path / "o0", backbone="vit_nonsense"))
    with pytest.raises(ValueError, match="divisible by patch x 2\\*\\*depths = 56"):
        train(_config(workdir, tmp_path / "o2", image_size=100))


def test_unreadable_files_are_skipped_with_a_warning(workdir, tmp_path, caplog):
    folder = _shapes(tmp_path / "mixed", 6)
    (folder / "sub").mkdir()
    (folder / "sub" / "broken.jpg").write_bytes(b"not a jpeg")
    listing = tmp_path / "files.txt"
    listing.write_text("\n".join(str(p.relative_to(tmp_path)) for p in sorted(folder.rglob("*.*"))))
    assert len(list_images(listing)) == 7
    with caplog.at_level("WARNING"):
        train(_config(workdir, tmp_path / "o3", data=str(listing), steps=2, batch_size=6, val_fraction=0.0))
    assert any("broken.jpg" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "o3" / "model.safetensors").is_file()


def test_unused_flag_combinations_are_refused(workdir, tmp_path):
    with pytest.raises(ValueError, match="steps or epochs"):
        TrainConfig(backbone=TIMM_NAME, data="x", out="y")
    with pytest.raises(ValueError, match="unknown loss"):
        _config(workdir, tmp_path, loss="huber")


def test_push_to_hub_uploads_the_two_files_and_a_card(workdir, tmp_path, monkeypatch):
    import huggingface_hub

    calls = {}

    class FakeApi:
        def __init__(self, **kwargs):
            calls["init"] = kwargs

        def create_repo(self, repo_id, **kwargs):
            calls["repo"] = repo_id

        def create_commit(self, repo_id, operations, commit_message):
            calls["files"] = {op.path_in_repo: op.path_or_fileobj for op in operations}
            return type("Info", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    metrics = train(_config(workdir, tmp_path / "pub", steps=2, push_to_hub="me/uplift-test"))
    assert calls["repo"] == "me/uplift-test" and calls["init"]["library_name"] == "featlift"
    assert set(calls["files"]) == {"config.json", "model.safetensors", "README.md"}
    assert Path(calls["files"]["model.safetensors"]) == tmp_path / "pub" / "model.safetensors"
    card = calls["files"]["README.md"].decode()
    assert TIMM_NAME in card and "2 steps" in card and str(workdir / "images") in card
    ratio = metrics["heldout"]["depth1"]["ratio"]
    assert f"{ratio:.3f}" in card
    assert metrics["pushed"].endswith("/commit/abc")


@pytest.mark.parametrize("failing", ["create_repo", "create_commit"])
def test_push_failure_is_an_upload_error_naming_the_repo_and_the_fix(tmp_path, monkeypatch, failing):
    import huggingface_hub

    from featlift import DownloadError, FeatliftError, UploadError
    from featlift.hub import push_pretrained_dir

    class OfflineApi:
        def __init__(self, **kwargs):
            pass

        def create_repo(self, *args, **kwargs):
            if failing == "create_repo":
                raise OSError("no network")

        def create_commit(self, *args, **kwargs):
            raise PermissionError("403 Forbidden: no write access")

    monkeypatch.setattr(huggingface_hub, "HfApi", OfflineApi)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(UploadError, match="me/x.*huggingface-cli login") as info:
        push_pretrained_dir(tmp_path, "me/x", card="card")
    assert isinstance(info.value, FeatliftError) and not isinstance(info.value, DownloadError)
    cause = "no network" if failing == "create_repo" else "403 Forbidden"
    assert cause in str(info.value) and str(tmp_path) in str(info.value)
    with pytest.raises(FileNotFoundError, match="lacks config.json, model.safetensors"):
        push_pretrained_dir(tmp_path / "nothing", "me/x", card="card")


def test_feature_cache_returns_the_backbone_targets_and_skips_the_backbone(tmp_path):
    backbone = _PatchBackbone()
    calls = []
    backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    cache = FeatureCache(tmp_path / "cache")
    images = torch.randn(3, 3, 112, 112)
    for depth in (2, 1):
        got = depth_targets(backbone, images, depth, cache)
        want = depth_targets(backbone, images, depth)
        assert len(got) == depth + 1
        assert all(torch.allclose(g, w, atol=1e-6) for g, w in zip(got, want, strict=True))
    assert cache.hits == 3 * 2 and cache.misses == 3 * 3, "the second call read every item and level from disk"
    n_calls = len(calls)
    partly = depth_targets(backbone, torch.stack([images[0], torch.randn(3, 112, 112)]), 1, cache)  # 1 cached
    assert len(calls) == n_calls + 2 and calls[-2:] == [1, 1], "only the new image goes through the backbone"
    assert partly[0].shape[0] == 2
    # the key is the backbone's weights and exact input: other weights or autocast live apart, not mixed up
    other = _PatchBackbone()
    with torch.no_grad():
        other.conv.bias += 1
    assert torch.allclose(depth_targets(other, images, 1, cache)[0], depth_targets(other, images, 1)[0], atol=1e-6)
    misses = cache.misses
    depth_targets(backbone, images, 1, cache, variant="bf16-autocast")
    assert cache.misses == misses + 3 * 2 and len(list((tmp_path / "cache").iterdir())) == 3


def test_training_with_a_feature_cache(workdir, tmp_path):
    cfg = _config(workdir, tmp_path / "cached", steps=6, feature_cache=str(tmp_path / "feats"), val_fraction=0.25)
    first = train(cfg)["feature_cache"]
    files = len(list((tmp_path / "feats").rglob("*.safetensors")))
    # An image can repeat inside one batch across an epoch boundary: then two misses write one file.
    assert 0 < files <= first["misses"]
    second = train(dataclasses.replace(cfg, out=str(tmp_path / "again")))["feature_cache"]
    assert second == {"hits": first["hits"] + first["misses"], "misses": 0}
    a = load_file(str(tmp_path / "cached" / "model.safetensors"))
    b = load_file(str(tmp_path / "again" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a), "cached features give the same training"
    # another file list shares the folder without mixing features up: it trains as without a cache
    other = dataclasses.replace(cfg, out=str(tmp_path / "other"), val_fraction=0.5)
    assert train(other)["feature_cache"]["misses"] > 0
    train(dataclasses.replace(other, out=str(tmp_path / "plain"), feature_cache=None))
    c = load_file(str(tmp_path / "other" / "model.safetensors"))
    d = load_file(str(tmp_path / "plain" / "model.safetensors"))
    assert max((c[k] - d[k]).abs().max().item() for k in c) <= 1e-5


@pytest.mark.parametrize(("visible", "local_rank", "index"), [(4, 3, 3), (1, 3, 0), (2, 3, 1)])
def test_each_process_takes_its_own_visible_gpu(monkeypatch, visible, local_rank, index):
    """Under torchrun every process sees the node's GPUs (index = LOCAL_RANK); a launcher that gives each
    process one visible GPU leaves it index 0, where set_device(LOCAL_RANK) would fail."""
    from featlift._distributed import cuda_index, process_device

    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cuda_index(local_rank) == index
    d = Dist(rank=local_rank, world=4, local_rank=local_rank)
    assert process_device("cuda", d) == torch.device("cuda", index)
    assert process_device(None, d) == torch.device("cuda", index)
