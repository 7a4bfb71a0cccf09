"""Guided detection (detect.mode: guided): where the plan looks, and that looking there finds what the
whole frame finds. Recall and cost on real and composed clips: benchmarks/bench_guided.py."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from stream.detector import MTCNN, pyramid_scales
from stream.guided import DetectionPlan, GuidedSettings, merge
from stream.mtcnn_nets import PNet

H, W = 360, 640


def noisy(base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A fixed camera's frame: the scene plus sensor noise (sigma 2 grey levels)."""
    return np.clip(base + rng.normal(0, 2, base.shape), 0, 255).astype(np.uint8)


def view(seed: int) -> np.ndarray:
    """A still scene: coarse blocks of colour, softened (structure that survives downscaling)."""
    blocks = np.random.default_rng(seed).integers(0, 255, (9, 16, 3), dtype=np.uint8)
    return cv2.GaussianBlur(cv2.resize(blocks, (W, H), interpolation=cv2.INTER_NEAREST), (0, 0), 4)


@pytest.fixture
def scene() -> np.ndarray:
    return view(0)


def test_plan_whole_frame_first_then_nothing_when_nothing_moves(scene):
    rng = np.random.default_rng(1)
    plan = DetectionPlan(GuidedSettings(full_every_s=1.0))
    assert plan.plan(noisy(scene, rng), 0.0).full  # first frame: everything
    for i in range(1, 25):
        p = plan.plan(noisy(scene, rng), i / 25)
        assert p.regions == [] and p.reason == "still", (i, p)  # sensor noise is not motion
    assert plan.plan(noisy(scene, rng), 1.0).reason == "periodic"  # the whole frame again after 1 s


def test_plan_looks_where_something_moved_and_where_a_face_was(scene):
    rng = np.random.default_rng(2)
    plan = DetectionPlan(GuidedSettings(full_every_s=10.0))
    plan.plan(noisy(scene, rng), 0.0)
    moved = scene.copy()
    moved[100:140, 300:340] = 255  # a 40-px patch appears
    p = plan.plan(noisy(moved, rng), 0.04)
    assert p.reason == "guided" and p.regions
    (x1, y1, x2, y2), *_ = p.regions
    assert x1 <= 300 and y1 <= 100 and x2 >= 340 and y2 >= 140  # it covers the change, with margin
    assert sum((b[2] - b[0]) * (b[3] - b[1]) for b in p.regions) < 0.2 * H * W
    # Nothing moves any more, but a face was found there: the plan keeps looking at it.
    plan.observe(np.array([[500.0, 200.0, 560.0, 270.0]]))
    p = plan.plan(noisy(moved, rng), 0.08)
    assert p.reason == "guided" and any(b[0] <= 500 and b[2] >= 560 for b in p.regions or [])


def test_plan_looks_for_a_known_face_one_step_further_at_its_size(scene):
    rng = np.random.default_rng(4)
    plan = DetectionPlan(GuidedSettings(full_every_s=10.0))
    plan.plan(noisy(scene, rng), 0.0)
    plan.observe(np.array([[100.0, 100.0, 160.0, 170.0]]))
    plan.plan(noisy(scene, rng), 0.04)
    plan.observe(np.array([[130.0, 110.0, 190.0, 180.0]]))  # it moved 30 right, 10 down
    moved = scene.copy()
    moved[110:180, 130:190] = 255  # the face's own change: inside its region, no region of its own
    p = plan.plan(noisy(moved, rng), 0.08)
    assert p.reason == "guided" and p.regions is not None and len(p.regions) == 1, p
    (x1, y1, x2, y2), lo, hi = p.regions[0], p.min_faces[0], p.max_faces[0]  # type: ignore[index]
    # from where it is (130..190, 110..180) to one step further (160..220, 120..190), grown by half
    assert (x1 + x2) / 2 == pytest.approx(175, abs=1) and (y1 + y2) / 2 == pytest.approx(150, abs=1)
    assert x2 - x1 >= 2 * 90 and y2 - y1 >= 2 * 80
    assert lo == 36 and hi == 100  # faces of 0.6 to 1/0.6 of its size (60 px)
    # A change elsewhere: any face may have appeared there, of any size.
    moved[250:300, 500:540] = 0
    plan.observe(np.array([[160.0, 120.0, 220.0, 190.0]]))
    p = plan.plan(noisy(moved, rng), 0.12)
    assert p.regions is not None and len(p.regions) == 2, p
    other = [i for i, b in enumerate(p.regions) if b[0] > 400]
    assert len(other) == 1 and p.min_faces[other[0]] == 20 and p.max_faces[other[0]] is None  # type: ignore[index]


