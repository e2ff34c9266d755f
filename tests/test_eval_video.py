from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from featlift.eval import video
from featlift.eval.protocols import protocol
from featlift.eval.video import boundary_map, j_and_f, labels_from_probabilities, mask_to_grid, norm_mask, propagate

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
    # three scored frames, all alike: recall counts frames above 0.5 (J 1/3: none, F 5/8: all); no decay
    assert out["per_object"] == {
        1: {"j": pytest.approx(8 / 24), "f": pytest.approx(10 / 16), "j_recall": 0.0, "f_recall": 1.0}
        | {"j_decay": pytest.approx(0.0), "f_decay": pytest.approx(0.0)}
    }
    assert (out["j_recall"], out["f_recall"]) == (0.0, 1.0)


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
    # two scored frames: the decay bins are frame 1 alone and frame 2 alone (ids round(linspace(1, 2, 5)) - 1
    # = 0, 0, 1, 1, 1), so the decay is frame 1's value minus frame 2's
    assert out["per_object"][1] == {
        "j": pytest.approx(j1),
        "f": pytest.approx(f1),
        "j_recall": 0.5,  # J: 1 and 1/3
        "f_recall": 1.0,  # F: 1 and 5/8
        "j_decay": pytest.approx(1 - 8 / 24),
        "f_decay": pytest.approx(1 - 10 / 16),
    }
    assert out["per_object"][2] == {
        "j": 1.0,
        "f": 1.0,
        "j_recall": 1.0,
        "f_recall": 1.0,
        "j_decay": 0.0,
        "f_decay": 0.0,
    }
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


def test_decay_uses_the_toolkits_overlapping_bins_rounded_half_up():
    # 9 frames, 7 scored; object 1 is found (J = F = 1) in scored frames 1, 2 and 6, missed (0) elsewhere.
    # The toolkit's bins: round(linspace(1, 7, 5)) - 1 = round(1, 2.5, 4, 5.5, 7) - 1 = 0, 2, 3, 5, 6 (halves
    # up), first bin = frames 0..2 inclusive, last = 5..6: decay 2/3 - 1/2 = 1/6. (Rounding halves to even
    # would give 1 - 1/2; four disjoint chunks would give 1 - 1/2 as well.)
    obj = square(20, 20, 5, 5)
    empty = torch.zeros(20, 20, dtype=torch.int64)
    found = [1, 1, 0, 0, 0, 1, 0]
    pred = [obj] + [obj if hit else empty for hit in found] + [obj]
    out = j_and_f(pred, [obj] * 9, 1)
    for key in ("j", "f"):
        assert out[f"{key}_mean"] == pytest.approx(3 / 7)
        assert out[f"{key}_recall"] == pytest.approx(3 / 7)
        assert out[f"{key}_decay"] == pytest.approx(2 / 3 - 1 / 2)


def test_recall_counts_frames_strictly_above_one_half():
    gt = square(20, 20, 5, 5)  # 4 x 4
    half = torch.zeros(20, 20, dtype=torch.int64)
    half[5:9, 5:7] = 1  # its left half: J = 8 / 16 = 0.5 exactly
    out = j_and_f([gt, half, gt, gt], [gt] * 4, 1)  # scored: frame 1 (J 0.5) and frame 2 (J 1)
    assert out["j_mean"] == pytest.approx(0.75)
    assert out["j_recall"] == 0.5


def test_void_in_the_ground_truth_counts_as_background():
    gt = square(20, 20, 5, 5)
    gt[5, 5:9] = 255  # the square's top row is void: the prediction's top row is then a false positive
    gt[15:18, 0:3] = 255  # void elsewhere, where the prediction is background: no effect
    pred = square(20, 20, 5, 5)
    out = j_and_f([pred] * 3, [gt] * 3, 1)
    assert out["j_mean"] == pytest.approx(12 / 16)


def test_norm_mask_by_hand():
    x = torch.tensor(
        [
            [[0.2, 0.6, 1.0]],  # min-max: 0, 0.5, 1
            [[0.0, 0.0, 0.0]],  # max 0: left as it is
            [[-0.5, -0.1, -0.2]],  # max < 0: left as it is
            [[0.5, 0.5, 0.5]],  # constant positive: DINO gets 0/0 = NaN, here 0
        ]
    )
    out = norm_mask(x)
    expected = torch.tensor([[[0.0, 0.5, 1.0]], [[0.0, 0.0, 0.0]], [[-0.5, -0.1, -0.2]], [[0.0, 0.0, 0.0]]])
    torch.testing.assert_close(out, expected)
    assert x[0, 0, 0] == 0.2  # the input is not changed


