"""Recognise once, then follow (stream/pipeline/follow.py): when an embedding is carried over and when
a face is embedded afresh; and that a carried-over embedding is not counted as new evidence."""

from __future__ import annotations

import math

import numpy as np

from stream.gallery.matcher import Match
from stream.gallery.tracking import FaceTracker, Rules
from stream.pipeline.follow import Follow, FollowSettings

BOX = np.array([[100.0, 100.0, 200.0, 220.0]])


def chip(seed: int) -> np.ndarray:
    """An aligned face chip stand-in: a smooth random picture (150 x 150 RGB)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)
    return np.kron(small, np.ones((25, 25, 1), np.uint8))


def frame(follow: Follow, box=BOX, q: float = 0.5, seed: int = 0, cut: bool = False) -> list:
    sources = follow.assign("cam", box, np.array([q]), np.stack([chip(seed)]), cut)
    fresh = sum(isinstance(s, int) for s in sources)
    follow.resolve(np.full((fresh, 4), float(seed), np.float32))
    return sources


def carried(sources: list) -> bool:
    return bool(Follow.reused(sources)[0])


def test_the_same_face_in_the_same_place_is_embedded_once_every_max_age_frames():
    follow = Follow(FollowSettings(max_age=3))
    got = [carried(frame(follow)) for _ in range(7)]
    assert got == [False, True, True, False, True, True, False]


def test_a_move_a_better_view_another_face_or_a_cut_is_embedded_afresh():
    follow = Follow(FollowSettings(max_age=10))
    frame(follow)
    assert carried(frame(follow, box=BOX + 8))  # a small step: the same face
    assert not carried(frame(follow, box=BOX + 80))  # a jump
    frame(follow)
    assert not carried(frame(follow, q=0.7))  # better by 0.2 >= quality_gain
    frame(follow, q=0.2)
    assert not carried(frame(follow, q=0.2))  # a poor face: every look is new evidence
    frame(follow)
    assert not carried(frame(follow, seed=1))  # someone else at the same place
    assert carried(frame(follow, seed=1))  # ... who is then followed in turn
    assert not carried(frame(follow, seed=1, cut=True))  # a scene cut


def test_off_embeds_every_face():
    follow = Follow(FollowSettings(max_age=0))
    assert [carried(frame(follow)) for _ in range(3)] == [False, False, False]


def test_within_a_batch_a_later_frame_takes_the_embedding_computed_for_an_earlier_one():
    follow = Follow(FollowSettings(max_age=5))
    first = follow.assign("cam", BOX, np.array([0.5]), np.stack([chip(0)]), False)
    second = follow.assign("cam", BOX, np.array([0.5]), np.stack([chip(0)]), False)
    assert first == [0] and not isinstance(second[0], int)  # one fresh row for both frames
    fresh = np.array([[1.0, 2.0, 3.0]], np.float32)
    follow.resolve(fresh)
    assert np.array_equal(Follow.embeddings(second, fresh, 3), fresh)
    # A face carried by one frame of a batch and let go by the next still gets its embedding.
    follow = Follow(FollowSettings(max_age=5))
    a = follow.assign("cam", BOX, np.array([0.5]), np.stack([chip(0)]), False)
    b = follow.assign("cam", BOX, np.array([0.5]), np.stack([chip(0)]), False)
    c = follow.assign("cam", BOX + 300, np.array([0.5]), np.stack([chip(0)]), False)  # gone elsewhere
    fresh = np.array([[4.0, 5.0, 6.0], [7.0, 8.0, 9.0]], np.float32)
    follow.resolve(fresh)
    assert a == [0] and c == [1]
    assert np.array_equal(Follow.embeddings(b, fresh, 3), fresh[:1])
    # A failed embedding forgets everything: nothing can be carried from it.
    follow.assign("cam", BOX, np.array([0.5]), np.stack([chip(0)]), False)
    follow.resolve(None)
    assert not carried(frame(follow))


def test_a_carried_over_embedding_is_not_a_new_vote():
    """A near-threshold face needs agree_frames faces in a row to name its track; the same embedding
    carried over twice is one face's evidence, not three."""
    threshold = 0.6
    tracker = FaceTracker("cam", threshold, Rules(agree_frames=3))
    near = Match("ada", 0.59, 1, candidate="ada", runner_up=math.inf)  # within the threshold, not clearly
    emb = np.ones((1, 4), np.float32)
    q = np.array([0.9])
    for t, reused in enumerate([False, True, True]):
        tracked, _ = tracker.update(t, BOX, [near], emb, q, np.array([reused]))
    assert tracked[0].name is None  # one fresh face said "ada": not enough
    for t in (3, 4):
        tracked, _ = tracker.update(t, BOX, [near], emb, q, np.array([False]))
    assert tracked[0].name == "ada"  # three fresh faces agreed