def test_plan_whole_frame_at_a_scene_cut(scene):
    rng = np.random.default_rng(3)
    plan = DetectionPlan(GuidedSettings(full_every_s=10.0))
    plan.plan(noisy(scene, rng), 0.0)
    assert plan.plan(noisy(view(1), rng), 0.04, cut=True).reason == "cut"  # the capture says so
    # Without the capture's verdict, another view altogether still gets the whole frame.
    assert plan.plan(noisy(view(2), rng), 0.08).full


def test_overlapping_regions_merge_until_none_overlap():
    got = merge([(0, 0, 10, 10), (5, 5, 20, 20), (19, 19, 30, 30), (100, 100, 110, 110)])
    assert got == [(0, 0, 30, 30), (100, 100, 110, 110)]


def test_regions_find_what_the_whole_frame_finds(shared_data, mtcnn_weights_dir):
    detector = MTCNN(mtcnn_weights_dir, device="cpu")
    rgb = cv2.cvtColor(
        cv2.imread(str(shared_data / "faces/facenet-pytorch/multiface.jpg")), cv2.COLOR_BGR2RGB
    )
    whole = detector.detect([rgb])[0]
    assert len(whole) >= 4
    h, w = rgb.shape[:2]
    # One region around each face (its size again on every side), in one call with the whole frame.
    regions = [
        (int(x1 - (x2 - x1)), int(y1 - (y2 - y1)), int(x2 + (x2 - x1)), int(y2 + (y2 - y1)))
        for x1, y1, x2, y2 in whole.boxes
    ]
    guided, again, nowhere = detector.detect_regions([rgb, rgb, rgb], [regions, None, []])
    assert len(nowhere) == 0 and np.array_equal(again.boxes, whole.boxes)
    # The frame's own pyramid, on its own grid: each face gets exactly the whole frame's box and
    # landmarks (a crop of its own would resample at another scale and phase), once although the
    # regions overlap.
    assert len(guided) == len(whole)
    order = np.lexsort(guided.boxes.T[::-1])
    expected = np.lexsort(whole.boxes.T[::-1])
    assert np.array_equal(guided.boxes[order], whole.boxes[expected])
    assert np.array_equal(guided.landmarks[order], whole.landmarks[expected])
    # Around known faces, only the scales that fit them: the same faces and boxes, with less work.
    sides = [min(b[2] - b[0], b[3] - b[1]) for b in whole.boxes]
    lo, hi = [int(0.6 * s) for s in sides], [int(np.ceil(s / 0.6)) for s in sides]
    (sized,) = detector.detect_regions([rgb], [regions], [lo], [hi])
    assert len(sized) == len(whole)
    assert np.array_equal(sized.boxes[np.lexsort(sized.boxes.T[::-1])], whole.boxes[expected])
    every = {w[0] for w in detector._windows(h, w, regions, [20] * len(regions), [None] * len(regions))}
    fitting = {w[0] for w in detector._windows(h, w, regions, lo, hi)}
    assert fitting < every  # fewer levels ...
    assert min(fitting) == detector._levels_below(min(lo)) and max(fitting) == detector._levels_upto(max(hi))


def test_windows_hold_every_pnet_window_touching_a_region(mtcnn_weights_dir):
    detector = MTCNN(mtcnn_weights_dir, device="cpu", min_face_size=20)
    region = (300, 200, 340, 260)
    windows = detector._windows(360, 640, [region], [20], [None])
    levels = pyramid_scales(360, 640, 20, 0.709)
    assert sorted({k for k, *_ in windows}) == list(range(len(levels)))  # any face size: every level
    for k, r0, r1, c0, c1 in windows:
        _, oh, ow = levels[k]
        sy, sx = oh / 360, ow / 640
        # P-Net position (r, c) sees level pixels [2r, 2r + 12) x [2c, 2c + 12): the window holds
        # every position whose view overlaps the region, within the level
        need_r0 = max(0, int(np.floor((region[1] * sy - 12) / 2)) + 1)
        need_c0 = max(0, int(np.floor((region[0] * sx - 12) / 2)) + 1)
        assert r0 <= need_r0 and c0 <= need_c0, (k, r0, c0, need_r0, need_c0)
        assert r1 >= min(PNet.output_size(oh), int(np.ceil(region[3] * sy / 2))), k
        assert c1 >= min(PNet.output_size(ow), int(np.ceil(region[2] * sx / 2))), k
    assert detector._windows(360, 640, [(700, 0, 800, 50)], [20], [None]) == []  # outside the frame


def test_levels_left_out_only_find_smaller_faces(mtcnn_weights_dir):
    detector = MTCNN(mtcnn_weights_dir, device="cpu", min_face_size=20)
    assert detector._levels_below(20) == detector._levels_below(10) == 0
    k = detector._levels_below(100)
    # Level k finds faces from 20 / 0.709**k pixels: still <= 100, and level k+1 would miss 100.
    assert 20 / 0.709**k <= 100 < 20 / 0.709 ** (k + 1)
