"""Match: names each frame's faces against the gallery, tracks faces per camera (a track's name is
shown only on faces whose own match agrees: stream/gallery/tracking.py), and publishes one result per frame: reliably to the sinks (PUSH) and best-effort to
dashboards (results PUB, msgpack). Picks up gallery changes while running."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq

from stream.liveness.stage import LivenessBook
from stream.pipeline import transport, wire
from stream.pipeline.batching import receive
from stream.pipeline.config import PipelineConfig
from stream.pipeline.endbarrier import EndBarrier
from stream.pipeline.roles import RESULTS, Role
from stream.pipeline.stages.base import Stage

if TYPE_CHECKING:
    from stream.gallery.matcher import Matcher
    from stream.gallery.strangers import Strangers
    from stream.gallery.tracking import FaceTracker

log = logging.getLogger(__name__)
STAGE = Role.MATCH


class Namer:
    """Matcher + one FaceTracker per camera; without a gallery everyone is unknown."""

    def __init__(self, cfg: PipelineConfig):
        from stream.registry import get_spec

        self.cfg = cfg
        self.matcher: Matcher | None = None
        threshold = cfg.match.threshold if cfg.match.threshold is not None else get_spec(cfg.model).threshold
        if cfg.gallery is not None:
            from stream.gallery.matcher import Matcher

            self.matcher = Matcher(cfg.gallery, cfg.model, cfg.match.threshold)
            threshold = self.matcher.threshold
            log.info("gallery %s: %d samples, threshold %.3f", cfg.gallery, self.matcher.size, threshold)
        self.threshold = threshold
        self.metric = get_spec(cfg.model).metric
        self.trackers: dict[str, FaceTracker] = {}
        self.strangers: Strangers | None = None
        if cfg.gallery is not None and cfg.match.unknowns.enabled:
            import sqlite3

            from stream.errors import FacestreamError
            from stream.gallery.strangers import Strangers

            try:
                self.strangers = Strangers(cfg.gallery, cfg.model, threshold, self.metric, cfg.match.unknowns)
            except (FacestreamError, sqlite3.Error) as e:  # a read-only gallery: names still work
                log.warning("unknown clustering off: cannot write to gallery %s (%s)", cfg.gallery, e)
        self.liveness = LivenessBook(cfg)  # cameras that ask for liveness (stream/liveness)
        self._next_refresh = time.monotonic() + cfg.match.refresh_s

    def tracker(self, cam: str) -> FaceTracker:
        from stream.gallery.tracking import FaceTracker, Rules

        if cam not in self.trackers:
            c = self.cfg.match.tracking
            rules = Rules(**c.model_dump(exclude={"cut_change"}))
            self.trackers[cam] = FaceTracker(cam, self.threshold, rules, self.metric)
        tracker = self.trackers[cam]
        tracker.threshold = self.threshold  # a recalibrated gallery: the new threshold from now on
        return tracker

    def refresh(self) -> None:
        if self.matcher is None or time.monotonic() < self._next_refresh:
            return
        self._next_refresh = time.monotonic() + self.cfg.match.refresh_s
        if self.strangers is not None:
            try:  # a failure here must not keep names from updating
                self.strangers.refresh()
            except Exception as e:  # noqa: BLE001 - retried at the next refresh
                log.warning("unknown identities refresh failed: %s", e)
        try:
            if self.matcher.refresh():
                self.threshold = self.matcher.threshold
                log.info("gallery reloaded: %d samples", self.matcher.size)
        except Exception as e:  # noqa: BLE001 - a gallery mid-rewrite: keep the old one, retry later
            log.warning("gallery refresh failed: %s", e)

    def name(self, msg: wire.Faces) -> tuple[wire.Result, list[dict[str, Any]]]:
        """The frame's result (its faces with tracks, names and distances) and the track events."""
        from stream.gallery.matcher import Match

        dets = msg.dets
        emb = dets.embeddings if dets.embeddings is not None else np.zeros((len(dets), 0), np.float32)
        if self.matcher is not None and len(emb):
            matches = self.matcher.evidence(emb)
        else:
            matches = [Match(None, math.inf, None) for _ in range(len(emb))]
        # Track time: the video's own clock for files (pts), capture wall time for live cameras.
        t = msg.pts if msg.pts is not None else msg.wall
        tracker = self.tracker(msg.cam)
        events = []
        before = set(tracker.tracks)
        if msg.change is not None and msg.change >= self.cfg.match.tracking.cut_change:
            events = tracker.cut(t)  # a scene cut: nobody on screen now continues a track
        quality = dets.quality if dets.quality is not None else np.zeros(len(dets), np.float32)
        tracked, more = tracker.update(
            t, dets.boxes, matches, emb if emb.shape[1] else None, quality, dets.reused
        )
        tracks = np.array([tf.track for tf in tracked], np.int32)
        unknowns: list[str | None] = [None] * len(tracked)
        extra: list[dict[str, Any]] = []
        if self.strangers is not None:
            now = msg.wall
            unknowns, extra = self.strangers.observe(
                msg.cam,
                now,
                tracks,
                [tracker.tracks[tf.track].name is not None for tf in tracked],
                emb,
                quality,
                tracker.rules.good_quality,
                _cropper(msg.frame, dets) if isinstance(msg.frame, np.ndarray) else None,
                dets.reused,
            )
            extra += self.strangers.ended(msg.cam, sorted(before - set(tracker.tracks)), now)
        named = dets.with_columns(
            tracks=tracks,
            names=[tf.name for tf in tracked],
            candidates=[tf.candidate for tf in tracked],
            distances=np.array([tf.distance for tf in tracked], np.float64),
            quality=np.asarray(quality, np.float32),
            unknowns=[u if tf.name is None else None for u, tf in zip(unknowns, tracked, strict=True)],
        )
        out = [e.to_dict() for e in events + more]
        self.liveness.annotate(msg.cam, out)
        result, live_events = self.liveness.update(
            msg.cam, t, msg.to(wire.Result, dets=named), set(tracker.tracks)
        )
        return result, out + extra + live_events

    def end(self, cam: str, t: float) -> list[dict[str, Any]]:
        tracker = self.trackers.pop(cam, None)
        events = [e.to_dict() for e in tracker.flush(t)] if tracker is not None else []
        self.liveness.annotate(cam, events)
        self.liveness.end(cam)
        if self.strangers is not None:
            events += self.strangers.end_camera(cam, time.time())
        return events

    def close(self) -> None:
        if self.strangers is not None:
            self.strangers.close()
        if self.matcher is not None:
            self.matcher.close()


