"""Liveness per track: `live`, `not_live` or `unknown` (not decided yet, or liveness off).

A track is live when, within `window_s` of its first face, it shows what a flat picture cannot:
- mode "blink": a blink (stream.liveness.blink);
- mode "challenge": two head turns in the order the kiosk asked for (a `liveness_challenge` event
  names them when the track starts, drawn at random: left then right, or right then left), each seen
  as a yaw change of the five landmarks from the track's first faces, together with motion that no
  single plane explains (stream.liveness.geometry), both held over `steady_faces` faces.
It is not_live when the window passes without that evidence, or as soon as its landmarks change shape
the way only a flat picture does (the shape changes beyond a similarity, and one homography explains
the change). Decisions stick for the track's life; a new track starts over.

What this cannot stop: a video of the person replayed on a screen shows real blinks and real head
turns (the picture on the screen is of a 3D head); only the challenge's random direction and its
window make a prepared video unlikely to answer it."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream.liveness.blink import BlinkCounter, BlinkRules
from stream.liveness.geometry import interocular, plane_residual, yaw

LIVE, NOT_LIVE, UNKNOWN = "live", "not_live", "unknown"
VERDICTS = (LIVE, NOT_LIVE, UNKNOWN)
# The person's own left/right, camera image not mirrored; asked as one of these sequences.
CHALLENGES = (("turn_left", "turn_right"), ("turn_right", "turn_left"))


@dataclass(frozen=True)
class LivenessRules:
    mode: str = "off"  # off | blink | challenge
    window_s: float = 6.0  # from a track's first face: decide by then
    # Thresholds from benchmarks/bench_liveness.py (RESULTS.md, Liveness): printed photos turned and
    # tilted by hand move the yaw by <= ~0.13 and leave a plane fit error <= ~0.07 in single faces.
    yaw_turn: float = 0.25  # a turn: the nose moves this many inter-ocular distances along the eye line
    plane_min: float = 0.08  # 3D: the homography fit leaves at least this RMS error (inter-ocular)
    steady_faces: int = 3  # a turn counts when the median of this many consecutive faces shows it
    flat_shape: float = 0.06  # flat: the shape changed beyond a similarity by at least this ...
    flat_fit: float = 0.35  # ... and one homography explains all but this fraction of that change
    flat_faces: int = 2  # faces showing a flat change before the track is not_live
    blink: BlinkRules = field(default_factory=BlinkRules)


def similarity_residual(a: np.ndarray, b: np.ndarray) -> float:
    """RMS error of the least-squares similarity a -> b, in b's inter-ocular distances (how much the
    shape changed beyond moving, turning in the image plane and scaling)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    za = (a - a.mean(0)) @ np.array([1.0, 1j])  # points as complex numbers: a similarity is b = s*a + c
    zb = (b - b.mean(0)) @ np.array([1.0, 1j])
    denom = float(np.vdot(za, za).real)
    scale = np.vdot(za, zb) / denom if denom > 1e-12 else 0.0
    err = zb - scale * za
    return float(np.sqrt(np.mean(np.abs(err) ** 2))) / max(interocular(b), 1e-6)


