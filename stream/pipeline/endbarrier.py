"""Match's end barrier: a camera's end-of-stream goes on to the sink only after the camera's frames.

Why it is needed: the end-of-stream is one message. The capture's PUSH hands it to one detect worker
(round-robin, like any frame), and from there it travels one path, while the camera's last frames may
still be inside other detect or embed workers (several workers on one host, or interchangeable
replicas in Kubernetes). Passing it on at once would end the camera's tracks (their last events)
before its last frames were named, and tell the sink the camera is over early.

So match holds it until it has seen as many of the camera's frames as the capture says it sent
(`sent`), counting frames that stages dropped on the way (each message's `skipped`), or until the
camera has been quiet for a while (its missing frames were lost with a worker that died, or their
drop counts are stuck in a worker that saw no later frame of the camera). Quiet means no frame of it
for `grace_s`, or for twice the longest pause between its recent frames if that is longer: a loaded
detector that takes seconds per batch delivers a camera's frames seconds apart, and those frames are
late, not lost. Counts start again after
each end (a capture process that comes back after its end counts from 0). After a capture was
restarted without an end (killed), the two processes' frames both count, so its next end may go on
before the last frames: the same limit as the sink's count check (trust.py)."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from stream.pipeline import wire

log = logging.getLogger(__name__)


@dataclass
class _Held:
    eos: wire.EndOfStream
    at: float  # monotonic seconds when it arrived


GAPS_KEPT = 32  # recent pauses between a camera's frames, for its quiet time


class EndBarrier:
    """on_lost(camera, frames): called when an end goes on short of frames that never arrived."""

    def __init__(self, grace_s: float, on_lost: Callable[[str, int], None] | None = None):
        self.grace_s = grace_s
        self.on_lost = on_lost
        self.seen: dict[str, int] = {}  # camera -> frames arrived (+ dropped on the way) since its last end
        self.last_at: dict[str, float] = {}
        self.gaps: dict[str, deque[float]] = {}
        self.held: dict[str, _Held] = {}

    def frame(self, msg: wire.FrameMessage, now: float) -> None:
        self.seen[msg.cam] = self.seen.get(msg.cam, 0) + 1 + msg.skipped
        if msg.cam in self.last_at:
            self.gaps.setdefault(msg.cam, deque(maxlen=GAPS_KEPT)).append(now - self.last_at[msg.cam])
        self.last_at[msg.cam] = now

    def quiet_s(self, cam: str) -> float:
        """How long without a frame of `cam` before its missing frames count as lost."""
        return max(self.grace_s, 2 * max(self.gaps.get(cam, ()), default=0.0))

    def end(self, msg: wire.EndOfStream, now: float) -> list[wire.EndOfStream]:
        """Hold this end; returns the ends that may go on now (in order)."""
        earlier = self.held.pop(msg.cam, None)
        released = [self._release(msg.cam, earlier.eos, complete=False)] if earlier else []
        self.held[msg.cam] = _Held(msg, now)
        return released + self.due(now)

    def due(self, now: float) -> list[wire.EndOfStream]:
        """The held ends whose frames have all arrived, or whose camera has been quiet for grace_s."""
        out = []
        for cam, h in list(self.held.items()):
            complete = self.seen.get(cam, 0) + h.eos.skipped >= h.eos.sent
            if complete or now - max(h.at, self.last_at.get(cam, h.at)) >= self.quiet_s(cam):
                del self.held[cam]
                out.append(self._release(cam, h.eos, complete))
        return out

    def _release(self, cam: str, eos: wire.EndOfStream, complete: bool) -> wire.EndOfStream:
        if not complete:
            got = self.seen.get(cam, 0) + eos.skipped
            log.info(
                "camera %s: its end goes on after %d of %d frames (the rest were lost in flight)",
                cam,
                got,
                eos.sent,
            )
            if self.on_lost is not None and eos.sent > got:
                self.on_lost(cam, eos.sent - got)
        self.seen[cam] = 0
        self.gaps.pop(cam, None)
        self.last_at.pop(cam, None)
        return eos