def _cropper(frame: np.ndarray, dets: Any) -> Any:
    """crop(i) -> (JPEG, box, landmarks) of face i in the gallery's crop format (crops.py)."""
    from stream.gallery.crops import encode_crop, make_crop

    def crop(i: int) -> tuple[bytes, list[float], list[list[float]]]:
        img, (x0, y0, scale) = make_crop(frame, dets.boxes[i])
        o = np.array([x0, y0])
        box = ((np.asarray(dets.boxes[i], np.float64).reshape(2, 2) - o) * scale).reshape(-1)
        lm = (np.asarray(dets.landmarks[i], np.float64) - o) * scale
        return encode_crop(img), [round(float(v), 2) for v in box], np.round(lm, 2).tolist()

    return crop


class Match(Stage):
    role = Role.MATCH

    def load(self) -> None:
        self.namer = Namer(self.cfg)
        # A camera's end goes on only after its frames, which may come later through other workers.
        # Frames that never came are counted here when no supervisor books them (stages started
        # alone, Kubernetes): under a supervisor they are the dead stage's `crashed` (settle()).
        supervised = bool(os.environ.get("FACESTREAM_SUPERVISED"))
        self.ends = EndBarrier(self.cfg.supervisor.eos_grace_s, None if supervised else self.count_lost)

    def close(self) -> None:
        self.namer.close()

    def count_lost(self, cam: str, frames: int) -> None:
        self.m.frames_dropped_total.labels(STAGE, cam, "lost_in_flight").inc(frames)

    def open(self) -> None:
        t = self.cfg.transport
        self.inp = self.input()
        self.sink = self.output(hwm=max(t.hwm, 16), linger_on_stop=0)
        self.pub = self.output(
            zmq.PUB, self.cfg.endpoint(RESULTS), hwm=t.results_hwm, linger_ms=0, linger_on_stop=0
        )

    def ready_line(self) -> str:
        return "match ready"

    def emit(self, msg: wire.Message) -> None:
        self.send(self.sink, msg)
        # Dashboards get results, not pixels: no frame, and no ring reference they could not map.
        light = msg
        if isinstance(msg, wire.FrameMessage) and (msg.frame is not None or msg.ref):
            light = dataclasses.replace(msg, frame=None, ref=None)
        elif isinstance(msg, wire.EndOfStream) and msg.origin:  # the capture's token stays inside
            light = dataclasses.replace(msg, origin=None)
        try:  # dashboards are best-effort: a slow subscriber loses messages, never slows us
            transport.send(self.pub, light, zmq.NOBLOCK)
        except zmq.Again:
            pass

    def emit_events(self, cam: str, events: list[dict[str, Any]]) -> None:
        for ev in events:
            self.emit(wire.event_message(cam, ev))

    def end(self, eos: wire.EndOfStream) -> None:
        """The camera's tracks end (their last events), then its end-of-stream goes on."""
        self.emit_events(eos.cam, self.namer.end(eos.cam, time.time()))
        self.emit(eos)

    def step(self) -> None:
        self.namer.refresh()
        for eos in self.ends.due(time.monotonic()):
            self.end(eos)
        if not self.inp.poll(200, zmq.POLLIN):
            return
        got = receive(self.inp, self.role, zmq.NOBLOCK, self.trust)
        if got is None:
            return
        msg, m = got.msg, self.m
        if isinstance(msg, wire.Faces):
            if "embed_out" in msg.t:
                m.queue_wait_seconds.labels(STAGE).observe((got.at_ns - msg.t["embed_out"]) / 1e9)
            start = got.at_ns
            msg.t["match_in"] = start
            result, events = self.namer.name(msg)  # the recorder's pixels: still in the ring (one host)
            msg.stamp("match_out")
            m.busy_seconds_total.labels(STAGE).inc((msg.t["match_out"] - start) / 1e9)
            self.ends.frame(msg, time.monotonic())
            m.stage_seconds.labels(STAGE, msg.cam).observe((msg.t["match_out"] - start) / 1e9)
            m.frames_total.labels(STAGE, msg.cam).inc()
            if "capture" in msg.t:
                m.e2e_latency_seconds.labels(msg.cam).observe((msg.t["match_out"] - msg.t["capture"]) / 1e9)
            names = result.dets.names or []
            for name in names:
                m.matches_total.labels(msg.cam, "known" if name else "unknown").inc()
            self.emit(result)
            self.emit_events(msg.cam, events)
        elif isinstance(msg, wire.EndOfStream):
            for eos in self.ends.end(msg, time.monotonic()):
                self.end(eos)
        else:
            self.emit(msg)
