"""Match: names each frame's faces against the gallery, tracks faces per camera (names voted per
track), and publishes one result per frame: reliably to the sinks (PUSH) and best-effort to
dashboards (results PUB, msgpack). Picks up gallery changes while running."""

from __future__ import annotations

import dataclasses
import logging
import math
import time

import zmq

from stream.pipeline import metrics, transport, wire
from stream.pipeline.batching import receive
from stream.pipeline.config import PipelineConfig
from stream.pipeline.stages.base import Stop, report_ready, send_blocking

log = logging.getLogger(__name__)
STAGE = "match"


class Namer:
    """Matcher + one FaceTracker per camera; without a gallery everyone is unknown."""

    def __init__(self, cfg: PipelineConfig):
        from stream.registry import get_spec

        self.cfg = cfg
        self.matcher = None
        threshold = cfg.match.threshold if cfg.match.threshold is not None else get_spec(cfg.model).threshold
        if cfg.gallery is not None:
            from stream.gallery.matcher import Matcher

            self.matcher = Matcher(cfg.gallery, cfg.model, cfg.match.threshold)
            threshold = self.matcher.threshold
            log.info("gallery %s: %d samples, threshold %.3f", cfg.gallery, self.matcher.size, threshold)
        self.threshold = threshold
        self.trackers: dict = {}
        self._next_refresh = time.monotonic() + cfg.match.refresh_s

    def tracker(self, cam: str):
        from stream.gallery.tracking import FaceTracker

        if cam not in self.trackers:
            self.trackers[cam] = FaceTracker(cam, self.threshold)
        return self.trackers[cam]

    def refresh(self) -> None:
        if self.matcher is None or time.monotonic() < self._next_refresh:
            return
        self._next_refresh = time.monotonic() + self.cfg.match.refresh_s
        try:
            if self.matcher.refresh():
                self.threshold = self.matcher.threshold
                log.info("gallery reloaded: %d samples", self.matcher.size)
        except Exception as e:  # noqa: BLE001 - a gallery mid-rewrite: keep the old one, retry later
            log.warning("gallery refresh failed: %s", e)

    def name(self, msg: wire.Message) -> tuple[list[dict], list[dict]]:
        from stream.gallery.matcher import Match

        emb = msg.arrays["embeddings"]
        boxes = msg.arrays["boxes"]
        if self.matcher is not None and len(emb):
            matches = self.matcher.match(emb)
        else:
            matches = [Match(None, math.inf, None) for _ in range(len(emb))]
        # Track time: the video's own clock for files (pts), capture wall time for live cameras.
        tracked, events = self.tracker(msg.cam).update(float(msg.meta.get("pts", msg.wall)), boxes, matches)
        faces = []
        scores, landmarks = msg.arrays["scores"], msg.arrays["landmarks"]
        for i, tf in enumerate(tracked):
            faces.append(
                {
                    "box": [round(float(x), 2) for x in boxes[i]],
                    "score": round(float(scores[i]), 5),
                    "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in landmarks[i]],
                    "track": int(tf.track),
                    "name": tf.name,
                    "distance": round(float(tf.distance), 5) if math.isfinite(tf.distance) else None,
                }
            )
        return faces, [e.to_dict() for e in events]

    def end(self, cam: str, t: float) -> list[dict]:
        tracker = self.trackers.pop(cam, None)
        return [e.to_dict() for e in tracker.flush(t)] if tracker is not None else []


def run(cfg: PipelineConfig, index: int, stop: Stop) -> int:
    namer = Namer(cfg)
    m = metrics.get()
    ctx = transport.context(cfg)
    hwm = cfg.transport.hwm
    inp = transport.socket(ctx, zmq.PULL, connect=cfg.upstream(STAGE), hwm=hwm, linger_ms=0)
    sink = transport.socket(ctx, zmq.PUSH, bind=cfg.endpoint(STAGE), hwm=max(hwm, 16), linger_ms=2000)
    pub = transport.socket(
        ctx, zmq.PUB, bind=cfg.endpoint("results"), hwm=cfg.transport.results_hwm, linger_ms=0
    )
    report_ready(cfg, STAGE, index)
    log.info("match ready")

    def emit(msg: wire.Message) -> None:
        send_blocking(sink, msg, stop)
        # Dashboards get results, not pixels: no frame, and no ring reference they could not map.
        light = dataclasses.replace(msg, frame=None, ref=None) if msg.frame is not None or msg.ref else msg
        try:  # dashboards are best-effort: a slow subscriber loses messages, never slows us
            transport.send(pub, light, zmq.NOBLOCK)
        except zmq.Again:
            pass

    def emit_events(cam: str, events: list[dict]) -> None:
        for ev in events:
            emit(wire.event_message(cam, ev))

    try:
        while not stop:
            namer.refresh()
            if not inp.poll(200, zmq.POLLIN):
                continue
            got = receive(inp, STAGE, zmq.NOBLOCK)
            if got is None:
                continue
            msg = got.msg
            if msg.kind == wire.FACES:
                if "embed_out" in msg.t:
                    m.queue_wait_seconds.labels(STAGE).observe((got.at_ns - msg.t["embed_out"]) / 1e9)
                start = got.at_ns
                msg.t["match_in"] = start
                faces, events = namer.name(msg)
                msg.stamp("match_out")
                m.stage_seconds.labels(STAGE, msg.cam).observe((msg.t["match_out"] - start) / 1e9)
                m.frames_total.labels(STAGE, msg.cam).inc()
                if "capture" in msg.t:
                    m.e2e_latency_seconds.labels(msg.cam).observe(
                        (msg.t["match_out"] - msg.t["capture"]) / 1e9
                    )
                m.faces_total.labels(msg.cam).inc(len(faces))
                for f in faces:
                    m.matches_total.labels(msg.cam, "known" if f["name"] else "unknown").inc()
                result = wire.Message(
                    wire.RESULT,
                    msg.cam,
                    msg.seq,
                    msg.t,
                    msg.wall,
                    frame=msg.frame,
                    meta={**msg.meta, "faces": faces},
                    ref=msg.ref,  # the recorder's pixels: still in the ring (one host)
                )
                emit(result)
                emit_events(msg.cam, events)
            elif msg.kind == wire.EOS:
                emit_events(msg.cam, namer.end(msg.cam, time.time()))
                emit(msg)
            else:
                emit(msg)
    finally:
        for sock in (inp, sink, pub):
            sock.close(linger=0 if stop else None)
        ctx.term()
    return 0
