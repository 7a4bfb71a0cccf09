"""Guided detection (detect.mode: guided): where the plan looks, and that looking there finds what the
whole frame finds. Recall and cost on real and composed clips: benchmarks/bench_guided.py."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from stream.detector import MTCNN
from stream.guided import DetectionPlan, GuidedSettings, merge

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
    assert len(guided) == len(whole)  # each face once, although regions overlap
    for box, points in zip(whole.boxes, whole.landmarks, strict=True):
        k = int(np.argmin(np.abs(guided.boxes - box).sum(1)))
        assert np.abs(guided.boxes[k] - box).max() < 0.05 * (box[2] - box[0]) + 2, (guided.boxes[k], box)
        assert np.abs(guided.landmarks[k] - points).max() < 0.05 * (box[2] - box[0]) + 2
    assert all(0 <= b[0] and b[2] <= w + 1 for b in guided.boxes)
    # Around known faces, only the scales that fit them: the same faces, found with less work.
    sides = [int(0.6 * min(b[2] - b[0], b[3] - b[1])) for b in whole.boxes]
    (sized,) = detector.detect_regions([rgb], [regions], [sides])
    assert len(sized) == len(whole)
    for box in whole.boxes:
        assert np.abs(sized.boxes - box).sum(1).min() < 0.2 * (box[2] - box[0]), box


def test_levels_left_out_only_find_smaller_faces(mtcnn_weights_dir):
    detector = MTCNN(mtcnn_weights_dir, device="cpu", min_face_size=20)
    assert detector._levels_below(20) == detector._levels_below(10) == 0
    k = detector._levels_below(100)
    # Level k finds faces from 20 / 0.709**k pixels: still <= 100, and level k+1 would miss 100.
    assert 20 / 0.709**k <= 100 < 20 / 0.709 ** (k + 1)
