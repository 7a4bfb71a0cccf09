"""Tracker on synthetic sequences: association (geometry, motion, appearance, cuts), names bound to
each face's own evidence, the margins, the quality gate, events, flips."""

from __future__ import annotations

import numpy as np

from stream.gallery.matcher import Match
from stream.gallery.tracking import FaceTracker, Rules, count_flips, flips_per_track, iou_matrix

T = 0.6


def m(cand: str | None, d: float, runner_up: float = float("inf")) -> Match:
    """A face's evidence: nearest person `cand` at distance d (named only within the threshold)."""
    name = cand if d <= T else None
    return Match(name, d, None if name is None else hash(name) % 100, cand, runner_up)


def box(x: float, y: float, s: float = 100) -> np.ndarray:
    return np.array([x, y, x + s, y + s], np.float32)


def emb(seed: int) -> np.ndarray:
    """A person's appearance: a fixed 128-d vector, 0.5 long (people's vectors ~0.7 apart)."""
    v = np.random.default_rng(seed).normal(size=128)
    return (0.5 * v / np.linalg.norm(v)).astype(np.float32)


def test_iou():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(iou_matrix(a, b)[0], [1.0, 50 / 150, 0.0])


def test_clear_faces_are_named_in_their_first_frame_and_keep_their_tracks():
    tr = FaceTracker("cam0", T)
    ids = set()
    for f in range(20):
        boxes = np.stack([box(100 + 5 * f, 100), box(600 - 5 * f, 120)])
        faces, _ = tr.update(f / 25, boxes, [m("ann", 0.3), m("ben", 0.56)])  # 0.56 < 0.6 x 0.95
        ids.add((faces[0].track, faces[1].track))
        assert (faces[0].name, faces[1].name) == ("ann", "ben")
    assert len(ids) == 1


def test_near_threshold_faces_need_agreement_and_a_conflict_restarts_it():
    tr = FaceTracker("c", T, Rules(agree_frames=3))
    seq = [m("ann", 0.59), m("ann", 0.58), m("ben", 0.59), m("ann", 0.59), m("ann", 0.58), m("ann", 0.59)]
    out = [tr.update(i, box(0, 0)[None], [x])[0][0].name for i, x in enumerate(seq)]
    assert out == [None, None, None, None, None, "ann"]


def test_faces_just_over_the_threshold_agree_but_are_never_named():
    tr = FaceTracker("c", T, Rules(agree_frames=3, near_band=0.15))
    seq = [m("ann", 0.62), m("ann", 0.65), m("ann", 0.59), m("ann", 0.62)]
    out = [tr.update(i, box(0, 0)[None], [x])[0][0].name for i, x in enumerate(seq)]
    assert out == [None, None, "ann", None]
    # A face near nobody (over the band) breaks the agreement.
    tr = FaceTracker("c", T, Rules(agree_frames=3, near_band=0.15))
    seq = [m("ann", 0.62), m("ann", 0.75), m("ann", 0.65), m("ann", 0.59)]
    assert [tr.update(i, box(0, 0)[None], [x])[0][0].name for i, x in enumerate(seq)] == [None] * 4


def test_a_tie_is_unknown():
    tr = FaceTracker("c", T)
    out = [tr.update(i, box(0, 0)[None], [m("ann", 0.3, runner_up=0.31)])[0][0] for i in range(5)]
    assert [f.name for f in out] == [None] * 5 and out[0].candidate == "ann"
    # the same distance with another person far away: named at once
    assert FaceTracker("c", T).update(0, box(0, 0)[None], [m("ann", 0.3, runner_up=0.5)])[0][0].name == "ann"


