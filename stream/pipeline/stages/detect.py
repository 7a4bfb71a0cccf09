"""Detect: batched MTCNN over frames from every camera (take what is waiting, never wait for all).
Passes the pixels on with boxes, scores and landmarks; control messages pass through in order."""

from __future__ import annotations

import logging
import time

import numpy as np
import zmq

from stream.pipeline import framering, metrics, transport, wire
from stream.pipeline.batching import Received, receive, take_batch
from stream.pipeline.config import PipelineConfig
from stream.pipeline.stages.base import Stop, report_ready, send_blocking, set_threads, stage_threads

log = logging.getLogger(__name__)
STAGE = "detect"


def load_detector(cfg: PipelineConfig):
    from stream.detector import MTCNN
    from stream.modelstore import model_path, read_manifest

    read_manifest("mtcnn", cfg.home)  # a clear "run facestream models pull" when missing
    return MTCNN(
        weights_dir=model_path("mtcnn", cfg.home),
        device=cfg.detect.device,
        min_face_size=cfg.detect.min_face_size,
    )


def empty_arrays() -> dict[str, np.ndarray]:
    return {
        "boxes": np.zeros((0, 4), np.float32),
        "scores": np.zeros((0,), np.float32),
        "landmarks": np.zeros((0, 5, 2), np.float32),
    }


def warm_up(detector) -> None:
    """The first calls at new sizes are ~10x slower (runtime allocations): pay that before reporting ready,
    not on a live camera's first second. Noise at two common sizes covers the pyramid's shapes."""
    rng = np.random.default_rng(0)
    for h, w in ((1080, 1920), (360, 640)):
        detector.detect([rng.integers(0, 255, (h, w, 3), dtype=np.uint8)])


def run(cfg: PipelineConfig, index: int, stop: Stop) -> int:
    set_threads(stage_threads(cfg, STAGE))
    detector = load_detector(cfg)
    warm_up(detector)
    m = metrics.get()
    ctx = transport.context(cfg)
    hwm = cfg.transport.hwm
    inp = transport.socket(ctx, zmq.PULL, connect=cfg.upstream(STAGE), hwm=hwm, linger_ms=0)
    out = transport.socket(ctx, zmq.PUSH, bind=cfg.endpoint(STAGE, index), hwm=hwm, linger_ms=2000)
    pixels = framering.StagePixels(cfg, STAGE)
    report_ready(cfg, STAGE, index)
    log.info(
        "detect-%d ready (max_batch %d, max_wait %.1f ms)",
        index,
        cfg.detect.max_batch,
        cfg.detect.max_wait_ms,
    )
    try:
        while not stop:
            batch = take_batch(inp, STAGE, cfg.detect.max_batch, cfg.detect.max_wait_ms)
            batch = keep_freshest(batch, inp, m)
            if batch:
                process(batch, detector, out, m, stop, pixels)
    finally:
        pixels.close()
        inp.close()
        out.close(linger=0 if stop else 2000)
        ctx.term()
    return 0


def keep_freshest(batch: list[Received], sock: zmq.Socket, m: metrics.Metrics) -> list[Received]:
    """Latest-frame semantics for live frames (live cameras, --realtime files): a detector that fell
    behind skips straight to each camera's newest frame instead of working through a backlog, so
    latency stays at about one frame's processing time. Skipped frames are counted (reason "stale")
    and the kept frame carries their number, so the sink's accounting stays exact. File frames
    (blocking backpressure) are never skipped; control messages keep their place in the order."""
    if not batch or not any(r.msg.kind == wire.FRAME and r.msg.meta.get("live") for r in batch):
        return batch
    if batch[-1].msg.kind == wire.FRAME:  # take what else is already waiting, up to a control message
        while sock.poll(0, zmq.POLLIN):
            got = receive(sock, STAGE, zmq.NOBLOCK)
            if got is not None:
                batch.append(got)
                if got.msg.kind != wire.FRAME:
                    break
    newest = {
        r.msg.cam: i for i, r in enumerate(batch) if r.msg.kind == wire.FRAME and r.msg.meta.get("live")
    }
    kept: list[Received] = []
    skipped: dict[str, int] = {}
    for i, r in enumerate(batch):
        msg = r.msg
        if msg.kind == wire.FRAME and msg.meta.get("live"):
            if newest[msg.cam] != i:
                skipped[msg.cam] = skipped.get(msg.cam, 0) + 1 + int(msg.meta.get("skipped", 0))
                m.frames_dropped_total.labels(STAGE, msg.cam, "stale").inc()
                continue
            if skipped.get(msg.cam):
                msg.meta["skipped"] = int(msg.meta.get("skipped", 0)) + skipped.pop(msg.cam)
        kept.append(r)
    return kept


def process(
    batch: list[Received],
    detector,
    out: zmq.Socket,
    m: metrics.Metrics,
    stop: Stop,
    pixels: framering.StagePixels | None = None,
) -> None:
    pixels = pixels or _INLINE
    # Ring frames are viewed in place (load), and verified after detection (check): a slot the capture
    # overwrote meanwhile is a counted drop, never detections on the wrong pixels.
    dropped = {
        id(r) for r in batch if r.msg.kind == wire.FRAME and r.msg.has_pixels and not pixels.load(r.msg)
    }
    frames = [
        r for r in batch if r.msg.kind == wire.FRAME and r.msg.frame is not None and id(r) not in dropped
    ]
    results: dict[int, dict[str, np.ndarray]] = {}
    if frames:
        for r in frames:
            r.msg.t["detect_in"] = r.at_ns
            if "capture" in r.msg.t:
                m.queue_wait_seconds.labels(STAGE).observe((r.at_ns - r.msg.t["capture"]) / 1e9)
        m.batch_size.labels(STAGE).observe(len(frames))
        start = time.monotonic_ns()
        try:
            dets = detector.detect([r.msg.frame for r in frames])  # sizes may differ
        except Exception as e:  # noqa: BLE001 - bad input must not kill the stage
            log.warning("detect failed on a batch of %d frames: %s", len(frames), e)
            dets = [None] * len(frames)
        end = time.monotonic_ns()
        for r, d in zip(frames, dets, strict=True):
            if not pixels.check(r.msg):
                dropped.add(id(r))
                continue
            r.msg.t["detect_out"] = end
            m.stage_seconds.labels(STAGE, r.msg.cam).observe((end - start) / 1e9)
            m.frames_total.labels(STAGE, r.msg.cam).inc()
            if d is None:
                r.msg.meta["error"] = "detection failed"
                results[id(r)] = empty_arrays()
            else:
                results[id(r)] = {
                    "boxes": np.asarray(d.boxes, np.float32).reshape(-1, 4),
                    "scores": np.asarray(d.scores, np.float32).reshape(-1),
                    "landmarks": np.asarray(d.landmarks, np.float32).reshape(-1, 5, 2),
                }
    for r in batch:
        msg = r.msg
        pixels.done(msg)  # detect is through with this slot
        if id(r) in dropped:
            continue
        if id(r) in results:
            msg.kind = wire.DETS
            msg.arrays = results[id(r)]
        elif msg.kind == wire.FRAME:  # a frame header without pixels: nothing to detect
            msg.kind, msg.arrays = wire.DETS, empty_arrays()
        pixels.carry(msg)
        send_blocking(out, msg, stop)


class _Inline:
    """No ring: every frame's pixels came with it."""

    def load(self, msg) -> bool:
        return True

    def check(self, msg) -> bool:
        return True

    def done(self, msg) -> None:
        pass

    def carry(self, msg) -> None:
        pass


_INLINE = _Inline()
