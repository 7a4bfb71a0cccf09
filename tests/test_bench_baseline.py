"""The scoring behind `bench_pipeline.py --baseline face_recognition` (benchmarks/baseline_fr.py): faces
paired one-to-one between the sides at IoU >= 0.5, names counted, wrong names against the demo clip's
truth. The baseline itself is not run here (it is a benchmark, in its own venv)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bf() -> ModuleType:
    spec = importlib.util.spec_from_file_location("baseline_fr", REPO / "benchmarks" / "baseline_fr.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_iou(bf: ModuleType) -> None:
    assert bf.iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert bf.iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert bf.iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0


def test_matched_is_one_to_one_at_iou_half(bf: ModuleType) -> None:
    theirs = [([0, 0, 10, 10], None)]
    # two boxes on one face: only one pairs with it
    assert bf.matched([([1, 0, 11, 10], None), ([0, 0, 10, 10], None)], theirs) == [(1, 0)]
    # IoU 1/3: not paired, but its centre (5, 5) lies inside our box: covered
    assert bf.matched([([5, 0, 15, 10], None)], theirs) == []
    assert bf.covered([([4, 0, 15, 10], None)], theirs) == 1
    assert bf.covered([([6, 0, 15, 10], None)], theirs) == 0
    # greedy by IoU: the best pair is taken first, the other face still finds its own
    ours = [([0, 0, 10, 10], None), ([30, 30, 40, 40], None)]
    assert sorted(bf.matched(ours, [([31, 30, 40, 40], None), ([1, 1, 10, 10], None)])) == [(0, 1), (1, 0)]


def test_score_counts_names_and_wrong_names(bf: ModuleType) -> None:
    box = [0, 0, 10, 10]
    frames = [[(box, "obama")], [(box, None)], [(box, "obama")], []]
    other = [[(box, "obama")], [], [(box, None)], [(box, None)]]
    truth = ["obama", "obama", None, None]  # frame 2 shows someone not enrolled
    s = bf.score(frames, other, truth)
    assert s == {"faces": 3, "matched": 2, "covered": 2, "disagree": 1, "names": 2, "wrong": 1}
    assert bf.score(frames, other, None)["wrong"] is None  # no truth: not counted


def test_pipeline_frames_by_seq(bf: ModuleType) -> None:
    rows = [
        {"seq": 2, "faces": [{"box": [1, 2, 3, 4], "name": "a"}]},
        {"seq": 0, "faces": []},
    ]
    assert bf.pipeline_frames(rows) == [[], [], [([1, 2, 3, 4], "a")]]
