"""Detect: batched MTCNN over frames from every camera (take what is waiting, never wait for all).
Passes the pixels on with boxes, scores and landmarks; control messages pass through in order."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq

from stream.detections import Detections
from stream.guided import Guide, GuidedSettings
from stream.pipeline import framering, metrics, wire
from stream.pipeline.batching import Received, receive, take_batch
from stream.pipeline.config import PipelineConfig
from stream.pipeline.roles import Role
from stream.pipeline.stages.base import Stage, Stop, send_blocking, set_threads, stage_threads
from stream.pipeline.trust import Trust

if TYPE_CHECKING:
    from stream.detector import MTCNN

log = logging.getLogger(__name__)
STAGE = Role.DETECT


def load_detector(cfg: PipelineConfig) -> MTCNN:
    from stream.detector import MTCNN
    from stream.modelstore import require_model

    return MTCNN(
        weights_dir=require_model("mtcnn", cfg.home),
        device=cfg.detect.device,
        min_face_size=cfg.detect.min_face_size,
    )


def warm_up(detector: MTCNN) -> None:
    """The first calls at new sizes are much slower (runtime allocations; benchmarks/RESULTS.md,
    Pipeline): pay that before reporting ready, not on a live camera's first second. Noise at two
    common sizes covers the pyramid's shapes."""
    rng = np.random.default_rng(0)
    for h, w in ((1080, 1920), (360, 640)):
        detector.detect([rng.integers(0, 255, (h, w, 3), dtype=np.uint8)])


class Detect(Stage):
    role = Role.DETECT

    def load(self) -> None:
        set_threads(stage_threads(self.cfg, self.role))
        self.detector = load_detector(self.cfg)
        warm_up(self.detector)
        d = self.cfg.detect
        settings = GuidedSettings(
            full_every_s=d.full_every_s,
            min_face_size=d.min_face_size,
            cut_change=self.cfg.match.tracking.cut_change,  # one scene-cut level for tracks and detection
        )
        self.guide = Guide(settings) if d.mode == "guided" else None

    def ready_line(self) -> str:
        d = self.cfg.detect
        return f"{self.name} ready ({d.mode}, max_batch {d.max_batch}, max_wait {d.max_wait_ms:.1f} ms)"

    def step(self) -> None:
        d = self.cfg.detect
        batch = take_batch(self.inp, self.role, d.max_batch, d.max_wait_ms, trust=self.trust)
        batch = keep_freshest(batch, self.inp, self.m, self.trust)
        if batch:
            process(batch, self.detector, self.out, self.m, self.stop, self.pixels, self.guide)


def keep_freshest(
    batch: list[Received], sock: zmq.Socket[Any], m: metrics.Metrics, trust: Trust | None = None
) -> list[Received]:
    """Latest-frame semantics for live frames (live cameras, --realtime files): a detector that fell
    behind skips straight to each camera's newest frame instead of working through a backlog, so
    latency stays at about one frame's processing time. Skipped frames are counted (reason "stale")
    and the kept frame carries their number, so the sink's accounting stays exact. File frames
    (blocking backpressure) are never skipped; control messages keep their place in the order."""
    if not batch or not any(_live(r.msg) for r in batch):
        return batch
    if isinstance(batch[-1].msg, wire.Frame):  # take what else is already waiting, up to a control message
        while sock.poll(0, zmq.POLLIN):
            got = receive(sock, STAGE, zmq.NOBLOCK, trust)
            if got is not None:
                batch.append(got)
                if not isinstance(got.msg, wire.Frame):
                    break
    newest = {r.msg.cam: i for i, r in enumerate(batch) if _live(r.msg)}
    kept: list[Received] = []
    skipped: dict[str, int] = {}
    for i, r in enumerate(batch):
        msg = r.msg
        if isinstance(msg, wire.Frame) and msg.live:
            if newest[msg.cam] != i:
                skipped[msg.cam] = skipped.get(msg.cam, 0) + 1 + msg.skipped
                m.frames_dropped_total.labels(STAGE, msg.cam, "stale").inc()
                continue
            if skipped.get(msg.cam):
                msg.skipped += skipped.pop(msg.cam)
        kept.append(r)
    return kept