def test_bilinear_and_norm_mask_find_an_object_the_coarse_argmax_misses():
    # Grid 2x2 (two identical rows); the object channel never wins on the grid (0.4 and 0.1 against 0.6 and 0.9).
    probs = torch.tensor([[[0.6, 0.9]] * 2, [[0.4, 0.1]] * 2])
    coarse = labels_from_probabilities(probs, (8, 8), (8, 8), upsample="nearest")
    assert torch.equal(coarse, torch.zeros(8, 8, dtype=torch.int64))
    # Bilinear to 8 wide: column x samples grid position (x + 0.5) / 4 - 0.5, i.e. cell 1's weight is
    # 0, 0, 1/8, 3/8, 5/8, 7/8, 1, 1. norm_mask maps background 0.6..0.9 and object 0.1..0.4 both to 0..1, so
    # background = w1 and object = 1 - w1: the object wins in columns 0..3.
    fine = labels_from_probabilities(probs, (8, 8), (8, 8))
    expected = torch.zeros(8, 8, dtype=torch.int64)
    expected[:, :4] = 1
    assert torch.equal(fine, expected)
    # then to the annotation's size (4 x 16) by pixel centres: every frame column covers two annotation columns
    wide = labels_from_probabilities(probs, (8, 8), (4, 16))
    assert torch.equal(wide, expected[:4].repeat_interleave(2, dim=1))


def test_first_mask_grid_labels_come_from_pixel_centres():
    mask = torch.zeros(4, 8, dtype=torch.int64)
    mask[:, 2:6] = 1
    mask[:, 6:] = 255
    # grid 1x2: cell centres fall on pixels (2, 2) -> 1 and (2, 6) -> void -> 0
    assert torch.equal(mask_to_grid(mask, (1, 2)), torch.tensor([[1, 0]]))
    # torch's legacy nearest samples the top-left pixels (0, 0) and (0, 4): the object shifts one cell right
    legacy = F.interpolate(mask[None, None].float(), size=(1, 2), mode="nearest")[0, 0].long()
    assert torch.equal(legacy, torch.tensor([[0, 1]]))


def test_propagate_weighs_the_top_k_with_temperature_one_tenth_by_default():
    # Frame 0: two cells, features (1, 0) labelled 0 and (0, 1) labelled 1; frame 1: both cells (0.6, 0.8).
    # Cosines 0.6 and 0.8; weights softmax(0.6 / 0.1, 0.8 / 0.1): label 1 gets e^8 / (e^6 + e^8) = 1 / (1 + e^-2).
    frame0 = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    frame1 = torch.tensor([[[0.6, 0.6]], [[0.8, 0.8]]])
    first = torch.tensor([[0, 1]])
    _, probs = propagate([frame0, frame1], first, return_probabilities=True)
    torch.testing.assert_close(probs[1][1], torch.full((1, 2), 1 / (1 + math.exp(-2))))
    _, probs = propagate([frame0, frame1], first, temperature=0.07, return_probabilities=True)
    torch.testing.assert_close(probs[1][1], torch.full((1, 2), 1 / (1 + math.exp(-0.2 / 0.07))))


# ------------------------------------------------------------------------------------------------------
# evaluate_video on synthetic DAVIS folders, with the pixel colour as the feature
# ------------------------------------------------------------------------------------------------------

VH, VW = 32, 48  # annotation size = frame size: image_size 32 keeps it, stride 4 gives an 8 x 12 grid
COLOURS = {1: (230, 25, 25), 2: (25, 230, 25), 3: (25, 25, 230)}
SOLO = {1: (8, 8)}  # top-left corners of the 12 x 12 objects (multiples of the stride: whole grid cells)
TRIO = {1: (4, 4), 2: (4, 20), 3: (16, 32)}
SMALL = protocol(None, "video").with_settings(image_size=32)  # DINO's protocol at the frames' own size
PALETTE = [0, 0, 0, 250, 0, 0, 0, 250, 0, 0, 0, 250] + [7] * 756


class ColourSource:
    """Features = the frame's pixel colours (so objects are their colours)."""

    name = "colour/src"

    def features(self, images):
        return images.clone()


