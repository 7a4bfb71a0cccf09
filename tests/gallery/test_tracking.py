"""Tracker + per-track voting on synthetic sequences: association, voting rules, events, flips."""

from __future__ import annotations

import numpy as np

from stream.gallery.matcher import Match
from stream.gallery.tracking import FaceTracker, count_flips, flips_per_track, iou_matrix

T = 0.6


def m(name: str | None, d: float) -> Match:
    return Match(name, d, None if name is None else hash(name) % 100)


def box(x: float, y: float, s: float = 100) -> np.ndarray:
    return np.array([x, y, x + s, y + s], np.float32)


def test_iou():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(iou_matrix(a, b)[0], [1.0, 50 / 150, 0.0])


def test_two_people_keep_their_tracks_and_names():
    tr = FaceTracker("cam0", T, min_votes=3)
    ids = set()
    for f in range(20):
        boxes = np.stack([box(100 + 5 * f, 100), box(600 - 5 * f, 120)])
        faces, _ = tr.update(f / 25, boxes, [m("ann", 0.3), m("ben", 0.35)])
        ids.add((faces[0].track, faces[1].track))
        if f < 2:
            assert faces[0].name is None  # fewer than min_votes agreeing faces
        else:
            assert (faces[0].name, faces[1].name) == ("ann", "ben")
    assert len(ids) == 1


def test_fast_motion_falls_back_to_centre_distance():
    tr = FaceTracker("c", T)
    a, _ = tr.update(0.0, box(0, 0)[None], [m("ann", 0.3)])
    b, _ = tr.update(0.04, box(60, 0)[None], [m("ann", 0.3)])  # IoU 0.25 < iou_min
    assert a[0].track == b[0].track
    c, _ = tr.update(0.08, box(900, 500)[None], [m("ann", 0.3)])  # far away: someone else
    assert c[0].track != a[0].track


def test_noisy_identity_does_not_flicker():
    rng = np.random.default_rng(0)
    tr = FaceTracker("c", T, min_votes=3)
    names = []
    for f in range(200):
        r = rng.random()
        if r < 0.25:  # a quarter of frames: a wrong name, or unknown, near the threshold
            match = m("ben", 0.55) if r < 0.12 else m(None, 0.65)
        else:
            match = m("ann", rng.uniform(0.3, 0.58))
        faces, _ = tr.update(f / 25, box(100 + f, 100)[None], [match])
        names.append(faces[0].name)
    assert count_flips(names) == 0
    assert names[-1] == "ann"


def test_tie_is_unknown_and_minimum_votes():
    tr = FaceTracker("c", T, min_votes=2)
    seq = [m("ann", 0.3), m("ben", 0.3), m("ann", 0.3), m("ben", 0.3)]
    out = [tr.update(i, box(0, 0)[None], [x])[0][0].name for i, x in enumerate(seq)]
    assert out == [None, None, "ann", None]  # equal weights after 2 + 2 votes: tie -> unknown


def test_size_and_margin_weighting():
    tr = FaceTracker("c", T, ref_face_px=100, full_margin=0.25)
    assert tr.vote_weight(box(0, 0, 100), 0.3) == 1.0
    assert tr.vote_weight(box(0, 0, 25), 0.3) == 0.25
    assert tr.vote_weight(box(0, 0, 100), 0.59) < 0.1
    # 3 big confident "ann" faces outweigh 4 tiny borderline "ben" faces.
    tr = FaceTracker("c", T, min_votes=3)
    seq = [(box(0, 0, 120), m("ann", 0.3))] * 3 + [(box(0, 0, 110), m("ben", 0.58))] * 4
    name = None
    for i, (b, x) in enumerate(seq):
        name = tr.update(i, b[None], [x])[0][0].name
    assert name == "ann"


def test_events_confirm_leave_and_unknown():
    tr = FaceTracker("door", T, min_votes=3, max_missed=2, unknown_frames=5, unknown_seconds=0.1)
    events = []
    for f in range(6):
        _, ev = tr.update(f * 0.1, np.stack([box(0, 0), box(500, 0)]), [m("ann", 0.4), m(None, 0.9)])
        events += ev
    for f in range(6, 10):  # both leave
        _, ev = tr.update(f * 0.1, np.zeros((0, 4)), [])
        events += ev
    kinds = [(e.type, e.name) for e in events]
    assert kinds == [
        ("track_confirmed", "ann"),
        ("unknown_persists", None),
        ("track_left", "ann"),
        ("track_left", None),
    ]
    d = events[0].to_dict()
    assert d == {
        "type": "track_confirmed",
        "camera": "door",
        "track": 1,
        "name": "ann",
        "first_seen": 0.0,
        "last_seen": 0.2,
        "best_distance": 0.4,
    }
    assert events[2].last_seen == 0.5 and events[3].best_distance == 0.9
    assert tr.tracks == {}


def test_flush_closes_announced_tracks_only():
    tr = FaceTracker("c", T, min_votes=1)
    tr.update(0, np.stack([box(0, 0), box(400, 0)]), [m("ann", 0.3), m(None, 0.9)])
    ev = tr.flush(1.0)
    assert [(e.type, e.name) for e in ev] == [("track_left", "ann")]
    assert tr.tracks == {}
    inf = FaceTracker("c", T, unknown_frames=1, unknown_seconds=0)
    _, ev = inf.update(0, box(0, 0)[None], [m(None, float("inf"))])
    assert ev[0].to_dict()["best_distance"] is None  # JSON-safe


def test_count_flips():
    assert count_flips([None, None, "a", "a"]) == 0
    assert count_flips(["a", None, "a"]) == 2
    assert count_flips(["a", "b", "b"]) == 1
    assert flips_per_track([(1, "a"), (2, None), (1, "b"), (2, "c")]) == {1: 1, 2: 0}
