"""featlift demo: the picture functions, the computation, the page's API over HTTP (gradio_client), and the
``featlift demo`` command. The real-browser test is in test_demo_browser.py.

A tiny random network (strided-conv backbone, miniature UPLiFT) keeps every request in milliseconds.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import featlift
from featlift.demo import DemoEngine
from featlift.demo._engine import output_size_for
from featlift.demo._pictures import example_images, heatmap, similarity_map
from featlift.demo._uploads import capped_size, read_upload
from featlift.errors import ExpiredResultError, InsufficientMemoryError, InvalidUploadError, MissingDependencyError

from .configs import tiny_config
from .conftest import REPO, ConvBackbone

# gradio 6 with pandas 3 warns inside its queue (not featlift's code).
pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")

CHANNELS, PATCH = 6, 14


def tiny_upsampler() -> featlift.Upsampler:
    torch.manual_seed(0)
    return featlift.Upsampler(ConvBackbone(), featlift.UPLiFT(tiny_config(channels=CHANNELS)).eval(), name="tiny")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def launched(app):
    """Launch ``app`` on a free loopback port (Gradio's default host); yield its URL; always close it."""
    try:
        _, url, _ = app.launch(server_port=free_port(), prevent_thread_lock=True, quiet=True)
        yield url.rstrip("/")
    finally:
        app.close()


def random_photo(path: Path, size: tuple[int, int], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


def smooth_photo(path: Path, size: tuple[int, int]) -> Path:
    """A picture that compresses well (a few hard-edged regions)."""
    image = example_images()["shapes"].resize((size[1], size[0]))
    image.save(path)
    return path


# -- the picture functions ------------------------------------------------------------------------------


def _naive_cosine(features: torch.Tensor, y: int, x: int) -> torch.Tensor:
    flat = features.double()
    return F.cosine_similarity(flat, flat[:, y, x].view(-1, 1, 1), dim=0).float()


def test_similarity_map_is_one_at_the_clicked_pixel_and_at_most_one_elsewhere():
    gen = torch.Generator().manual_seed(2)
    features = torch.randn(7, 9, 11, generator=gen)
    features[:, 4, 8] = features[:, 2, 3] * 3.0  # same direction, other length
    features[:, 0, 0] = -features[:, 2, 3]  # opposite direction
    sim = similarity_map(features, (2, 3))
    assert sim.shape == (9, 11) and sim.dtype == torch.float32
    assert abs(sim[2, 3].item() - 1) < 1e-5
    assert abs(sim[4, 8].item() - 1) < 1e-5 and abs(sim[0, 0].item() + 1) < 1e-5
    assert sim.max().item() <= 1.0 and sim.min().item() >= -1.0
    mask = torch.ones_like(sim, dtype=torch.bool)
    mask[2, 3] = mask[4, 8] = False
    assert sim[mask].max().item() < 0.999
    assert torch.allclose(sim, _naive_cosine(features, 2, 3), atol=1e-5)


def test_similarity_map_of_bilinearly_upsampled_features():
    gen = torch.Generator().manual_seed(3)
    coarse = torch.randn(5, 4, 6, generator=gen)
    size, pixel = (28, 42), (17, 9)
    sim = similarity_map(coarse, pixel, size=size)
    upsampled = F.interpolate(coarse[None], size=size, mode="bilinear", align_corners=False)[0]
    assert sim.shape == size
    assert abs(sim[pixel].item() - 1) < 1e-5 and sim.max().item() <= 1.0
    assert torch.allclose(sim, _naive_cosine(upsampled, *pixel), atol=1e-5)
    with pytest.raises(ValueError, match="outside"):
        similarity_map(coarse, (28, 0), size=size)


def test_heatmap_colours_and_overlay():
    sim = torch.tensor([[0.0, 0.5, 1.0], [-1.0, 0.25, 0.75]])
    plain = heatmap(sim)
    assert plain.shape == (2, 3, 3) and plain.dtype == np.uint8
    assert tuple(plain[0, 2]) == (252, 255, 164) and tuple(plain[0, 0]) == (0, 0, 4)
    assert tuple(plain[1, 0]) == (0, 0, 4)  # below 0 reads as 0
    assert plain[0, 1].sum() > plain[1, 1].sum() > plain[0, 0].sum()
    photo = np.full((2, 3, 3), 200, np.uint8)
    over = heatmap(sim, photo, opacity=0.5)
    assert np.array_equal(over[0, 0], np.round((np.array([0, 0, 4]) + 200) / 2).astype(np.uint8))
    marked = heatmap(torch.zeros(40, 40), marker=(20, 10))
    assert tuple(marked[20, 10]) == (255, 255, 255) and tuple(marked[5, 5]) == (0, 0, 4)
    with pytest.raises(ValueError, match="differ in size"):
        heatmap(sim, np.zeros((3, 3, 3), np.uint8))


def test_examples_are_drawn_deterministically():
    first, second = example_images(), example_images()
    assert set(first) == {"garden", "table", "shapes"}
    for name, image in first.items():
        assert image.mode == "RGB" and min(image.size) >= 300
        assert np.array_equal(np.asarray(image), np.asarray(second[name]))
        assert np.asarray(image).std() > 20  # not a flat picture


# -- uploads --------------------------------------------------------------------------------------------


def test_upload_under_the_caps_is_read_as_is(tmp_path):
    photo = random_photo(tmp_path / "p.png", (30, 40))
    upload = read_upload(photo, max_pixels=1200, max_bytes=10**6)
    with Image.open(photo) as image:
        expected = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    assert upload.note is None and upload.size == (30, 40) and torch.equal(upload.pixels, expected)


def test_upload_above_the_pixel_cap_is_downscaled_and_says_so(tmp_path):
    photo = random_photo(tmp_path / "p.png", (300, 200))
    upload = read_upload(photo, max_pixels=6000, max_bytes=10**6)
    h, w = upload.size
    assert h * w <= 6000 and h * w > 5700 and abs(h / w - 1.5) < 0.03
    assert upload.original_size == (300, 200)
    assert "downscaled to" in upload.note and "200x300" in upload.note
    assert capped_size((300, 200), 6000) == (h, w)
    # a JPEG is decoded at reduced scale first; same cap
    Image.open(photo).save(tmp_path / "p.jpg", quality=90)
    assert np.prod(read_upload(tmp_path / "p.jpg", max_pixels=1000).size) <= 1000


def test_uploads_refused_with_clear_messages(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a picture")
    with pytest.raises(InvalidUploadError, match="'notes.txt' is not a picture"):
        read_upload(text)
    big = random_photo(tmp_path / "big.png", (200, 200))
    with pytest.raises(InvalidUploadError, match="accepts files up to 0.1 MB"):
        read_upload(big, max_bytes=100_000)
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(big.read_bytes()[:5000])
    with pytest.raises(InvalidUploadError, match="'cut.png'") as info:
        read_upload(truncated)
    assert str(tmp_path) not in str(info.value)  # no server paths in messages


def test_output_size_choices():
    assert output_size_for("own size", (300, 400), 100) is None
    assert output_size_for("native", (300, 400), 100) == "native"
    assert output_size_for("max side", (300, 400), 100) == (75, 100)
    assert output_size_for("max side", (30, 40), 100) == (30, 40)  # never enlarged
    with pytest.raises(ValueError, match="own size, native, max side"):
        output_size_for("huge", (30, 40), 100)
    with pytest.raises(ValueError, match="positive"):
        output_size_for("max side", (30, 40), 0)


# -- the computation ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def up() -> featlift.Upsampler:
    return tiny_upsampler()


def test_engine_pictures_at_the_photos_size_and_clicks(up, tmp_path):
    engine = DemoEngine(up)
    photo = smooth_photo(tmp_path / "p.png", (70, 98))
    result = engine.upsample(photo)
    assert result.bilinear_pca.shape == result.featlift_pca.shape == (70, 98, 3)
    assert result.output_shape == (1, CHANNELS, 70, 98) and result.lowres_shape == (1, CHANNELS, 5, 7)
    assert not np.array_equal(result.bilinear_pca, result.featlift_pca)
    assert result.seconds > 0 and result.estimate_bytes > 0
    assert "[1, 6, 70, 98]" in result.summary("tiny", "cpu")
    native = engine.upsample(photo, "native")
    assert native.output_shape == (1, CHANNELS, 80, 112) and native.featlift_pca.shape == (70, 98, 3)
    small = engine.upsample(photo, "max side", 49)
    assert small.output_shape == (1, CHANNELS, 35, 49) and small.bilinear_pca.shape == (70, 98, 3)
    bilinear, dense, (x, y) = engine.similarity(result.token, 30, 20)
    assert (x, y) == (30, 20) and bilinear.shape == dense.shape == (70, 98, 3)
    assert not np.array_equal(bilinear, dense)
    assert engine.similarity(result.token, 10_000, -5)[2] == (97, 0)  # clamped to the photo


def test_engine_computes_in_the_upsamplers_dtype_and_says_so(up, tmp_path, attended):
    """A bfloat16 upsampler (featlift demo --dtype bfloat16): the attender runs in bfloat16, the page says
    which dtype, the guard expects about half the memory, and the pictures are float32's to within a
    level or two (another photo or pixel moves them by far more)."""
    photo = smooth_photo(tmp_path / "p.png", (70, 98))
    full = DemoEngine(up)
    want = full.upsample(photo)
    attended.clear()
    half = DemoEngine(tiny_upsampler().to(torch.bfloat16))
    got = half.upsample(photo)
    assert attended and set(attended) == {(torch.bfloat16,) * 3}
    assert (want.dtype, got.dtype) == ("float32", "bfloat16")
    assert "on `cpu` in bfloat16:" in got.summary("tiny", "cpu")
    assert got.estimate_bytes <= 0.6 * want.estimate_bytes

    def levels(a, b):
        return np.abs(a.astype(int) - b.astype(int)).mean()

    other = full.upsample(random_photo(tmp_path / "q.png", (70, 98)))
    assert levels(got.featlift_pca, want.featlift_pca) < 2 < 20 < levels(other.featlift_pca, want.featlift_pca)
    assert levels(got.bilinear_pca, want.bilinear_pca) < 2
    got_maps, want_maps = half.similarity(got.token, 30, 20), full.similarity(want.token, 30, 20)
    elsewhere = full.similarity(want.token, 80, 60)
    assert levels(got_maps[1], want_maps[1]) < 1 < 5 < levels(elsewhere[1], want_maps[1])
    assert levels(got_maps[0], want_maps[0]) < 1


def test_engine_keeps_a_bounded_number_of_results(up, tmp_path):
    engine = DemoEngine(up, cache_entries=2)
    photo = random_photo(tmp_path / "p.png", (28, 28))
    tokens = [engine.upsample(photo).token for _ in range(3)]
    with pytest.raises(ExpiredResultError, match="upsample it again"):
        engine.similarity(tokens[0], 1, 1)
    engine.similarity(tokens[2], 1, 1)
    with pytest.raises(ExpiredResultError):
        engine.similarity(None, 1, 1)


def test_engine_passes_the_memory_guards_refusal_on(up, tmp_path, monkeypatch):
    monkeypatch.setattr("featlift._upsampler.available_bytes", lambda device: 1000)
    with pytest.raises(InsufficientMemoryError, match="not enough memory"):
        DemoEngine(up).upsample(random_photo(tmp_path / "p.png", (28, 28)))


def test_missing_gradio_names_the_extra(up, monkeypatch, capsys):
    import featlift.demo
    from featlift import cli

    monkeypatch.setitem(sys.modules, "gradio", None)
    with pytest.raises(MissingDependencyError, match=re.escape('pip install "featlift[demo]"')):
        featlift.demo.build_app(up)
    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    assert cli.main(["demo", "--no-pretrained"]) == 1
    assert 'pip install "featlift[demo]"' in capsys.readouterr().err
    assert "GRADIO_TEMP_DIR" not in os.environ  # the command's temporary folder is gone again


# -- the page over HTTP ---------------------------------------------------------------------------------

MAX_PIXELS = 120 * 160
MAX_BYTES = 300_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("gradio", reason='gradio is not installed (pip install "featlift[demo]")')
    from featlift.demo import build_app

    folder = tmp_path_factory.mktemp("gradio")
    app = build_app(tiny_upsampler(), folder=folder, max_pixels=MAX_PIXELS, max_file_bytes=MAX_BYTES)
    with launched(app) as url:
        yield url, app, folder


@pytest.fixture
def client(server, tmp_path):
    from gradio_client import Client

    return Client(server[0], verbose=False, download_files=str(tmp_path))


def _picture(path: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _upsample(client, path: Path, **kwargs):
    from gradio_client import handle_file

    return client.predict(handle_file(str(path)), api_name="/upsample", **kwargs)


def test_api_upsample_returns_both_pictures(server, client, tmp_path):
    url = server[0]
    assert url.startswith("http://127.0.0.1:")  # loopback unless told otherwise
    photo = smooth_photo(tmp_path / "photo.png", (84, 126))
    result = _upsample(client, photo)
    bilinear, dense = _picture(result[0]), _picture(result[1])
    assert bilinear.shape == dense.shape == (84, 126, 3)
    assert not np.array_equal(bilinear, dense)
    assert bilinear.std() > 5 and dense.std() > 5  # pictures, not blank frames
    summary = result[4]
    assert "[1, 6, 84, 126]" in summary and "peak memory" in summary and " s**" in summary
    native = _upsample(client, photo, output="native")
    assert "[1, 6, 96, 144]" in native[4]
    capped = _upsample(client, photo, output="max side", max_side=63)
    assert "[1, 6, 42, 63]" in capped[4] and _picture(capped[1]).shape == (84, 126, 3)


def test_api_pictures_match_the_engine(server, client, tmp_path):
    photo = smooth_photo(tmp_path / "photo.png", (56, 70))
    result = _upsample(client, photo)
    expected = DemoEngine(tiny_upsampler()).upsample(photo)
    assert np.array_equal(_picture(result[0]), expected.bilinear_pca)
    assert np.array_equal(_picture(result[1]), expected.featlift_pca)


def test_api_caps_pixels_and_says_so(client, tmp_path):
    photo = tmp_path / "garden.png"
    example_images()["garden"].save(photo)  # 448x336, above the cap of 120x160 pixels
    result = _upsample(client, photo)
    h, w = _picture(result[1]).shape[:2]
    assert h * w <= MAX_PIXELS and abs(w / h - 448 / 336) < 0.02
    assert "downscaled" in result[4] and "448x336" in result[4]


def test_api_errors_are_clear_and_the_server_keeps_serving(server, client, tmp_path, monkeypatch):
    from gradio_client.exceptions import AppError

    text = tmp_path / "notes.txt"
    text.write_text("these are not pixels")
    with pytest.raises(AppError, match="'notes.txt' is not a picture"):
        _upsample(client, text)
    monkeypatch.setattr("featlift._upsampler.available_bytes", lambda device: 1000)
    with pytest.raises(AppError, match="Not enough memory.*'max side'.*needs about"):
        _upsample(client, smooth_photo(tmp_path / "p.png", (56, 56)))
    monkeypatch.undo()
    too_big = random_photo(tmp_path / "big.png", (400, 400))  # ~480 kB of noise, above the byte cap
    assert too_big.stat().st_size > MAX_BYTES
    with pytest.raises(ValueError, match="exceeds the maximum file size of 300000 bytes"):
        _upsample(client, too_big)  # gradio_client reads the cap from the page and refuses at once
    import httpx

    with httpx.Client(base_url=server[0], timeout=30) as http:  # a client that does not check: the server refuses
        response = http.post("/gradio_api/upload", files={"files": ("big.png", too_big.read_bytes(), "image/png")})
        assert response.status_code == 413, response.text
    result = _upsample(client, smooth_photo(tmp_path / "ok.png", (56, 56)))
    assert _picture(result[1]).shape == (56, 56, 3)


def test_only_the_apps_temporary_folder_is_served(server, tmp_path):
    import httpx

    url, _, folder = server
    example = folder / "featlift-demo-examples" / "garden.png"
    assert example.is_file()
    outside = tmp_path / "secret.png"
    outside.write_bytes(example.read_bytes())
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.get(f"/gradio_api/file={example}").status_code == 200  # the app's own files are served
        for path in (outside, REPO / "pyproject.toml", Path("/etc/passwd"), f"{folder}/../secret.png"):
            for prefix in ("/gradio_api/file=", "/file="):
                response = http.get(f"{prefix}{path}")
                assert response.status_code >= 400, (prefix, path, response.status_code)
                assert b"featlift" not in response.content and b"root:" not in response.content


def test_the_app_serves_the_folder_it_was_given_not_the_environments(tmp_path, monkeypatch):
    pytest.importorskip("gradio", reason='gradio is not installed (pip install "featlift[demo]")')
    import gradio as gr
    import httpx
    from gradio_client import Client

    from featlift.demo import build_app
    from featlift.demo._app import payload_path

    given, other = tmp_path / "given", tmp_path / "other"
    other.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(other))
    stray = random_photo(other / "stray.png", (20, 20))
    app = build_app(tiny_upsampler(), folder=given)
    assert os.environ["GRADIO_TEMP_DIR"] == str(other)  # building leaves the environment as it was
    assert app.featlift_folder == given.resolve()
    with launched(app) as url:
        with httpx.Client(base_url=url, timeout=30) as http:
            assert http.get(f"/gradio_api/file={given / 'featlift-demo-examples' / 'garden.png'}").status_code == 200
            assert http.get(f"/gradio_api/file={stray}").status_code >= 400
        result = _upsample(Client(url, verbose=False, download_files=str(tmp_path / "dl")), stray)
        assert _picture(result[1]).shape == (20, 20, 3)
        assert list(given.rglob("stray.png")) and sorted(other.iterdir()) == [stray]  # the upload went there
    assert os.environ["GRADIO_TEMP_DIR"] == str(other)  # and closing restores it
    with pytest.raises(gr.Error, match="not an upload of this app"):
        payload_path({"path": str(stray)}, app.featlift_folder)


def test_one_request_computes_at_a_time(server, tmp_path):
    from gradio_client import Client, handle_file

    engine = server[1].featlift_engine
    original = engine.upsample
    running, most = [0], [0]
    lock = threading.Lock()

    def slow(*args, **kwargs):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(0.4)
            return original(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    engine.upsample = slow
    try:
        photo = smooth_photo(tmp_path / "p.png", (42, 42))
        # separate clients: separate visitors
        jobs = [
            Client(server[0], verbose=False, download_files=str(tmp_path)).submit(
                handle_file(str(photo)), api_name="/upsample"
            )
            for _ in range(3)
        ]
        results = [job.result(timeout=60) for job in jobs]
    finally:
        engine.upsample = original
    assert len(results) == 3 and most[0] == 1


# -- the command ----------------------------------------------------------------------------------------


def test_demo_command_serves_a_local_model_dir_offline(tmp_path):
    pytest.importorskip("gradio", reason='gradio is not installed (pip install "featlift[demo]")')
    import dataclasses

    from gradio_client import Client, handle_file

    from featlift.config import BackboneConfig

    config = tiny_config(patch=16, channels=64)  # timm's "test_vit": 64 channels, patch 16, random-init offline
    config = dataclasses.replace(config, backbone=BackboneConfig(channels=64, patch=16, name="test_vit", source="timm"))
    featlift.UPLiFT(config).save_pretrained(tmp_path / "model")
    port = free_port()
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "TMPDIR": str(temp)}
    env.pop("GRADIO_TEMP_DIR", None)
    command = [sys.executable, "-m", "featlift.cli", "demo", "--model", str(tmp_path / "model"), "--no-pretrained"]
    process = subprocess.Popen(
        [*command, "--port", str(port), "--device", "cpu", "--dtype", "bfloat16"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    lines: list[str] = []
    try:
        reader = threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True)
        reader.start()
        deadline = time.monotonic() + 120
        while not any("http://" in line for line in lines):
            assert process.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        url = re.search(r"http://[^\s]+", "".join(lines)).group(0).rstrip("/")
        assert url == f"http://127.0.0.1:{port}"
        photo = smooth_photo(tmp_path / "photo.png", (64, 80))
        result = Client(url, verbose=False, download_files=str(tmp_path / "dl")).predict(
            handle_file(str(photo)), api_name="/upsample"
        )
        assert _picture(result[1]).shape == (64, 80, 3) and "[1, 64, 64, 80]" in result[4]
        assert "on `cpu` in bfloat16:" in result[4]  # --dtype reaches the model and the page says so
        assert (next(temp.glob("featlift-demo-*")) / "featlift-demo-examples" / "garden.png").is_file()
    finally:
        process.terminate()
        try:
            assert process.wait(timeout=30) == 0, "".join(lines)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert "Traceback" not in "".join(lines)
    assert not list(temp.glob("featlift-demo-*"))  # the app's temporary folder is removed on exit


def test_a_client_cannot_make_the_app_read_other_files(server):
    import gradio as gr
    import httpx

    from featlift.demo._app import payload_path

    url, _, folder = server
    payload = {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}, "orig_name": "passwd.png"}
    with httpx.Client(base_url=url, timeout=30) as http:
        event = http.post("/gradio_api/call/upsample", json={"data": [payload, "own size", 512]})
        if event.status_code == 200:
            stream = http.get(f"/gradio_api/call/upsample/{event.json()['event_id']}").text
            assert "event: error" in stream and "event: complete" not in stream, stream
            assert "root:" not in stream
        else:
            assert event.status_code >= 400
    with pytest.raises(gr.Error, match="not an upload of this app"):
        payload_path(payload, folder.resolve())
    inside = folder / "featlift-demo-examples" / "garden.png"
    assert payload_path({"path": str(inside)}, folder.resolve()) == inside.resolve()
