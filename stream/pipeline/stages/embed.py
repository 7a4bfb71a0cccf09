"""Embed: aligns each detected face and embeds faces of several frames in one ONNX Runtime call.
Output stays per frame (a frame's faces travel together: tracking needs them at once)."""

from __future__ import annotations

import logging
import time

import numpy as np
import zmq

from stream.pipeline import framering, metrics, transport, wire
from stream.pipeline.batching import Received, take_batch
from stream.pipeline.config import PipelineConfig
from stream.pipeline.stages.base import Stop, report_ready, send_blocking, set_threads, stage_threads

log = logging.getLogger(__name__)
STAGE = "embed"


def faces_in(msg: wire.Message) -> int:
    boxes = msg.arrays.get("boxes")
    return 0 if boxes is None else len(boxes)


def run(cfg: PipelineConfig, index: int, stop: Stop) -> int:
    from stream.embedder import Embedder

    threads = stage_threads(cfg, STAGE)
    set_threads(threads)
    embedder = Embedder(
        cfg.model, home=cfg.home, device=cfg.embed.device, threads=threads, precision=cfg.embed.precision
    )
    w, h = embedder.crop_spec.size
    embedder.embed(np.zeros((8, h, w, 3), np.uint8))  # warm-up: first runs are slow (allocations)
    m = metrics.get()
    ctx = transport.context(cfg)
    hwm = cfg.transport.hwm
    inp = transport.socket(ctx, zmq.PULL, connect=cfg.upstream(STAGE), hwm=hwm, linger_ms=0)
    out = transport.socket(ctx, zmq.PUSH, bind=cfg.endpoint(STAGE, index), hwm=hwm, linger_ms=2000)
    keep_pixels = cfg.outputs.record is not None  # only the video sink needs them downstream
    pixels = framering.StagePixels(cfg, STAGE)
    report_ready(cfg, STAGE, index)
    log.info("embed-%d ready (%s, max_batch %d faces)", index, cfg.model, cfg.embed.max_batch)
    try:
        while not stop:
            batch = take_batch(inp, STAGE, cfg.embed.max_batch, cfg.embed.max_wait_ms, weigh=faces_in)
            if batch:
                process(batch, embedder, out, m, stop, keep_pixels, pixels)
    finally:
        pixels.close()
        inp.close()
        out.close(linger=0 if stop else 2000)
        ctx.term()
    return 0


def process(
    batch: list[Received],
    embedder,
    out: zmq.Socket,
    m: metrics.Metrics,
    stop: Stop,
    keep_pixels: bool,
    pixels: framering.StagePixels | None = None,
) -> None:
    from stream.detector import Detections

    # Ring frames: crops are cut from the slot in place (load) and kept only if the slot still held the
    # frame afterwards (check); the chips are copies, so nothing here holds the slot across batches.
    dropped = set()
    if pixels is not None:
        for r in batch:
            if r.msg.kind == wire.DETS and faces_in(r.msg) and not pixels.load(r.msg):
                dropped.add(id(r))
    frames = [r for r in batch if r.msg.kind == wire.DETS and id(r) not in dropped]
    start = time.monotonic_ns()
    chips, counts, kept = [], [], []
    for r in frames:
        msg = r.msg
        msg.t["embed_in"] = r.at_ns
        if "detect_out" in msg.t:
            m.queue_wait_seconds.labels(STAGE).observe((r.at_ns - msg.t["detect_out"]) / 1e9)
        n = faces_in(msg)
        c = None
        if n:
            dets = Detections(msg.arrays["boxes"], msg.arrays["scores"], msg.arrays["landmarks"])
            try:
                c = embedder.crop(msg.frame, dets)
            except Exception as e:  # noqa: BLE001 - one bad frame must not kill the stage
                log.warning("%s/%d: cannot crop faces: %s", msg.cam, msg.seq, e)
                msg.meta["error"] = "alignment failed"
            if pixels is not None and not pixels.check(msg):
                dropped.add(id(r))
                continue
        if c is None or len(c) != n:
            c = None
            _clear(msg)
        kept.append(r)
        chips.append(c)
        counts.append(0 if c is None else n)
    total = sum(counts)
    emb = np.zeros((0, embedder.dim), np.float32)
    if total:
        m.batch_size.labels(STAGE).observe(total)
        try:
            emb = embedder.embed(np.concatenate([c for c in chips if c is not None]))
        except Exception as e:  # noqa: BLE001 - report, pass the frames on without faces
            log.warning("embedding a batch of %d faces failed: %s", total, e)
            counts = [0] * len(kept)
            for r in kept:
                _clear(r.msg)
                r.msg.meta["error"] = "embedding failed"
    end = time.monotonic_ns()
    at = 0
    for r, n in zip(kept, counts, strict=True):
        msg = r.msg
        msg.arrays = {**msg.arrays, "embeddings": np.ascontiguousarray(emb[at : at + n], np.float32)}
        at += n
        msg.kind = wire.FACES
        msg.t["embed_out"] = end
        m.stage_seconds.labels(STAGE, msg.cam).observe((end - start) / 1e9)
        m.frames_total.labels(STAGE, msg.cam).inc()
    for r in batch:
        if pixels is not None:
            pixels.done(r.msg)  # embed is through with this slot (the recorder may still read it)
        if not keep_pixels and r.msg.kind == wire.FACES:
            r.msg.frame = r.msg.ref = None
        if id(r) in dropped:
            continue
        if pixels is not None:
            pixels.carry(r.msg)
        send_blocking(out, r.msg, stop)


def _clear(msg: wire.Message) -> None:
    """Keep the frame, forget its faces (they could not be aligned or embedded)."""
    msg.arrays = {k: v[:0] for k, v in msg.arrays.items()}
