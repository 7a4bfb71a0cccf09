"""The liveness judge on landmark sequences whose truth is known by construction: five points of a 3D
head turned by a pinhole camera, and the same face printed flat on a sheet that is turned and tilted
the same way (plus detector-like noise); blinks as eye aspect ratio series."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from stream.liveness.blink import BlinkCounter
from stream.liveness.geometry import plane_residual, yaw
from stream.liveness.judge import (
    CHALLENGES,
    LIVE,
    NOT_LIVE,
    UNKNOWN,
    LivenessJudge,
    LivenessRules,
    similarity_residual,
)

FPS = 25.0
# A head's five landmarks in mm (x right, y down, z away from the camera): eyes, nose tip in front,
# mouth corners a little in front of the eyes' plane.
HEAD = np.array([[-32.0, 0, 0], [32, 0, 0], [0, 38, -28], [-24, 68, -8], [24, 68, -8]])
FLAT = HEAD * np.array([1, 1, 0])  # the same face printed on a sheet


def project(points: np.ndarray, yaw_deg: float, pitch_deg: float = 0.0, dist: float = 500.0) -> np.ndarray:
    y, p = math.radians(yaw_deg), math.radians(pitch_deg)
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    centre = points.mean(0)
    q = (points - centre) @ (rx @ ry).T + np.array([0, 0, dist])
    return 600.0 * q[:, :2] / q[:, 2:3] + np.array([320.0, 240.0])


def run(
    judge: LivenessJudge,
    points: np.ndarray,
    yaws: list[float],
    pitches: list[float] | None = None,
    noise: float = 0.0,
    eyes: list[float] | None = None,
    seed: int = 0,
) -> str:
    rng = np.random.default_rng(seed)
    pitches = pitches or [0.0] * len(yaws)
    for i, (y, p) in enumerate(zip(yaws, pitches, strict=True)):
        lm = project(points, y, p) + rng.normal(0, noise, (5, 2))
        ear = np.array([eyes[i] if eyes else np.nan], np.float32)
        judge.update(i / FPS, np.array([1]), lm[None], ear)
    return judge.verdict(1)


class Ask(random.Random):
    def __init__(self, challenge: tuple[str, ...]):
        super().__init__(0)
        self.challenge = challenge

    def choice(self, seq):  # type: ignore[no-untyped-def, override]
        return self.challenge


def turns(first: float, second: float, seconds: float = 4.0) -> list[float]:
    """Yaw per frame: still, turn to `first` degrees, back through 0 to `second`, back to 0."""
    n = int(seconds * FPS)
    keys = [(0.0, 0.0), (0.15, 0.0), (0.35, first), (0.55, first), (0.75, second), (0.9, second), (1.0, 0.0)]
    xs, ys = zip(*keys, strict=True)
    return list(np.interp(np.linspace(0, 1, n), xs, ys))


def test_geometry_tells_a_head_from_a_sheet() -> None:
    front = project(HEAD, 0)
    # A turned head: the nose leaves the eye line and no homography maps the frontal view onto it.
    assert abs(yaw(project(HEAD, 30)) - yaw(front)) > 0.25 and plane_residual(front, project(HEAD, 30)) > 0.08
    # The same turn of a sheet: the nose stays on its line, one homography explains the view.
    flat0 = project(FLAT, 0)
    assert abs(yaw(project(FLAT, 30)) - yaw(flat0)) < 0.05 and plane_residual(flat0, project(FLAT, 30)) < 1e-6
    assert similarity_residual(flat0, project(FLAT, 45, 20)) > 0.06  # the sheet's shape did change


@pytest.mark.parametrize("challenge", CHALLENGES)
def test_a_head_answering_its_challenge_is_live(challenge: tuple[str, ...]) -> None:
    # turn_left: the nose moves to the image's right, a negative angle in `project`.
    sign = {"turn_left": -1, "turn_right": 1}
    j = LivenessJudge("door", LivenessRules(mode="challenge"), Ask(challenge))
    assert run(j, HEAD, turns(35 * sign[challenge[0]], 35 * sign[challenge[1]]), noise=1.0) == LIVE
    assert j.tracks[1].reason == "challenge answered" and j.tracks[1].decided_at < 4.0


def test_turns_in_the_wrong_order_are_not_live() -> None:
    j = LivenessJudge("door", LivenessRules(mode="challenge", window_s=5), Ask(("turn_right", "turn_left")))
    assert run(j, HEAD, turns(-35, 35, seconds=5.5), noise=1.0) == NOT_LIVE  # left first, then right
    assert j.tracks[1].reason.startswith("1 of 2 turns")


@pytest.mark.parametrize("challenge", CHALLENGES)
@pytest.mark.parametrize("noise", [0.0, 1.5])
def test_a_sheet_turned_and_tilted_is_never_live(challenge: tuple[str, ...], noise: float) -> None:
    n = int(7 * FPS)
    yaws = [45 * math.sin(2 * math.pi * i / 50) for i in range(n)]
    pitches = [20 * math.sin(2 * math.pi * i / 70 + 1) for i in range(n)]
    events = []
    j = LivenessJudge("door", LivenessRules(mode="challenge"), Ask(challenge))
    rng = np.random.default_rng(3)
    for i in range(n):
        lm = project(FLAT, yaws[i], pitches[i]) + rng.normal(0, noise, (5, 2))
        verdicts, ev = j.update(i / FPS, np.array([1]), lm[None], None)
        assert verdicts != [LIVE]
        events += ev
    assert j.verdict(1) == NOT_LIVE
    assert [e["type"] for e in events] == ["liveness_challenge", "liveness"]
    assert events[0]["challenge"] == list(challenge) and events[1]["liveness"] == NOT_LIVE


def test_a_still_head_waits_for_the_window_then_is_not_live() -> None:
    j = LivenessJudge("door", LivenessRules(mode="challenge", window_s=2.0), Ask(CHALLENGES[0]))
    assert run(j, HEAD, [0.0] * 40, noise=1.0) == UNKNOWN  # 1.6 s: still within the window
    assert run(j, HEAD, [0.0] * 60, noise=1.0) == NOT_LIVE
    assert j.tracks[1].reason == "0 of 2 turns within 2 s"


def blink_series(n: int, at: list[int], closed: int = 3, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    ear = 0.3 + rng.normal(0, 0.01, n)
    for a in at:
        ear[a : a + closed] = 0.12
    return ear.tolist()


def test_a_blink_makes_a_track_live_in_blink_mode() -> None:
    j = LivenessJudge("door", LivenessRules(mode="blink"))
    assert run(j, HEAD, [0.0] * 60, noise=1.0, eyes=blink_series(60, [30])) == LIVE
    assert j.tracks[1].decided_at == pytest.approx(33 / FPS)
    # The same face without a blink: not live once the window has passed.
    j = LivenessJudge("door", LivenessRules(mode="blink", window_s=2.0))
    assert run(j, HEAD, [0.0] * 60, noise=1.0, eyes=blink_series(60, [])) == NOT_LIVE


def test_what_is_not_a_blink() -> None:
    c = BlinkCounter()
    # Eyes closed for a second and a half (a look down, a lost face): no blink.
    series = blink_series(100, [20], closed=40)
    assert not any(c.add(i / FPS, e) for i, e in enumerate(series))
    # A closure before the open level is known, and unmeasured faces, count for nothing.
    c = BlinkCounter()
    assert not any(c.add(i / FPS, e) for i, e in enumerate([0.1, 0.3, float("nan"), 0.3, float("nan")]))
    assert c.blinks == 0


def test_a_flat_picture_with_a_blink_in_it_is_still_not_live() -> None:
    # A sheet turned hard enough to change its shape is not_live before a (replayed) blink counts.
    n = 60
    yaws = [50 * math.sin(2 * math.pi * i / 40) for i in range(n)]
    j = LivenessJudge("door", LivenessRules(mode="blink"))
    assert run(j, FLAT, yaws, eyes=blink_series(n, [40])) == NOT_LIVE
    assert j.tracks[1].reason == "moves like a flat picture"


def test_tracks_are_judged_apart_and_forgotten() -> None:
    j = LivenessJudge("door", LivenessRules(mode="blink"))
    lm = np.stack([project(HEAD, 0), project(HEAD, 0) + 100])
    for i, e in enumerate(blink_series(40, [20])):
        verdicts, _ = j.update(i / FPS, np.array([1, 2]), lm, np.array([e, 0.3], np.float32))
    assert verdicts == [LIVE, UNKNOWN]
    j.forget({2})
    assert set(j.tracks) == {2} and j.verdict(1) == UNKNOWN
