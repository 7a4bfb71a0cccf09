"""Match's end barrier (endbarrier.py): a camera's end-of-stream goes on only after its frames, which
may arrive later through other workers; a camera that goes quiet lets it go (frames lost)."""

from __future__ import annotations

import numpy as np

from stream.pipeline import wire
from stream.pipeline.endbarrier import EndBarrier


def frame(cam: str, seq: int, skipped: int = 0) -> wire.Frame:
    msg = wire.frame_message(cam, seq, np.zeros((2, 2, 3), np.uint8))
    msg.skipped = skipped
    return msg


def test_an_end_that_overtook_frames_waits_for_them() -> None:
    b = EndBarrier(grace_s=2.0)
    for seq in (0, 1, 3):
        b.frame(frame("a", seq), now=0.0)
    assert b.end(wire.eos_message("a", 5), now=0.1) == []  # frames 2 and 4 are still on their way
    assert b.due(now=1.0) == []
    b.frame(frame("a", 4), now=1.5)
    assert b.due(now=1.6) == []
    b.frame(frame("a", 2), now=1.7)
    (eos,) = b.due(now=1.7)
    assert eos.cam == "a" and eos.sent == 5


def test_frames_dropped_on_the_way_count_and_other_cameras_do_not() -> None:
    b = EndBarrier(grace_s=2.0)
    b.frame(frame("a", 0), now=0.0)
    b.frame(frame("a", 3, skipped=2), now=0.0)  # 1 and 2 dropped by a stage, carried on frame 3
    b.frame(frame("b", 0), now=0.0)
    eos = wire.eos_message("a", 5)
    eos.skipped = 1  # frame 4 dropped just before the end, on the end's own path
    assert [e.cam for e in b.end(eos, now=0.0)] == ["a"]
    assert b.end(wire.eos_message("b", 2), now=0.0) == []


def test_a_quiet_camera_lets_its_end_go_and_counts_start_again() -> None:
    b = EndBarrier(grace_s=2.0)
    b.frame(frame("a", 0), now=0.0)
    assert b.end(wire.eos_message("a", 3), now=0.5) == []
    assert b.due(now=2.4) == []  # quiet for 1.9 s only
    assert [e.sent for e in b.due(now=2.6)] == [3]  # two frames lost with a worker
    b.frame(frame("a", 0), now=3.0)  # a capture that came back counts from 0
    assert b.end(wire.eos_message("a", 2), now=3.0) == []


def test_quiet_time_follows_the_pace_of_a_slow_pipeline() -> None:
    """Frames that a loaded detector delivers 3 s apart are late, not lost."""
    b = EndBarrier(grace_s=2.0)
    for i, t in enumerate((0.0, 3.0, 6.0)):
        b.frame(frame("a", i), now=t)
    assert b.quiet_s("a") == 6.0
    assert b.end(wire.eos_message("a", 4), now=6.1) == []
    assert b.due(now=10.0) == []  # 2 s would have let it go here
    b.frame(frame("a", 3), now=11.0)
    assert [e.sent for e in b.due(now=11.0)] == [4]


def test_a_second_end_lets_the_first_go_first() -> None:
    b = EndBarrier(grace_s=2.0)
    assert b.end(wire.eos_message("a", 3), now=0.0) == []
    released = b.end(wire.eos_message("a", 0), now=0.5)  # a restarted capture's end, with no frames
    assert [e.sent for e in released] == [3, 0]


def test_frames_that_never_came_are_reported_once() -> None:
    lost: list[tuple[str, int]] = []
    b = EndBarrier(grace_s=2.0, on_lost=lambda cam, n: lost.append((cam, n)))
    b.frame(frame("a", 0), now=0.0)
    b.frame(frame("a", 2, skipped=1), now=0.0)  # 1 dropped and counted by a stage: not lost
    assert b.end(wire.eos_message("a", 5), now=0.0) == []
    assert [e.cam for e in b.due(now=3.0)] == ["a"]
    assert lost == [("a", 2)]  # frames 3 and 4 died with a worker
    b.frame(frame("a", 0), now=4.0)
    assert [e.cam for e in b.end(wire.eos_message("a", 1), now=4.0)] == ["a"]
    assert lost == [("a", 2)]  # a complete end reports nothing