@dataclass
class TrackLiveness:
    rules: LivenessRules
    first_seen: float
    challenge: tuple[str, ...] = ()
    answered: int = 0  # turns of the challenge done, in order
    verdict: str = UNKNOWN
    reason: str = ""
    decided_at: float | None = None
    reference: np.ndarray | None = None  # the landmarks the shape is compared with
    yaws: list[float] = field(default_factory=list)
    planes: list[float] = field(default_factory=list)
    flat: int = 0
    blinks: BlinkCounter = field(default_factory=BlinkCounter)

    def __post_init__(self) -> None:
        self.blinks = BlinkCounter(self.rules.blink)

    def add(self, t: float, lm: np.ndarray, eyes: float) -> bool:
        """One face of the track; True when this face decides the verdict."""
        if self.verdict != UNKNOWN:
            return False
        lm = np.asarray(lm, np.float64)
        r = self.rules
        if self.reference is None:
            self.reference = lm
        shape = similarity_residual(self.reference, lm)
        plane = plane_residual(self.reference, lm)
        if shape >= r.flat_shape and plane <= r.flat_fit * shape:
            self.flat += 1
            if self.flat >= r.flat_faces:
                return self._decide(NOT_LIVE, "moves like a flat picture", t)
        self.yaws.append(yaw(lm))
        self.planes.append(plane)
        if r.mode == "blink" and self.blinks.add(t, eyes):
            return self._decide(LIVE, "blink", t)
        if r.mode == "challenge" and self._turned():
            self.answered += 1
            if self.answered == len(self.challenge):
                return self._decide(LIVE, "challenge answered", t)
        if t - self.first_seen > r.window_s:
            if r.mode == "blink":
                what = "no blink"
            else:
                what = f"{self.answered} of {len(self.challenge)} turns"
            return self._decide(NOT_LIVE, f"{what} within {r.window_s:g} s", t)
        return False

    def _turned(self) -> bool:
        """The challenge's next turn is shown by the last `steady_faces` faces."""
        r, k = self.rules, self.rules.steady_faces
        if self.answered >= len(self.challenge) or len(self.yaws) < k + 3:
            return False
        sign = 1.0 if self.challenge[self.answered] == "turn_left" else -1.0
        turned = sign * (float(np.median(self.yaws[-k:])) - float(np.median(self.yaws[:3])))
        return turned >= r.yaw_turn and float(np.median(self.planes[-k:])) >= r.plane_min

    def _decide(self, verdict: str, reason: str, t: float) -> bool:
        self.verdict, self.reason, self.decided_at = verdict, reason, t
        return True


class LivenessJudge:
    """The liveness of one camera's tracks. `update` takes a frame's tracked faces and returns each
    face's verdict and the events (a challenge when a track starts, the decision when it falls)."""

    def __init__(self, camera: str, rules: LivenessRules, rng: random.Random | None = None):
        self.camera = camera
        self.rules = rules
        self.rng = rng or random.SystemRandom()  # a replayed video must not know the next challenge
        self.tracks: dict[int, TrackLiveness] = {}

    def update(
        self, t: float, tracks: np.ndarray, landmarks: np.ndarray, eyes: np.ndarray | None
    ) -> tuple[list[str], list[dict[str, Any]]]:
        events: list[dict[str, Any]] = []
        verdicts: list[str] = []
        for i, track in enumerate(np.asarray(tracks).tolist()):
            st = self.tracks.get(track)
            if st is None:
                st = self.tracks[track] = TrackLiveness(self.rules, t)
                if self.rules.mode == "challenge":
                    st.challenge = self.rng.choice(CHALLENGES)
                    events.append(self._event("liveness_challenge", track, st))
            ear = float(eyes[i]) if eyes is not None else float("nan")
            if st.add(t, landmarks[i], ear):
                events.append(self._event("liveness", track, st))
            verdicts.append(st.verdict)
        return verdicts, events

    def verdict(self, track: int) -> str:
        st = self.tracks.get(track)
        return st.verdict if st is not None else UNKNOWN

    def forget(self, keep: set[int]) -> None:
        """Drop the state of tracks no longer alive (the tracker's own set)."""
        for track in [k for k in self.tracks if k not in keep]:
            del self.tracks[track]

    def _event(self, kind: str, track: int, st: TrackLiveness) -> dict[str, Any]:
        ev: dict[str, Any] = {"type": kind, "camera": self.camera, "track": track, "mode": self.rules.mode}
        if st.challenge:
            ev["challenge"] = list(st.challenge)
        if kind == "liveness_challenge":
            ev["window_s"] = self.rules.window_s
        else:
            ev["liveness"] = st.verdict
            ev["reason"] = st.reason
            ev["after_s"] = round((st.decided_at or st.first_seen) - st.first_seen, 3)
        return ev