def _davis(root, annotations: dict, frames: int) -> None:
    """``annotations[seq](t, objects)`` gives frame t's ground truth; the frames show ``objects`` (a seq's
    dict) where frame 0's annotation puts them, at every t."""
    base = root / "DAVIS"
    (base / "ImageSets" / "2017").mkdir(parents=True)
    (base / "ImageSets" / "2017" / "val.txt").write_text("".join(f"{seq}\n" for seq in annotations))
    for seq, (objects, annotate) in annotations.items():
        image = np.full((VH, VW, 3), 128, dtype=np.uint8)
        for k, (y, x) in objects.items():
            image[y : y + 12, x : x + 12] = COLOURS[k]
        for sub in ("JPEGImages", "Annotations"):
            (base / sub / "480p" / seq).mkdir(parents=True)
        for t in range(frames):
            jpg = base / "JPEGImages" / "480p" / seq / f"{t:05d}.jpg"
            Image.fromarray(image).save(jpg, quality=100, subsampling=0)  # no chroma subsampling
            png = Image.frombytes("P", (VW, VH), annotate(t, objects).astype(np.uint8).tobytes())
            png.putpalette(PALETTE)
            png.save(base / "Annotations" / "480p" / seq / f"{t:05d}.png")


def _boxes(objects: dict, shift: int = 0, *, corners: bool = True) -> np.ndarray:
    m = np.zeros((VH, VW), dtype=np.uint8)
    for k, (y, x) in objects.items():
        m[y : y + 12, x + shift : x + shift + 12] = k
        if not corners:
            m[[y, y, y + 11, y + 11], [x + shift, x + shift + 11, x + shift, x + shift + 11]] = 0
    return m


def _propagated(objects: dict) -> np.ndarray:
    """What DINO's upsampling makes of objects that are whole blocks of grid cells: the squares without
    their corner pixels. A corner pixel sits 0.625 cells from the next cell centre along each axis (pixel
    centre (0 + 0.5) / 4 - 0.5 = -0.375 from its own), so bilinear gives the object 0.625² < 1/2 there; the
    pixels beside a corner keep it (0.625 · 0.875 > 1/2)."""
    return _boxes(objects, corners=False)


@pytest.fixture
def colour_source(monkeypatch):
    monkeypatch.setattr(video, "make_sources", lambda upsamplers, options: iter([ColourSource()]))


def test_davis_scores_average_over_objects_not_sequences(tmp_path, colour_source):
    # "solo" (1 object): from frame 1 on, the annotation puts the object 20 pixels right of where the frames
    # show it, so propagation (which follows the colour) scores J = F = 0. "trio" (3 objects): annotated as
    # propagation predicts them, J = F = 1 for each.
    _davis(
        tmp_path,
        {
            "solo": (SOLO, lambda t, objs: _boxes(objs, 20 if t else 0)),
            "trio": (TRIO, lambda t, objs: _propagated(objs)),
        },
        frames=5,
    )
    report = video.evaluate_video("davis", tmp_path, ["colours"], protocol=SMALL)
    result = report["results"]["colour/src"]
    assert set(result["objects"]) == {"solo_1", "trio_1", "trio_2", "trio_3"}
    assert result["objects"]["solo_1"] == {
        "j": 0.0, "f": 0.0, "j_recall": 0.0, "f_recall": 0.0, "j_decay": 0.0, "f_decay": 0.0
    }  # fmt: skip
    for k in (1, 2, 3):
        assert result["objects"][f"trio_{k}"]["j"] == 1.0 and result["objects"][f"trio_{k}"]["f"] == 1.0
    assert result["sequences"] == {"solo": 0.0, "trio": 1.0}
    # over the 4 objects: (0 + 1 + 1 + 1) / 4; the mean over the 2 sequences would be 0.5
    for key in ("jf_mean", "j_mean", "f_mean", "j_recall", "f_recall"):
        assert result[key] == pytest.approx(0.75)
    assert sum(result["sequences"].values()) / 2 == pytest.approx(0.5)
    assert result["j_decay"] == 0.0 and result["f_decay"] == 0.0
    proto = report["protocol"]
    assert proto["name"] == "dino" and proto["val_images"] == 2 and proto["objects"] == 4
    assert proto["settings"]["temperature"] == {
        "value": 0.1,
        "source": "facebookresearch/dino: eval_video_segmentation.py (affinity / 0.1)",
    }


