"""Liveness inside the pipeline, for the cameras whose config asks (`sources[].liveness.mode`):
`EyeReader` in the embed stage (the face mesh's eye aspect ratio per face, while the frame's pixels
are at hand), `LivenessBook` in the match stage (a LivenessJudge per camera, fed with the tracker's
track ids). Cameras with liveness off cost nothing: no model is loaded unless one camera asks."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from stream.liveness.judge import LivenessJudge, LivenessRules
from stream.pipeline import wire
from stream.pipeline.config import PipelineConfig

log = logging.getLogger(__name__)


class EyeReader:
    """Sets `eyes` on the faces of frames from cameras with liveness on."""

    def __init__(self, cfg: PipelineConfig, threads: int | None = None, home: Path | None = None):
        self.cameras = {s.name for s in cfg.sources if s.liveness.mode != "off"}
        self.mesh = None
        if self.cameras:
            from stream.liveness.mesh import FaceMesh

            self.mesh = FaceMesh(home if home is not None else cfg.home, threads)
            log.info("liveness on for %s: face mesh loaded", ", ".join(sorted(c for c in self.cameras if c)))

    def measure(self, msg: wire.Dets) -> None:
        """msg.frame must hold the frame's pixels (loaded); a failure leaves the eyes unmeasured."""
        if self.mesh is None or msg.cam not in self.cameras or not len(msg.dets) or msg.frame is None:
            return
        d = msg.dets
        try:
            msg.dets = d.with_columns(eyes=self.mesh.eyes(msg.frame, d.boxes, d.landmarks))
        except Exception as e:  # noqa: BLE001 - one bad frame must not kill the stage
            log.warning("%s/%d: face mesh failed: %s", msg.cam, msg.seq, e)


class LivenessBook:
    """One LivenessJudge per camera that asks; verdicts per face and events."""

    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg
        self.judges: dict[str, LivenessJudge] = {}

    def judge(self, cam: str) -> LivenessJudge | None:
        c = self.cfg.liveness(cam)
        if c is None:
            return None
        if cam not in self.judges:
            self.judges[cam] = LivenessJudge(cam, LivenessRules(mode=c.mode, window_s=c.window_s))
        return self.judges[cam]

    def update(
        self, cam: str, t: float, result: wire.Result, alive: set[int]
    ) -> tuple[wire.Result, list[dict[str, Any]]]:
        """The result with each face's track's liveness (cameras that ask), and the liveness events
        (with the track's name as this frame shows it). `alive`: the tracker's open tracks."""
        j = self.judge(cam)
        if j is None:
            return result, []
        d = result.dets
        tracks = d.tracks if d.tracks is not None else np.zeros(0, np.int32)
        verdicts, events = j.update(t, tracks, d.landmarks, d.eyes)
        j.forget(alive | set(tracks.tolist()))
        names = dict(zip(tracks.tolist(), d.names or [None] * len(tracks), strict=True))
        for ev in events:
            ev["name"] = names.get(ev["track"])
        live: list[str | None] = list(verdicts)
        result.dets = d.with_columns(liveness=live)
        return result, events

    def annotate(self, cam: str, events: list[dict[str, Any]]) -> None:
        """Track events of a camera that asks carry the track's liveness (a kiosk opens on
        track_confirmed with liveness live, or on the later `liveness` event)."""
        j = self.judge(cam)
        if j is None:
            return
        for ev in events:
            if ev.get("type", "").startswith("track_") or ev.get("type") == "unknown_persists":
                ev["liveness"] = j.verdict(int(ev["track"]))

    def end(self, cam: str) -> None:
        """The camera's source ended: its tracks and their verdicts are gone."""
        self.judges.pop(cam, None)