def _live(msg: wire.Message) -> bool:
    return isinstance(msg, wire.Frame) and msg.live


def process(
    batch: list[Received],
    detector: MTCNN,
    out: zmq.Socket[Any],
    m: metrics.Metrics,
    stop: Stop,
    pixels: framering.StagePixels | None = None,
    guide: Guide | None = None,
) -> None:
    px: framering.StagePixels | _Inline = pixels or _INLINE
    # Ring frames are viewed in place (load), and verified after detection (check): a slot the capture
    # overwrote meanwhile is a counted drop, never detections on the wrong pixels.
    dropped = {
        id(r) for r in batch if isinstance(r.msg, wire.Frame) and r.msg.has_pixels and not px.load(r.msg)
    }
    frames = [
        (r, r.msg)
        for r in batch
        if isinstance(r.msg, wire.Frame) and r.msg.frame is not None and id(r) not in dropped
    ]
    results: dict[int, wire.Dets] = {}
    if frames:
        for r, msg in frames:
            msg.t["detect_in"] = r.at_ns
            if "capture" in msg.t:
                m.queue_wait_seconds.labels(STAGE).observe((r.at_ns - msg.t["capture"]) / 1e9)
        m.batch_size.labels(STAGE).observe(len(frames))
        start = time.monotonic_ns()
        found: list[Detections] | list[None]
        try:
            images: list[np.ndarray] = [msg.frame for _, msg in frames]  # type: ignore[misc]  # loaded
            if guide is None:
                found = detector.detect(images)
            else:
                cut = guide.settings.cut_change
                plans = [
                    guide.plan(msg.cam, msg.frame, _time(msg), msg.change is not None and msg.change >= cut)  # type: ignore[arg-type]
                    for _, msg in frames
                ]
                for (_, msg), p in zip(frames, plans, strict=True):
                    m.detect_plans_total.labels(msg.cam, p.reason).inc()
                found = detector.detect_regions(
                    images,
                    [p.regions for p in plans],
                    [p.min_faces for p in plans],
                    [p.max_faces for p in plans],
                )
        except Exception as e:  # noqa: BLE001 - bad input must not kill the stage
            log.warning("detect failed on a batch of %d frames: %s", len(frames), e)
            found = [None] * len(frames)
        end = time.monotonic_ns()
        m.busy_seconds_total.labels(STAGE).inc((end - start) / 1e9)
        for (r, msg), d in zip(frames, found, strict=True):
            if not px.check(msg):
                dropped.add(id(r))
                continue
            msg.t["detect_out"] = end
            m.stage_seconds.labels(STAGE, msg.cam).observe((end - start) / 1e9)
            m.frames_total.labels(STAGE, msg.cam).inc()
            if d is None:
                results[id(r)] = msg.to(wire.Dets, error="detection failed")
            else:
                if guide is not None:
                    guide.observe(msg.cam, d.boxes)
                results[id(r)] = msg.to(wire.Dets, dets=Detections.of(d.boxes, d.scores, d.landmarks))
    for r in batch:
        px.done(r.msg)  # detect is through with this slot
        if id(r) in dropped:
            continue
        out_msg: wire.Message = results.get(id(r), r.msg)
        if isinstance(out_msg, wire.Frame):  # a frame header without pixels: nothing to detect
            out_msg = out_msg.to(wire.Dets)
        px.carry(out_msg)
        send_blocking(out, out_msg, stop)


def _time(msg: wire.FrameMessage) -> float:
    """The frame's time: the video's own clock for files (pts), capture wall time for live cameras."""
    return msg.pts if msg.pts is not None else msg.wall


class _Inline:
    """No ring: every frame's pixels came with it."""

    def load(self, msg: wire.FrameMessage) -> bool:
        return True

    def check(self, msg: wire.FrameMessage) -> bool:
        return True

    def done(self, msg: wire.Message) -> None:
        pass

    def carry(self, msg: wire.Message) -> None:
        pass


_INLINE = _Inline()