def test_a_face_is_never_named_against_its_own_evidence():
    """A named track: faces over the threshold, or matching someone else, are output unknown; the
    track takes another name only after agree_frames faces in a row say so."""
    tr = FaceTracker("c", T, Rules(agree_frames=3))
    seq = [m("ann", 0.3), m("ann", 0.65), m(None, 0.9), m("ben", 0.3), m("ann", 0.4)]
    seq += [m("ben", 0.3)] * 3 + [m("ann", 0.61)]
    faces = [tr.update(i, box(0, 0)[None], [x])[0][0] for i, x in enumerate(seq)]
    assert [f.name for f in faces] == ["ann", None, None, None, "ann", None, None, "ben", None]
    assert [f.candidate for f in faces[:4]] == ["ann", "ann", None, "ben"]
    assert len({f.track for f in faces}) == 1  # geometry only here: one track throughout


def test_noisy_identity_names_only_agreeing_faces():
    rng = np.random.default_rng(0)
    tr = FaceTracker("c", T)
    named = []
    for f in range(200):
        r = rng.random()
        if r < 0.25:  # a quarter of frames: someone else near the threshold, or unknown
            match = m("ben", 0.58) if r < 0.12 else m(None, 0.65)
        else:
            match = m("ann", rng.uniform(0.3, 0.58))
        face = tr.update(f / 25, box(100 + f, 100)[None], [match])[0][0]
        named.append(face.name)
        assert face.name in (None, face.candidate)
    assert "ben" not in named and named.count("ann") > 140


def test_fast_motion_falls_back_to_centre_distance_and_motion_is_predicted():
    tr = FaceTracker("c", T)
    a, _ = tr.update(0.0, box(0, 0)[None], [m("ann", 0.3)])
    b, _ = tr.update(0.04, box(60, 0)[None], [m("ann", 0.3)])  # IoU 0.25 < iou_min
    assert a[0].track == b[0].track
    c, _ = tr.update(0.08, box(900, 500)[None], [m("ann", 0.3)])  # far away: someone else
    assert c[0].track != a[0].track
    # Steady motion of 60 px per frame: the centre-distance fallback alone (0.75 box sizes) would
    # lose the face after a missed frame (120 px); the predicted box keeps it.
    tr = FaceTracker("c", T)
    ids = [tr.update(f, box(60 * f, 0)[None], [m("ann", 0.3)])[0][0].track for f in range(4)]
    tr.update(4, np.zeros((0, 4)), [])
    ids.append(tr.update(5, box(300, 0)[None], [m("ann", 0.3)])[0][0].track)
    assert len(set(ids)) == 1


def test_another_face_at_the_same_place_starts_a_new_track():
    """A hard cut from ann to ben at the same place (no cut signal): the appearance splits the
    track, and ben is named in his first frame, never as ann."""
    tr = FaceTracker("c", T)
    a, b = emb(1), emb(2)
    assert np.linalg.norm(a - b) > T
    first = [tr.update(f, box(100, 100)[None], [m("ann", 0.3)], a[None])[0][0] for f in range(5)]
    second = [tr.update(5 + f, box(102, 100)[None], [m("ben", 0.35)], b[None])[0][0] for f in range(5)]
    assert {f.track for f in first} != {f.track for f in second} and len({f.track for f in second}) == 1
    assert [f.name for f in second] == ["ben"] * 5


def test_two_people_crossing_keep_their_names():
    tr = FaceTracker("c", T)
    a, b = emb(1), emb(2)
    tracks: dict[str, set[int]] = {"ann": set(), "ben": set()}
    for f in range(30):  # they meet at frame 15, boxes on top of each other
        xa, xb = 100 + 20 * f, 700 - 20 * f
        faces, _ = tr.update(
            f, np.stack([box(xa, 100), box(xb, 100)]), [m("ann", 0.3), m("ben", 0.3)], np.stack([a, b])
        )
        for who, face in zip(("ann", "ben"), faces, strict=True):
            tracks[who].add(face.track)
            assert face.name == who
    assert len(tracks["ann"]) == len(tracks["ben"]) == 1 and tracks["ann"] != tracks["ben"]