def test_the_protocol_reaches_propagate(tmp_path, colour_source, monkeypatch):
    _davis(tmp_path, {"trio": (TRIO, lambda t, objs: _boxes(objs))}, frames=3)
    calls = []
    real = video.propagate

    def spy(features, first_mask, **kwargs):
        calls.append((features, first_mask, kwargs))
        return real(features, first_mask, **kwargs)

    monkeypatch.setattr(video, "propagate", spy)
    video.evaluate_video("davis", tmp_path, ["colours"], protocol=SMALL)
    features, first, kwargs = calls[-1]
    assert kwargs == {"topk": 5, "context": 7, "radius": 12, "temperature": 0.1, "return_probabilities": True}
    assert [tuple(f.shape) for f in features] == [(3, 8, 12)] * 3
    # the first annotation on the 8 x 12 grid: pixel (4i + 2, 4j + 2) of each cell
    assert torch.equal(first, torch.from_numpy(_boxes(TRIO)[2::4, 2::4]).long())

    changed = SMALL.with_settings(temperature=0.2, topk=3, stride=8, radius=4)
    report = video.evaluate_video("davis", tmp_path, ["colours"], protocol=changed)
    features, _, kwargs = calls[-1]
    assert kwargs == {"topk": 3, "context": 7, "radius": 4, "temperature": 0.2, "return_probabilities": True}
    assert tuple(features[0].shape) == (3, 4, 6)
    assert report["protocol"]["settings"]["temperature"] == {"value": 0.2, "source": "set by the user"}


def test_evaluate_video_refuses_the_old_keywords_and_other_protocols(tmp_path):
    with pytest.raises(TypeError, match=r"with_settings\(stride=\.\.\., temperature=\.\.\.\)"):
        video.evaluate_video("davis", tmp_path, ["bilinear"], temperature=0.07, stride=4)
    with pytest.raises(ValueError, match="VideoProtocol"):
        video.evaluate_video("davis", tmp_path, ["bilinear"], protocol=protocol(None, "seg"))


def _toolkit_boundary(seg: np.ndarray) -> np.ndarray:
    # a pixel differs from its right, lower or lower-right neighbour; past the image's edge the neighbour is
    # the edge pixel itself (which reproduces seg2bmap's special last row and column)
    padded = np.pad(seg, ((0, 1), (0, 1)), mode="edge")
    return (seg != padded[:-1, 1:]) | (seg != padded[1:, :-1]) | (seg != padded[1:, 1:])


def _toolkit_dilate(b: np.ndarray, r: int) -> np.ndarray:
    padded = np.pad(b, r)
    out = np.zeros_like(b)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy * dy + dx * dx <= r * r:
                out |= padded[r + dy : r + dy + b.shape[0], r + dx : r + dx + b.shape[1]]
    return out


