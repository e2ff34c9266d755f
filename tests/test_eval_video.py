from __future__ import annotations

import math

import pytest
import torch

from featlift.eval.video import boundary_map, j_and_f, propagate

H = W = 16
FRAMES = 8


def moving_masks() -> list[torch.Tensor]:
    """Object 1: a 3x3 square moving right one cell per frame; object 2: a 3x4 block moving down."""
    masks = []
    for t in range(FRAMES):
        m = torch.zeros(H, W, dtype=torch.int64)
        m[2:5, 2 + t : 5 + t] = 1
        m[3 + t : 6 + t, 10:14] = 2
        masks.append(m)
    return masks


def colour_features(masks: list[torch.Tensor], channels: int = 6, noise: float = 0.05) -> list[torch.Tensor]:
    """Features that encode each pixel's object id as a colour, independent of position (plus a little noise)."""
    g = torch.Generator().manual_seed(1)
    return [
        torch.nn.functional.one_hot(m, channels).permute(2, 0, 1).float()
        + noise * torch.randn(channels, H, W, generator=g)
        for m in masks
    ]


def test_labels_follow_moving_objects():
    gt = moving_masks()
    for radius in (12, None):
        pred = propagate(colour_features(gt), gt[0], radius=radius)
        assert len(pred) == FRAMES
        assert all(p.dtype == torch.int64 and p.shape == (H, W) for p in pred)
        assert torch.equal(pred[0], gt[0])
        for p, g in zip(pred, gt, strict=True):
            assert torch.equal(p, g)
        score = j_and_f(pred, gt, num_objects=2)
        assert score["jf_mean"] == pytest.approx(1.0)


def test_negative_controls_score_lower():
    gt = moving_masks()
    g = torch.Generator().manual_seed(0)
    random_features = [torch.randn(16, H, W, generator=g) for _ in range(FRAMES)]
    random_score = j_and_f(propagate(random_features, gt[0]), gt, num_objects=2)["jf_mean"]
    assert random_score < 0.3
    # A predictor that ignores motion (copies frame 0) is also far from perfect on this sequence.
    static_score = j_and_f([gt[0]] * FRAMES, gt, num_objects=2)["jf_mean"]
    assert static_score < 0.5
    # A zero-size window cannot follow the motion either.
    blind = propagate(colour_features(gt), gt[0], radius=0)
    assert j_and_f(blind, gt, num_objects=2)["jf_mean"] < 0.5


def reference_propagation(features, first_mask, topk, context, radius, temperature):
    """Position-by-position loops over the protocol's definition."""
    feats = [torch.nn.functional.normalize(f.double(), dim=0) for f in features]
    _, h, w = feats[0].shape
    labels = int(first_mask.max()) + 1
    soft = [torch.nn.functional.one_hot(first_mask, labels).permute(2, 0, 1).double()]
    for t in range(1, len(feats)):
        sources = [0, *range(max(1, t - context), t)]
        out = torch.zeros(labels, h, w, dtype=torch.float64)
        for y in range(h):
            for x in range(w):
                cand = []
                for s in sources:
                    for sy in range(h):
                        for sx in range(w):
                            if radius is not None and (abs(sy - y) > radius or abs(sx - x) > radius):
                                continue
                            cand.append((float(feats[t][:, y, x] @ feats[s][:, sy, sx]), soft[s][:, sy, sx]))
                cand.sort(key=lambda a: -a[0])
                best = cand[:topk]
                weights = torch.softmax(torch.tensor([a for a, _ in best], dtype=torch.float64) / temperature, dim=0)
                out[:, y, x] = sum(wt * lab for wt, (_, lab) in zip(weights, best, strict=True))
        soft.append(out)
    return soft


@pytest.mark.parametrize("radius", [1, None])
def test_propagation_matches_a_loop_reference(radius):
    g = torch.Generator().manual_seed(3)
    features = [torch.randn(4, 5, 5, generator=g, dtype=torch.float64) for _ in range(5)]
    first = torch.randint(0, 3, (5, 5), generator=g)
    kwargs = {"topk": 4, "context": 2, "radius": radius, "temperature": 0.1}
    masks, probs = propagate(features, first, return_probabilities=True, **kwargs)
    ref = reference_propagation(features, first, **kwargs)
    for p, r in zip(probs, ref, strict=True):
        torch.testing.assert_close(p, r)
        torch.testing.assert_close(p.sum(dim=0), torch.ones(5, 5, dtype=torch.float64))
    for m, r in zip(masks[1:], ref[1:], strict=True):
        assert torch.equal(m, r.argmax(dim=0))


@pytest.mark.parametrize("radius", [2, None])
def test_chunking_does_not_change_the_result(radius):
    g = torch.Generator().manual_seed(4)
    features = [torch.randn(8, 9, 11, generator=g) for _ in range(4)]
    first = torch.randint(0, 4, (9, 11), generator=g)
    _, whole = propagate(features, first, radius=radius, return_probabilities=True)
    _, tiny = propagate(features, first, radius=radius, return_probabilities=True, max_affinity_elements=1)
    _, some = propagate(features, first, radius=radius, return_probabilities=True, max_affinity_elements=3000)
    for a, b, c in zip(whole, tiny, some, strict=True):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, c)