def test_a_scene_cut_ends_every_track():
    tr = FaceTracker("c", T, Rules(max_missed=50))
    f0, _ = tr.update(0, box(0, 0)[None], [m("ann", 0.3)])
    ev = tr.cut(0.04)
    assert [(e.type, e.name, e.frames_to_name) for e in ev] == [("track_left", "ann", 1)]
    f1, _ = tr.update(0.04, box(0, 0)[None], [m("ann", 0.3)])
    assert f1[0].track != f0[0].track and f1[0].name == "ann"


def test_faces_under_the_quality_gate_do_not_vote():
    tr = FaceTracker("c", T, Rules(min_quality=0.3))
    low = [tr.update(i, box(0, 0)[None], [m("ann", 0.3)], None, np.array([0.1]))[0][0] for i in range(5)]
    assert [f.name for f in low] == [None] * 5 and low[0].candidate == "ann"
    good = tr.update(5, box(0, 0)[None], [m("ann", 0.3)], None, np.array([0.8]))[0][0]
    assert good.name == "ann"
    # Named now: a poor face that agrees shows the name (it does not vote, it is not contradicted).
    assert tr.update(6, box(0, 0)[None], [m("ann", 0.4)], None, np.array([0.1]))[0][0].name == "ann"
    # A poor face's appearance is not learnt: a blurred stranger cannot pull the track along.
    assert tr.tracks[good.track].appearance is None


def test_a_poor_face_must_be_a_much_clearer_match():
    rules = Rules(min_quality=0.05, good_quality=0.3, weak_margin=0.15, clear_margin=0.05)
    tr = FaceTracker("c", T, rules)
    poor = np.array([0.15])
    # 0.55 would name a good face at once; a poor one says nothing (and breaks nothing).
    assert [tr.update(i, box(0, 0)[None], [m("ann", 0.55)], None, poor)[0][0].name for i in range(4)] == [
        None
    ] * 4
    assert tr.update(4, box(0, 0)[None], [m("ann", 0.5)], None, poor)[0][0].name == "ann"  # 0.5 <= 0.51
    hopeless = FaceTracker("c", T, rules)
    assert hopeless.update(0, box(0, 0)[None], [m("ann", 0.2)], None, np.array([0.01]))[0][0].name is None


def test_events_confirm_leave_and_unknown():
    tr = FaceTracker("door", T, Rules(max_missed=2, unknown_frames=5, unknown_seconds=0.1))
    events = []
    seq = [m("ann", 0.59), m("ann", 0.58), m("ann", 0.4), m("ann", 0.4), m("ann", 0.4), m("ann", 0.4)]
    for f in range(6):
        _, ev = tr.update(f * 0.1, np.stack([box(0, 0), box(500, 0)]), [seq[f], m(None, 0.9)])
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
        "frames_to_name": 3,  # two near-threshold faces, then a clear one
        "faces": 3,
    }
    assert events[2].last_seen == 0.5 and events[2].frames_to_name == 3 and events[2].faces == 6
    assert events[3].best_distance == 0.9 and events[3].frames_to_name is None
    assert tr.tracks == {}


def test_flush_closes_announced_tracks_only():
    tr = FaceTracker("c", T)
    tr.update(0, np.stack([box(0, 0), box(400, 0)]), [m("ann", 0.3), m(None, 0.9)])
    ev = tr.flush(1.0)
    assert [(e.type, e.name) for e in ev] == [("track_left", "ann")]
    assert tr.tracks == {}
    inf = FaceTracker("c", T, Rules(unknown_frames=1, unknown_seconds=0))
    _, ev = inf.update(0, box(0, 0)[None], [Match(None, float("inf"), None)])
    assert ev[0].to_dict()["best_distance"] is None  # JSON-safe


def test_count_flips():
    assert count_flips([None, None, "a", "a"]) == 0
    assert count_flips(["a", None, "a"]) == 2
    assert count_flips(["a", "b", "b"]) == 1
    assert flips_per_track([(1, "a"), (2, None), (1, "b"), (2, "c")]) == {1: 1, 2: 0}
