from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from featlift.errors import MissingDependencyError
from featlift.eval import metrics
from featlift.eval.metrics import DepthMetric, SegmentationMetric

# Hand-built case, K = 4 (class 3 appears in neither target nor prediction).
# Pixel (0, 3) is ignored; its prediction (2) must not count.
TARGET = torch.tensor([[[0, 0, 1, 255], [1, 2, 2, 0]]])
PRED = torch.tensor([[[0, 1, 1, 2], [1, 2, 0, 0]]])
# counted (target, pred) pairs: (0,0) (0,1) (1,1) (1,1) (2,2) (2,0) (0,0)
HAND_CM = [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]


def test_confusion_matrix_by_hand_leaves_ignored_pixels_out():
    m = SegmentationMetric(4)
    m.update(PRED, TARGET)
    assert m.confusion.dtype == torch.int64
    assert m.confusion.tolist() == HAND_CM


def test_iou_miou_and_pixel_accuracy_by_hand():
    m = SegmentationMetric(4, class_names=["bg", "cat", "dog", "cow"])
    m.update(PRED, TARGET)
    out = m.compute()
    # class 0: TP 2, FP 1, FN 1; class 1: TP 2, FP 1, FN 0; class 2: TP 1, FP 0, FN 1; class 3: union 0
    assert out["iou"]["bg"] == pytest.approx(2 / 4)
    assert out["iou"]["cat"] == pytest.approx(2 / 3)
    assert out["iou"]["dog"] == pytest.approx(1 / 2)
    assert out["iou"]["cow"] is None
    assert out["miou"] == pytest.approx((1 / 2 + 2 / 3 + 1 / 2) / 3)  # the absent class is not averaged in
    assert out["pixel_accuracy"] == pytest.approx(5 / 7)
    assert list(out["iou"]) == ["bg", "cat", "dog", "cow"]


def test_class_only_predicted_counts_with_zero_iou():
    m = SegmentationMetric(3)
    m.update(torch.tensor([[[0, 2]]]), torch.tensor([[[0, 0]]]))
    out = m.compute()
    # class 0: TP 1, FN 1 -> 1/2; class 2: FP 1 only -> 0 and counted; class 1 absent -> None
    assert out["iou"] == {"0": pytest.approx(0.5), "1": None, "2": 0.0}
    assert out["miou"] == pytest.approx(0.25)
    assert out["pixel_accuracy"] == pytest.approx(0.5)


def test_two_updates_equal_one_update_of_the_concatenation():
    g = torch.Generator().manual_seed(0)
    k = 5
    preds = [torch.randint(0, k, (2, 7, 9), generator=g) for _ in range(2)]
    targets = [torch.randint(0, k, (2, 7, 9), generator=g) for _ in range(2)]
    for t in targets:
        t[torch.rand(t.shape, generator=g) < 0.2] = 255
    split = SegmentationMetric(k)
    for p, t in zip(preds, targets, strict=True):
        split.update(p, t)
    joint = SegmentationMetric(k)
    joint.update(torch.cat(preds), torch.cat(targets))
    assert torch.equal(split.confusion, joint.confusion)
    assert split.compute() == joint.compute()
    # and both agree with a plain numpy bincount confusion matrix
    p = torch.cat(preds).numpy().ravel()
    t = torch.cat(targets).numpy().ravel()
    keep = t != 255
    ref = np.bincount(t[keep] * k + p[keep], minlength=k * k).reshape(k, k)
    assert split.confusion.numpy().tolist() == ref.tolist()


def test_reset_starts_over():
    m = SegmentationMetric(4)
    m.update(PRED, TARGET)
    m.reset()
    assert m.confusion.sum() == 0
    m.update(PRED, TARGET)
    assert m.confusion.tolist() == HAND_CM


@pytest.mark.parametrize("bad", [4, -1, 100])
def test_prediction_outside_the_classes_raises(bad):
    m = SegmentationMetric(4)
    pred = PRED.clone()
    pred[0, 1, 1] = bad
    with pytest.raises(ValueError, match="pred holds values"):
        m.update(pred, TARGET)
    assert m.confusion.sum() == 0


def test_prediction_outside_the_classes_raises_even_on_ignored_pixels():
    m = SegmentationMetric(4)
    pred = PRED.clone()
    pred[0, 0, 3] = 9  # the ignored pixel
    with pytest.raises(ValueError, match="outside 0..3"):
        m.update(pred, TARGET)