def _toolkit_frame(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    union = (pred | gt).sum()
    j = 1.0 if union == 0 else (pred & gt).sum() / union
    r = math.ceil(0.008 * math.sqrt(pred.shape[0] ** 2 + pred.shape[1] ** 2))
    pb, gb = _toolkit_boundary(pred), _toolkit_boundary(gt)
    if pb.sum() == 0 or gb.sum() == 0:
        return j, float(pb.sum() == gb.sum())
    precision = (pb & _toolkit_dilate(gb, r)).sum() / pb.sum()
    recall = (gb & _toolkit_dilate(pb, r)).sum() / gb.sum()
    return j, 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _toolkit_stats(values: list[float]) -> tuple[float, float, float]:
    v = np.array(values)
    ids = (np.round(np.linspace(1, len(v), 5) + 1e-10) - 1).astype(int)
    return v.mean(), (v > 0.5).mean(), v[ids[0] : ids[1] + 1].mean() - v[ids[3] : ids[4] + 1].mean()


def _toolkit_scores(davis: Path, results: Path) -> dict:
    """J and F per object from PNG files, as the DAVIS 2017 toolkit (semi-supervised) computes them."""
    objects = {}
    for seq in (davis / "ImageSets" / "2017" / "val.txt").read_text().split():
        names = sorted(p.stem for p in (davis / "Annotations" / "480p" / seq).glob("*.png"))
        gt = np.stack([np.array(Image.open(davis / "Annotations" / "480p" / seq / f"{n}.png")) for n in names])
        gt[gt == 255] = 0
        pred = np.stack([np.array(Image.open(results / seq / f"{n}.png")) for n in names[1:-1]])
        for k in range(1, int(gt[0].max()) + 1):
            js, fs = zip(*(_toolkit_frame(p == k, g == k) for p, g in zip(pred, gt[1:-1], strict=True)), strict=True)
            (jm, jr, jd), (fm, fr, fd) = _toolkit_stats(js), _toolkit_stats(fs)
            objects[f"{seq}_{k}"] = {"j": jm, "f": fm, "j_recall": jr, "f_recall": fr, "j_decay": jd, "f_decay": fd}
    return objects


def test_saved_predictions_rescore_to_the_report(tmp_path, colour_source):
    # "solo": the annotation drifts one pixel right per frame from where the frames show the object (J and F
    # fall: a decay); "trio": the annotation marks the red object's top two rows void in frame 2 (void counts
    # as background: the prediction's rows there are false positives), and frame 0 has void in a corner.
    def solo(t, objs):
        return _boxes(objs, t)

    def trio(t, objs):
        m = _propagated(objs)
        if t == 0:
            m[28:, :8] = 255
        if t == 2:
            m[4:6, 4:16] = 255
        return m

    _davis(tmp_path / "davis", {"solo": (SOLO, solo), "trio": (TRIO, trio)}, frames=8)
    saves = tmp_path / "preds"
    report = video.evaluate_video("davis", tmp_path / "davis", ["colours"], protocol=SMALL, save_predictions=saves)
    result = report["results"]["colour/src"]
    folder = saves / "colour_src"  # slug of the source's name
    assert sorted(p.name for p in (folder / "trio").iterdir()) == [f"{t:05d}.png" for t in range(8)]
    with Image.open(folder / "trio" / "00000.png") as im:
        assert im.mode == "P" and im.size == (VW, VH) and im.getpalette()[:12] == PALETTE[:12]
        first = trio(0, TRIO)
        first[first == 255] = 0
        assert np.array_equal(np.array(im), first)
    expected = _toolkit_scores(tmp_path / "davis" / "DAVIS", folder)
    assert set(result["objects"]) == set(expected)
    for name, values in expected.items():
        assert result["objects"][name] == pytest.approx(values), name
    # by hand: solo's prediction is the 12 x 12 square less its corners (140 pixels) at columns 8..19, frame t's
    # annotation the whole square at 8 + t..19 + t: they share 12 (12 - t) pixels less the 2 right corners.
    solo_j = [(142 - 12 * t) / (140 + 144 - (142 - 12 * t)) for t in range(1, 7)]
    assert result["objects"]["solo_1"]["j"] == pytest.approx(sum(solo_j) / 6)
    # trio's red object in frame 2: the annotation (118 pixels, its two top rows void) inside the prediction (140)
    assert result["objects"]["trio_1"]["j"] == pytest.approx((1 + 118 / 140 + 1 + 1 + 1 + 1) / 6)
    assert result["objects"]["solo_1"]["j_decay"] > 0.1
    for stat in ("j", "f"):
        assert result[f"{stat}_mean"] == pytest.approx(np.mean([v[stat] for v in expected.values()]))
        assert result[f"{stat}_decay"] == pytest.approx(np.mean([v[f"{stat}_decay"] for v in expected.values()]))


def test_indexed_png_keeps_the_ids_with_a_short_or_default_palette(tmp_path):
    mask = torch.tensor([[0, 1, 2], [3, 8, 255]])
    video.save_indexed_png(tmp_path / "a" / "x.png", mask, None)
    with Image.open(tmp_path / "a" / "x.png") as im:
        assert im.mode == "P" and np.array_equal(np.array(im), mask.numpy())
        # the DAVIS / VOC colours: 1 dark red, 2 dark green, 3 olive, 8 = bit 1 of red (64, 0, 0)
        colours = np.array(im.getpalette()).reshape(-1, 3)
        assert colours[[0, 1, 2, 3, 8]].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [64, 0, 0]]
    video.save_indexed_png(tmp_path / "y.png", mask, [0, 0, 0, 9, 9, 9])  # a palette as short as Pillow may give
    with Image.open(tmp_path / "y.png") as im:
        assert np.array_equal(np.array(im), mask.numpy()) and im.getpalette()[:6] == [0, 0, 0, 9, 9, 9]
