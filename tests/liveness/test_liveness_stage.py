"""Liveness in the match stage and the config: off by default, per camera, verdicts on results and in
the events a kiosk listens to."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from stream.detections import Detections
from stream.pipeline import wire
from stream.pipeline.config import MatchConfig, PipelineConfig, TrackingConfig
from stream.pipeline.stages.match import Namer
from tests.liveness.test_judge import HEAD, blink_series, project


def config(**door: object) -> PipelineConfig:
    return PipelineConfig(
        sources=[{"url": "door.mp4", "name": "door", "liveness": door}, {"url": "hall.mp4", "name": "hall"}],
        match=MatchConfig(tracking=TrackingConfig(unknown_frames=1, unknown_seconds=0)),
    )


def test_liveness_is_off_by_default_and_strict() -> None:
    cfg = config()
    assert cfg.sources[0].liveness.mode == "off" and cfg.liveness("door") is None
    cfg = config(mode="challenge", window_s=4)
    assert cfg.liveness("door").mode == "challenge" and cfg.liveness("hall") is None
    with pytest.raises(ValidationError, match="mode"):
        config(mode="wink")
    with pytest.raises(ValidationError, match="extra"):
        config(mode="blink", blinks=2)
    with pytest.raises(ValidationError, match="window_s"):
        config(mode="blink", window_s=0)


def faces(cam: str, seq: int, eyes: float | None) -> wire.Faces:
    lm = project(HEAD, 0)[None].astype(np.float32)
    x1, y1 = lm[0].min(0) - 30
    x2, y2 = lm[0].max(0) + 30
    dets = Detections.of([[x1, y1, x2, y2]], [0.99], lm).with_columns(
        embeddings=np.zeros((1, 128), np.float32),
        quality=np.ones(1, np.float32),
        eyes=None if eyes is None else np.array([eyes], np.float32),
    )
    return wire.Faces(cam=cam, seq=seq, pts=seq / 25, dets=dets)


def test_the_match_stage_marks_tracks_of_cameras_that_ask() -> None:
    namer = Namer(config(mode="blink", window_s=5))
    series = blink_series(50, [30])
    door_events, hall_events, door, hall = [], [], [], []
    for i, e in enumerate(series):
        r, ev = namer.name(faces("door", i, e))
        door.append(r.dets.liveness)
        door_events += ev
        r, ev = namer.name(faces("hall", i, None))
        hall.append(r.dets.liveness)
        hall_events += ev
    assert door[0] == ["unknown"] and door[-1] == ["live"] and door[32] == ["unknown"]
    assert all(v is None for v in hall)  # off: no verdict, no events
    assert not any("liveness" in e for e in hall_events)
    decided = [e for e in door_events if e["type"] == "liveness"]
    assert len(decided) == 1 and decided[0]["liveness"] == "live" and decided[0]["reason"] == "blink"
    assert decided[0]["camera"] == "door" and "name" in decided[0]
    # Track events of the door camera say the track's liveness as known then; when it leaves, live.
    assert [e["liveness"] for e in door_events if e["type"] == "unknown_persists"] == ["unknown"]
    left = namer.end("door", 99.0)
    assert [(e["type"], e["liveness"]) for e in left] == [("track_left", "live")]
    # The results carry the verdict through the wire and into the JSONL faces.
    r, _ = namer.name(faces("door", 60, 0.3))
    back = wire.decode(wire.encode(r))
    assert wire.faces_json(back.dets)[0]["liveness"] == "unknown"  # a new track after the end


def test_challenge_mode_announces_the_challenge_when_a_track_starts() -> None:
    namer = Namer(config(mode="challenge", window_s=1))
    _, ev = namer.name(faces("door", 0, None))
    asked = [e for e in ev if e["type"] == "liveness_challenge"]
    assert len(asked) == 1 and asked[0]["challenge"] in (
        ["turn_left", "turn_right"],
        ["turn_right", "turn_left"],
    )
    assert asked[0]["window_s"] == 1
    verdicts = [namer.name(faces("door", i, None))[0].dets.liveness for i in range(1, 40)]
    assert verdicts[-1] == ["not_live"]  # a still face never answers