def test_target_outside_the_classes_raises():
    m = SegmentationMetric(4)
    target = TARGET.clone()
    target[0, 0, 0] = 7
    with pytest.raises(ValueError, match="target holds values"):
        m.update(PRED, target)


def test_bad_inputs_raise_clear_errors():
    m = SegmentationMetric(4)
    with pytest.raises(ValueError, match="integer class indices"):
        m.update(PRED.float(), TARGET)
    with pytest.raises(ValueError, match="differ in shape"):
        m.update(PRED[:, :1], TARGET)
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        m.update(PRED[0], TARGET[0])
    with pytest.raises(ValueError, match="also a valid class index"):
        SegmentationMetric(4, ignore_index=0)
    with pytest.raises(ValueError, match="class_names"):
        SegmentationMetric(3, class_names=["a", "b"])
    with pytest.raises(ValueError, match="distinct"):
        SegmentationMetric(2, class_names=["a", "a"])
    with pytest.raises(ValueError, match="no pixel was counted"):
        m.compute()
    m.update(torch.zeros(1, 2, 2, dtype=torch.int64), torch.full((1, 2, 2), 255))
    with pytest.raises(ValueError, match="no pixel was counted"):
        m.compute()


def test_ignore_index_none_counts_every_pixel():
    m = SegmentationMetric(2, ignore_index=None)
    m.update(torch.tensor([[[0, 1, 1]]]), torch.tensor([[[0, 1, 0]]]))
    assert m.confusion.tolist() == [[1, 1], [0, 1]]


def test_missing_torchmetrics_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchmetrics", None)
    with pytest.raises(MissingDependencyError, match=r'pip install "featlift\[eval\]"'):
        metrics.require_torchmetrics()


def test_depth_metrics_by_hand_with_invalid_pixels():
    nan = float("nan")
    target = torch.tensor([[[1.0, 1.0, 2.0, 2.0], [0.0, nan, 4.0, 12.0]]])
    pred = torch.tensor([[[1.0, 1.5, 3.5, 0.0], [7.0, 3.0, 4.5, 5.0]]])
    # valid (pred, target): (1, 1) (1.5, 1) (3.5, 2) (0, 2) (4.5, 4); target 0, NaN and 12 > max_depth 10 skipped
    # thr = max(t / p, p / t), p floored at 1e-9 in t / p: 1, 1.5, 1.75, 2e9, 1.125
    # d1 (< 1.25): 1, 1.125 -> 2/5; d2 (< 1.5625): + 1.5 -> 3/5; d3 (< 1.953125): + 1.75 -> 4/5
    # squared errors 0, 0.25, 2.25, 4, 0.25 -> rmse sqrt(6.75 / 5); abs_rel (0 + 0.5 + 0.75 + 1 + 0.125) / 5
    m = DepthMetric()
    m.update(pred, target)
    out = m.compute()
    assert out["images"] == 1
    assert out["d1"] == pytest.approx(2 / 5) and out["d2"] == pytest.approx(3 / 5) and out["d3"] == pytest.approx(4 / 5)
    assert out["rmse"] == pytest.approx(math.sqrt(6.75 / 5), rel=1e-12)
    assert out["abs_rel"] == pytest.approx(2.375 / 5, rel=1e-12)
    assert set(out) == {
        "d1", "d2", "d3", "rmse", "abs_rel",
        "d1_aligned", "d2_aligned", "d3_aligned", "rmse_aligned", "abs_rel_aligned",
        "images",
    }  # fmt: skip
    m.reset()
    m.update(torch.ones(1, 1, 3), torch.ones(1, 1, 3))
    out = m.compute()
    assert (out["rmse"], out["abs_rel"], out["d1"], out["images"]) == (0.0, 0.0, 1.0, 1)


def test_depth_bad_inputs_raise():
    m = DepthMetric()
    with pytest.raises(ValueError, match="no image was counted"):
        m.compute()
    with pytest.raises(ValueError, match="NaN or infinite"):
        m.update(torch.tensor([[[float("inf")]]]), torch.tensor([[[1.0]]]))
    m.update(torch.tensor([[[float("nan")]]]), torch.tensor([[[0.0]]]))  # NaN where the target is invalid is fine
    with pytest.raises(ValueError, match="no image was counted"):
        m.compute()
    with pytest.raises(ValueError, match="float tensor"):
        m.update(torch.ones(1, 2, 2, dtype=torch.int64), torch.ones(1, 2, 2))
    with pytest.raises(ValueError, match="differ in shape"):
        m.update(torch.ones(1, 2, 2), torch.ones(1, 2, 3))
