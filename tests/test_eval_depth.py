"""featlift.eval.depth (probe3d's bin head, SigLoss, gradient loss, millimetre PNGs), the per-image DepthMetric
and the NYU GeoNet / rawDepths readers, each on tiny inputs whose expected values are worked out by hand."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from featlift.errors import DatasetError, DatasetFormatError
from featlift.eval import depth as D
from featlift.eval.datasets import depth as nyu
from featlift.eval.datasets import make_dataset
from featlift.eval.metrics import DepthMetric
from featlift.eval.protocols import protocol

EPS = 1e-3  # the losses' log offset
LN2 = math.log(2.0)
PROBE3D = protocol("probe3d", "depth")
L1 = protocol("l1", "depth")


def _f64(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# ----------------------------------------------------------------------------------------------
# The head
# ----------------------------------------------------------------------------------------------


def test_bin_head_expectation_by_hand():
    proto = PROBE3D.with_settings(bins=3, min_depth=1.0, max_depth=3.0)  # centres 1, 2, 3
    assert D.outputs(proto) == 3
    torch.testing.assert_close(D.bin_centres(proto), torch.tensor([1.0, 2.0, 3.0]))
    # pixel 0: logits (-1, 0.4, 1.9) -> relu (0, 0.4, 1.9) -> +0.1 (0.1, 0.5, 2.0), sum 2.6
    #          -> p = (1, 5, 20) / 26 -> depth = (1*1 + 2*5 + 3*20) / 26 = 71 / 26
    # pixel 1: logits all negative -> relu 0 -> +0.1 each -> p = 1/3 each -> depth = (1 + 2 + 3) / 3 = 2
    out = torch.tensor([[-1.0, -5.0], [0.4, -0.2], [1.9, -7.0]]).reshape(1, 3, 1, 2)
    depth = D.decode(out, proto)
    assert depth.shape == (1, 1, 2)
    assert depth[0, 0, 0].item() == pytest.approx(71 / 26, rel=1e-6)
    assert depth[0, 0, 1].item() == pytest.approx(2.0, rel=1e-6)
    # the probe3d default: 256 channels, every decoded depth inside [min_depth, max_depth]
    assert D.outputs(PROBE3D) == 256
    many = D.decode(torch.randn(2, 256, 3, 3) * 10, PROBE3D)
    assert many.shape == (2, 3, 3) and float(many.min()) >= 0.001 and float(many.max()) <= 10.0


def test_linear_head_and_channel_checks():
    assert D.outputs(L1) == 1
    out = torch.tensor([[[[1.5, -2.0]]]])
    assert D.decode(out, L1).tolist() == [[[1.5, -2.0]]]
    with pytest.raises(ValueError, match=r"protocol.bins=256 channels, the probe output has 1"):
        D.decode(out, PROBE3D)
    with pytest.raises(ValueError, match=r"'linear' head needs 1 channel.*has 256"):
        D.decode(torch.zeros(1, 256, 1, 1), L1)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        D.decode(torch.zeros(256, 1, 1), PROBE3D)
    bf16 = D.decode(torch.zeros(1, 256, 1, 1, dtype=torch.bfloat16), PROBE3D)
    assert bf16.dtype == torch.float32 and bf16.item() == pytest.approx((0.001 + 10.0) / 2, rel=1e-6)


# ----------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------

# A row of 4 pixels built so that log(pred + eps) - log(gt + eps) is exact: pred + eps = 2, 4, 1 against
# gt + eps = 1, 1, 1, so g = ln2, 2 ln2, 0; the 4th pixel has gt 0 (invalid) and a prediction that must not count.
SIG_PRED = _f64([[2 - EPS, 4 - EPS, 1 - EPS, 5.0]])
SIG_GT = _f64([[1 - EPS, 1 - EPS, 1 - EPS, 0.0]])
# mean(g) = 3 ln2 / 3 = ln2; mean(g²) = (1 + 4 + 0) ln2² / 3 = 5/3 ln2²
# sig = sqrt(5/3 ln2² - 0.85 ln2²) = ln2 * sqrt(5/3 - 0.85) = 0.693147 * 0.903696 = 0.626394
SIG_HAND = LN2 * math.sqrt(5 / 3 - 0.85)


def test_sig_loss_by_hand():
    loss = D.sig_loss(SIG_PRED, SIG_GT)
    assert loss.item() == pytest.approx(SIG_HAND, rel=1e-9)
    assert SIG_HAND == pytest.approx(0.626394, abs=1e-6)
    # lambda = 0: sqrt(5/3) ln2
    assert D.sig_loss(SIG_PRED, SIG_GT, lam=0.0).item() == pytest.approx(LN2 * math.sqrt(5 / 3), rel=1e-9)


def test_sig_loss_zero_variance_has_a_finite_gradient():
    gt = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    pred = gt.clone().requires_grad_(True)  # perfect prediction: g = 0, the square root's argument is 0
    loss = D.sig_loss(pred, gt)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() == 0


def _from_log_diff(d: list[list[float]], masked: set[tuple[int, int]] = frozenset()) -> tuple:
    """pred, gt [1, H, W] with gt + eps = 1 (valid) and pred + eps = exp(d), so that the log difference is d."""
    dd = torch.tensor(d, dtype=torch.float64)
    gt = torch.full_like(dd, 1 - EPS)
    pred = torch.exp(dd) - EPS
    for y, x in masked:
        gt[y, x] = 0.0
        pred[y, x] = 100.0
    return pred[None], gt[None]


def test_gradient_loss_by_hand_step_of_two_and_a_masked_pixel():
    # log differences d on a 3x3 grid, pixel (0, 0) invalid:
    #   [[ -, 1, 2],
    #    [ 3, 4, 5],
    #    [ 6, 7, 9]]
    # N = 8 valid pixels. Pairs are two pixels apart: vertical (row 0, row 2), horizontal (col 0, col 2).
    # vertical:   col 0 masked -> 0; col 1 |1 - 7| = 6; col 2 |2 - 9| = 7      -> 13
    # horizontal: row 0 masked -> 0; row 1 |3 - 5| = 2; row 2 |6 - 9| = 3      -> 5
    # one scale: (13 + 5) / 8 = 2.25   (neighbours one apart would give a different sum)
    pred, gt = _from_log_diff([[0, 1, 2], [3, 4, 5], [6, 7, 9]], masked={(0, 0)})
    assert D.gradient_loss(pred, gt, scales=1).item() == pytest.approx(2.25, rel=1e-9)
    # stride 2 keeps pixels (0,0) (0,2) (2,0) (2,2): a 2x2 grid has no pair two apart, so it adds 0
    assert D.gradient_loss(pred, gt, scales=2).item() == pytest.approx(2.25, rel=1e-9)


def test_gradient_loss_scales_are_strides_1_2_4_6():
    assert D.gradient_strides(4) == [1, 2, 4, 6]
    assert D.gradient_strides(1) == [1]
    # a 1x13 row, d = 0 except d[12] = 6; only horizontal pairs exist (one row)
    # stride 1: 13 pixels, the pair (10, 12) -> 6 / 13
    # stride 2: pixels 0, 2, .., 12 (7), the pair (8, 12) -> 6 / 7
    # stride 4: pixels 0, 4, 8, 12 (4), the pair (4, 12) -> 6 / 4
    # stride 6: pixels 0, 6, 12 (3), the pair (0, 12) -> 6 / 3   (a stride of 8 would keep 0, 8: no pair)
    pred, gt = _from_log_diff([[0.0] * 12 + [6.0]])
    expected = [6 / 13, 6 / 13 + 6 / 7, 6 / 13 + 6 / 7 + 1.5, 6 / 13 + 6 / 7 + 1.5 + 2.0]
    for scales, value in enumerate(expected, start=1):
        assert D.gradient_loss(pred, gt, scales=scales).item() == pytest.approx(value, rel=1e-9)
    with pytest.raises(ValueError, match="positive int"):
        D.gradient_loss(pred, gt, scales=0)


def test_depth_loss_probe3d_by_hand_with_max_depth_invalidation():
    # SIG row plus a 5th pixel whose gt 15 m is deeper than max_depth 10: invalid, so the loss is unchanged.
    pred = _f64([[2 - EPS, 4 - EPS, 1 - EPS, 5.0, 3.0]])
    gt = _f64([[1 - EPS, 1 - EPS, 1 - EPS, 0.0, 15.0]])
    # sig as SIG_HAND. gradient: stride 1: valid 0, 1, 2 (N = 3); pairs (0,2) |ln2 - 0| = ln2, (1,3) and
    # (2,4) touch invalid pixels -> ln2 / 3. stride 2: pixels 0, 2, 4, pair (0, 4) invalid -> 0. strides 4, 6:
    # no pair. total = 10 * SIG_HAND + 0.5 * ln2 / 3
    loss = D.depth_loss(pred, gt, PROBE3D)
    assert loss.item() == pytest.approx(10 * SIG_HAND + 0.5 * LN2 / 3, rel=1e-9)
    assert gt[0, 0, 4].item() == 15.0  # the caller's tensor is left alone
    # with max_depth 20 the 15 m pixel counts, and the loss changes
    assert D.depth_loss(pred, gt, PROBE3D.with_settings(max_depth=20.0)).item() != pytest.approx(loss.item())


def test_depth_loss_l1_by_hand():
    pred = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
    gt = torch.tensor([[[2.0, 0.0, 15.0, 3.5]]])
    # valid: (1, 2) and (4, 3.5); 2 -> gt 0 invalid, 3 -> gt 15 > 10 invalid; mean(|-1|, |0.5|) = 0.75
    assert D.depth_loss(pred, gt, L1).item() == pytest.approx(0.75)


def test_depth_loss_without_valid_pixels_is_zero_with_a_gradient_path():
    for proto in (PROBE3D, L1):
        logits = torch.randn(2, D.outputs(proto), 3, 3, requires_grad=True)
        gt = torch.tensor([0.0, 12.0, float("nan")]).repeat(2, 3, 1)  # nothing valid
        loss = D.depth_loss(D.decode(logits, proto), gt, proto)
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()
        assert logits.grad is not None and logits.grad.abs().sum() == 0


def test_depth_loss_trains_the_bin_head_without_nans():
    logits = torch.randn(1, 256, 4, 4, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    gt = torch.full((1, 4, 4), 2.0)
    gt[0, 0, 0] = 0.0
    loss = D.depth_loss(D.decode(logits, PROBE3D), gt, PROBE3D)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_depth_loss_bad_inputs():
    with pytest.raises(ValueError, match="differ in shape"):
        D.depth_loss(torch.ones(1, 2, 2), torch.ones(1, 2, 3), PROBE3D)
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        D.depth_loss(torch.ones(2, 2), torch.ones(2, 2), PROBE3D)


# ----------------------------------------------------------------------------------------------
# The per-image metric
# ----------------------------------------------------------------------------------------------


def test_metric_is_per_image_not_pooled():
    # image A, 1 pixel: pred 3, gt 1 -> abs_rel 2, rmse 2, d1 0 (thr 3)
    # image B, 8 pixels, exact -> abs_rel 0, rmse 0, d1 1
    # per image: abs_rel (2 + 0) / 2 = 1, rmse (2 + 0) / 2 = 1, d1 (0 + 1) / 2 = 0.5
    # pooled over the 9 pixels it would be: abs_rel 2 / 9, rmse sqrt(4 / 9) = 2 / 3, d1 8 / 9
    m = DepthMetric()
    m.update(torch.tensor([[[3.0]]]), torch.tensor([[[1.0]]]))
    m.update(torch.ones(1, 1, 8), torch.ones(1, 1, 8))
    out = m.compute()
    assert out["images"] == 2
    assert out["abs_rel"] == pytest.approx(1.0) and out["abs_rel"] != pytest.approx(2 / 9)
    assert out["rmse"] == pytest.approx(1.0) and out["rmse"] != pytest.approx(2 / 3)
    assert out["d1"] == pytest.approx(0.5) and out["d1"] != pytest.approx(8 / 9)


def test_metric_images_in_one_batch_weigh_the_same_and_empty_images_are_skipped():
    # three images of 1x4 in one batch; image 1 has 1 valid pixel, image 2 has 4, image 3 none (skipped)
    target = torch.tensor([[[2.0, 0.0, 0.0, 0.0]], [[1.0, 1.0, 1.0, 1.0]], [[0.0, 0.0, 0.0, 0.0]]])
    pred = torch.tensor([[[3.0, 9.0, 9.0, 9.0]], [[1.0, 1.0, 1.0, 2.0]], [[5.0, 5.0, 5.0, 5.0]]])
    # image 1: |3 - 2| / 2 = 0.5, rmse 1, thr 1.5 -> d1 0, d2 1, d3 1
    # image 2: abs_rel (0 + 0 + 0 + 1) / 4 = 0.25, rmse sqrt(1 / 4) = 0.5, thr 1,1,1,2 -> d1 = d2 = d3 = 0.75
    m = DepthMetric()
    m.update(pred, target)
    out = m.compute()
    assert out["images"] == 2
    assert out["abs_rel"] == pytest.approx((0.5 + 0.25) / 2)
    assert out["rmse"] == pytest.approx((1 + 0.5) / 2)
    assert out["d1"] == pytest.approx((0 + 0.75) / 2)
    assert out["d2"] == pytest.approx((1 + 0.75) / 2)
    assert out["d3"] == pytest.approx((1 + 0.75) / 2)


def test_aligned_metrics_exact_fit():
    # pred = 2 gt - 1 everywhere: the least-squares fit is gt = 0.5 pred + 0.5, exact, so every aligned error
    # is 0 and every aligned d is 1; the scale-aware errors are not (pixel gt 4, pred 7: thr 1.75)
    gt = torch.tensor([[[1.0, 2.0], [4.0, 0.0]]])
    pred = 2 * gt - 1
    m = DepthMetric()
    m.update(pred, gt)
    out = m.compute()
    assert out["rmse_aligned"] == pytest.approx(0.0, abs=1e-9)
    assert out["abs_rel_aligned"] == pytest.approx(0.0, abs=1e-9)
    assert (out["d1_aligned"], out["d2_aligned"], out["d3_aligned"]) == (1.0, 1.0, 1.0)
    # scale-aware, valid (1 -> 1), (2 -> 3), (4 -> 7): abs_rel (0 + 0.5 + 0.75) / 3, d1 1 / 3 (thr 1, 1.5, 1.75)
    assert out["abs_rel"] == pytest.approx(1.25 / 3)
    assert out["d1"] == pytest.approx(1 / 3) and out["d3"] == pytest.approx(1.0)


def test_aligned_metrics_least_squares_by_hand():
    # pred (0, 1, 2), gt (1, 1, 4): mean p 1, mean g 2; centred p (-1, 0, 1), g (-1, -1, 2)
    # s = Σ pc gc / Σ pc² = (1 + 0 + 2) / 2 = 1.5, t = 2 - 1.5 * 1 = 0.5 -> aligned (0.5, 2, 3.5)
    # residuals (-0.5, 1, -0.5): rmse sqrt(1.5 / 3); abs_rel (0.5 + 1 + 0.125) / 3
    # thr (2, 2, 4 / 3.5 = 1.142857): d1 = d2 = d3 = 1 / 3
    m = DepthMetric()
    m.update(torch.tensor([[[0.0, 1.0, 2.0]]]), torch.tensor([[[1.0, 1.0, 4.0]]]))
    out = m.compute()
    assert out["rmse_aligned"] == pytest.approx(math.sqrt(0.5))
    assert out["abs_rel_aligned"] == pytest.approx(1.625 / 3)
    assert out["d1_aligned"] == pytest.approx(1 / 3) and out["d3_aligned"] == pytest.approx(1 / 3)
    # scale-aware, same pixels: pred 0 -> gt / 1e-9 is huge; abs_rel (1 + 0 + 0.5) / 3, rmse sqrt((1 + 0 + 4) / 3)
    assert out["abs_rel"] == pytest.approx(1.5 / 3) and out["rmse"] == pytest.approx(math.sqrt(5 / 3))
    assert out["d1"] == pytest.approx(1 / 3)


def test_aligned_metrics_singular_fit_keeps_the_prediction():
    # a constant prediction: the 2x2 system is singular, so s = 1, t = 0 and aligned == scale-aware
    m = DepthMetric()
    m.update(torch.full((1, 2, 3), 0.1, dtype=torch.float64), _f64([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]))
    out = m.compute()
    for key in ("d1", "d2", "d3", "rmse", "abs_rel"):
        assert out[f"{key}_aligned"] == pytest.approx(out[key]), key
    # abs_rel: |0.1 - t| / t over t = 0.1 .. 0.6 = (0 + 1/2 + 2/3 + 3/4 + 4/5 + 5/6) / 6
    assert out["abs_rel"] == pytest.approx((0 + 1 / 2 + 2 / 3 + 3 / 4 + 4 / 5 + 5 / 6) / 6)


def test_metric_max_depth_invalidation():
    # gt 12 m is beyond max_depth 10: left out; with max_depth 15 it counts (pred 6: thr 2, abs_rel 0.5)
    target = torch.tensor([[[1.0, 12.0]]])
    pred = torch.tensor([[[1.0, 6.0]]])
    m = DepthMetric()
    m.update(pred, target)
    assert m.compute()["abs_rel"] == 0.0 and m.compute()["d1"] == 1.0
    deep = DepthMetric(max_depth=15.0)
    deep.update(pred, target)
    assert deep.compute()["abs_rel"] == pytest.approx(0.25) and deep.compute()["d1"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="max_depth must be a positive number"):
        DepthMetric(max_depth=0)


# ----------------------------------------------------------------------------------------------
# 16-bit millimetre PNGs
# ----------------------------------------------------------------------------------------------


def test_depth_png_round_trip_in_millimetres(tmp_path):
    metres = torch.tensor([[0.0, 0.0004, 0.0006, 1.2344, 1.2346, 70.0, -1.0]])
    # -> mm 0, 0, 1, 1234, 1235, 65535 (clipped), 0 (clipped)
    expected = torch.tensor([[0.0, 0.0, 0.001, 1.234, 1.235, 65.535, 0.0]])
    path = tmp_path / "sub" / "0001.png"
    D.save_depth_png(path, metres)
    with Image.open(path) as im:
        assert im.mode == "I;16" and np.array(im).tolist() == [[0, 0, 1, 1234, 1235, 65535, 0]]
    back = D.read_depth_png(path)
    assert back.dtype == torch.float32 and back.shape == (1, 7)
    torch.testing.assert_close(back, expected)
    # the metric's input is exactly what the file holds
    assert torch.equal(D.quantise_mm(metres), back)
    assert [p.name for p in path.parent.iterdir()] == ["0001.png"]  # no temporary file left behind
    with pytest.raises(ValueError, match="NaN or infinite"):
        D.save_depth_png(tmp_path / "x.png", torch.tensor([[float("nan")]]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        D.quantise_mm(torch.tensor([float("inf")]))
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "grey8.png")
    with pytest.raises(DatasetFormatError, match="16-bit grey"):
        D.read_depth_png(tmp_path / "grey8.png")


# ----------------------------------------------------------------------------------------------
# NYU: GeoNet training frames and rawDepths
# ----------------------------------------------------------------------------------------------

MEAN2 = np.array([2 * 122.175, 2 * 116.169, 2 * 103.508])


def _geonet_frame(path: Path, rgb: np.ndarray, depth: np.ndarray) -> None:
    """A GeoNet-style frame: ``img`` = rgb - 2 * mean (float), ``depth`` metres, ``norm`` unused."""
    scipy_io = pytest.importorskip("scipy.io")
    path.parent.mkdir(parents=True, exist_ok=True)
    img = rgb.astype(np.float64) - MEAN2
    scipy_io.savemat(path, {"img": img, "depth": depth.astype(np.float64), "norm": np.zeros(rgb.shape)})


def test_geonet_reader_two_tiny_frames(tmp_path, caplog):
    rgb = np.zeros((2, 3, 3), np.float64)
    rgb[0, 0] = [10.5, 20.5, 30.5]  # +0.5: float rounding of the mean round trip must not truncate to 9, 19...
    rgb[0, 1] = [10.7, 300.0, -5.0]  # truncated, not rounded: 10; clipped to 255 and 0
    rgb[1, 2] = [255.5, 0.5, 128.5]
    depth = np.array([[1.0, 2.5, 0.0], [11.0, 0.25, 3.0]])
    _geonet_frame(tmp_path / "nyuv2_geonet" / "b_0002.mat", rgb, depth)
    _geonet_frame(tmp_path / "nyuv2_geonet" / "a_0001.mat", rgb * 0 + 0.5, depth * 0 + 1)
    with caplog.at_level(logging.WARNING, logger=nyu.__name__):
        data = make_dataset("nyuv2", tmp_path, "train", image_size=None)
    assert "fewer than the full set" in caplog.text and "not dropped" in caplog.text
    assert isinstance(data, nyu.NYUGeoNet) and data.task == "depth"
    assert data.ids == ["a_0001", "b_0002"] and len(data) == 2
    item = data[1]
    assert item["id"] == "b_0002" and item["image"].shape == (3, 2, 3) and item["depth"].shape == (2, 3)
    assert item["image"].dtype == torch.float32 and item["depth"].dtype == torch.float32
    as_uint8 = (item["image"] * 255).round().to(torch.int64)
    assert as_uint8[:, 0, 0].tolist() == [10, 20, 30]  # channel order kept as stored
    assert as_uint8[:, 0, 1].tolist() == [10, 255, 0]
    assert as_uint8[:, 1, 2].tolist() == [255, 0, 128]
    # depth as stored (11 m is kept: the loss and the metric drop it)
    assert item["depth"].tolist() == [[1.0, 2.5, 0.0], [11.0, 0.25, 3.0]]
    # resized like every reader, and limit
    small = make_dataset("nyuv2", tmp_path, "train", image_size=2, limit=1)
    assert small.ids == ["a_0001"] and small[0]["depth"].shape == (2, 2)


def test_geonet_frames_are_cropped_to_480_by_640(tmp_path):
    rgb = np.full((482, 643, 3), 100.5)
    depth = np.ones((482, 643))
    depth[480:, :] = 7.0  # rows beyond 480 and columns beyond 640 are cut
    depth[:, 640:] = 7.0
    _geonet_frame(tmp_path / "nyuv2" / "geonet" / "f.mat", rgb, depth)  # the other accepted folder
    item = make_dataset("nyuv2", tmp_path, "train", image_size=None)[0]
    assert item["depth"].shape == (480, 640) and item["image"].shape == (3, 480, 640)
    assert float(item["depth"].max()) == 1.0


def test_geonet_drops_probe3d_bad_positions_on_the_full_listing(tmp_path, monkeypatch, caplog):
    assert nyu.GEONET_BAD_POSITIONS == (21181, 6919)
    folder = tmp_path / "nyuv2_geonet"
    folder.mkdir()
    for k in range(7):
        (folder / f"f{k}.mat").touch()  # only listed here, never read
    # stand-in positions (5, then 2) on a "full" listing of 7: deleting 5 first leaves f0 f1 f2 f3 f4 f6,
    # then deleting 2 leaves f0 f1 f3 f4 f6 (the other order would give f0 f1 f3 f4 f5)
    monkeypatch.setattr(nyu, "GEONET_BAD_POSITIONS", (5, 2))
    with caplog.at_level(logging.WARNING, logger=nyu.__name__):
        data = make_dataset("nyuv2", tmp_path, "train")
    assert data.ids == ["f0", "f1", "f3", "f4", "f6"]
    assert "not dropped" not in caplog.text


def test_geonet_absent_warns_and_falls_back_to_the_labelled_frames(tmp_path, caplog):
    for item in ("0001", "0002"):
        (tmp_path / "nyuv2" / "train" / "rgb").mkdir(parents=True, exist_ok=True)
        (tmp_path / "nyuv2" / "train" / "depth").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "nyuv2" / "train" / "rgb" / f"{item}.png")
        D.save_depth_png(tmp_path / "nyuv2" / "train" / "depth" / f"{item}.png", torch.ones(4, 4))
    with caplog.at_level(logging.WARNING, logger=nyu.__name__):
        data = make_dataset("nyuv2", tmp_path, "train", image_size=None)
    assert isinstance(data, nyu.NYUv2Depth) and data.ids == ["0001", "0002"]
    assert "GeoNet" in caplog.text and "xjqi/GeoNet" in caplog.text and "--train-frames labelled" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=nyu.__name__):
        make_dataset("nyuv2", tmp_path, "train", image_size=None, train_frames="labelled")
    assert "GeoNet" not in caplog.text  # asked for the labelled frames: no warning


def test_geonet_ignored_for_val_and_for_labelled_and_empty_folder_errors(tmp_path):
    _geonet_frame(tmp_path / "nyuv2_geonet" / "a.mat", np.zeros((2, 2, 3)), np.ones((2, 2)))
    with pytest.raises(DatasetError, match="nyu_depth_v2_labeled.mat does not exist"):
        make_dataset("nyuv2", tmp_path, "val")  # the test frames are the labelled ones
    with pytest.raises(DatasetError, match="nyu_depth_v2_labeled.mat does not exist"):
        make_dataset("nyuv2", tmp_path, "train", train_frames="labelled")
    (tmp_path / "nyuv2_geonet" / "a.mat").unlink()
    with pytest.raises(DatasetError, match=r"(?s)nyuv2_geonet/\*\.mat does not exist.*holds no \.mat file"):
        make_dataset("nyuv2", tmp_path, "train")
    with pytest.raises(Exception, match="train_frames: one of"):
        make_dataset("nyuv2", tmp_path, "train", train_frames="geonett")


def test_geonet_frame_without_depth_names_the_file(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    (tmp_path / "nyuv2_geonet").mkdir()
    scipy_io.savemat(tmp_path / "nyuv2_geonet" / "x.mat", {"img": np.zeros((2, 2, 3))})
    data = make_dataset("nyuv2", tmp_path, "train")
    with pytest.raises(DatasetFormatError, match=r"x\.mat: no 'depth' array"):
        data[0]