def test_propagate_rejects_bad_inputs():
    f = [torch.randn(3, 4, 4)]
    with pytest.raises(ValueError, match="feature grid"):
        propagate(f, torch.zeros(5, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="integer object ids"):
        propagate(f, torch.zeros(4, 4))
    with pytest.raises(ValueError, match="every frame"):
        propagate([*f, torch.randn(3, 4, 5)], torch.zeros(4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="non-empty"):
        propagate([], torch.zeros(4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="negative"):
        propagate(f, -torch.ones(4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="topk"):
        propagate(f, torch.zeros(4, 4, dtype=torch.int64), topk=0)
    with pytest.raises(ValueError, match="temperature"):
        propagate(f, torch.zeros(4, 4, dtype=torch.int64), temperature=0.0)


def test_boundary_map_by_hand():
    m = torch.zeros(3, 3, dtype=torch.int64)
    m[1, 1] = 1
    expected = torch.zeros(3, 3, dtype=torch.bool)
    expected[0, 0] = expected[0, 1] = expected[1, 0] = expected[1, 1] = True
    assert torch.equal(boundary_map(m), expected)


def square(h: int, w: int, y: int, x: int, size: int = 4) -> torch.Tensor:
    m = torch.zeros(h, w, dtype=torch.int64)
    m[y : y + size, x : x + size] = 1
    return m


def test_j_and_f_of_a_square_shifted_by_two_pixels():
    # 20x20: tolerance ceil(0.008 * sqrt(800)) = 1 pixel, a disk of radius 1 is a plus sign.
    gt = [square(20, 20, 5, 5)] * 5
    pred = [square(20, 20, 5, 7)] * 5
    out = j_and_f(pred, gt, num_objects=1)
    # J: overlap 4x2 = 8, union 24
    assert out["j_mean"] == pytest.approx(8 / 24)
    # F: 16 boundary pixels each; 10 of the prediction's lie within the plus of a gt boundary pixel and
    # 10 of the gt's within one of the prediction's -> precision = recall = 10/16
    assert out["f_mean"] == pytest.approx(10 / 16)
    assert out["jf_mean"] == pytest.approx((8 / 24 + 10 / 16) / 2)
    assert out["per_object"] == {1: {"j": pytest.approx(8 / 24), "f": pytest.approx(10 / 16)}}


def test_j_and_f_of_a_square_shifted_by_one_pixel():
    gt = [square(20, 20, 5, 5)] * 3
    pred = [square(20, 20, 5, 6)] * 3
    out = j_and_f(pred, gt, num_objects=1)
    assert out["j_mean"] == pytest.approx(12 / 20)
    assert out["f_mean"] == pytest.approx(1.0)  # every boundary pixel is one step from the other's


def test_boundary_tolerance_grows_with_the_diagonal():
    # 200x200: ceil(0.008 * 282.8) = 3 pixels; a 3-pixel shift is fully tolerated, a 4-pixel one is not.
    gt = [square(200, 200, 50, 50, size=40)] * 3
    assert j_and_f([square(200, 200, 50, 53, size=40)] * 3, gt, 1)["f_mean"] == pytest.approx(1.0)
    assert j_and_f([square(200, 200, 50, 54, size=40)] * 3, gt, 1)["f_mean"] < 0.9
    assert j_and_f([square(200, 200, 50, 54, size=40)] * 3, gt, 1, bound_th=4)["f_mean"] == pytest.approx(1.0)


def test_j_and_f_skips_first_and_last_frames_and_averages_objects():
    good = square(20, 20, 5, 5)
    wrong = torch.zeros(20, 20, dtype=torch.int64)
    gt = [good, good, good, good]
    pred = [wrong, good, square(20, 20, 5, 7), wrong]
    out = j_and_f(pred, gt, num_objects=2)
    # object 1: frames 1 and 2 -> J (1 + 1/3) / 2, F (1 + 10/16) / 2; object 2 absent everywhere -> J = F = 1
    j1, f1 = (1 + 8 / 24) / 2, (1 + 10 / 16) / 2
    assert out["per_object"][1] == {"j": pytest.approx(j1), "f": pytest.approx(f1)}
    assert out["per_object"][2] == {"j": 1.0, "f": 1.0}
    assert out["j_mean"] == pytest.approx((j1 + 1) / 2)
    assert out["f_mean"] == pytest.approx((f1 + 1) / 2)


def test_missing_object_scores_zero():
    gt = [square(20, 20, 5, 5)] * 3
    pred = [torch.zeros(20, 20, dtype=torch.int64)] * 3
    out = j_and_f(pred, gt, num_objects=1)
    assert out["j_mean"] == 0.0 and out["f_mean"] == 0.0


def test_j_and_f_rejects_bad_inputs():
    m = square(20, 20, 5, 5)
    with pytest.raises(ValueError, match="at least 3 frames"):
        j_and_f([m, m], [m, m], 1)
    with pytest.raises(ValueError, match="frames"):
        j_and_f([m, m, m], [m, m], 1)
    with pytest.raises(ValueError, match="differ in shape"):
        j_and_f([m, m[:10], m], [m, m, m], 1)
    with pytest.raises(ValueError, match="integer"):
        j_and_f([m, m.float(), m], [m, m, m], 1)
    assert math.isclose(j_and_f([m, m, m], [m, m, m], 1)["jf_mean"], 1.0)
