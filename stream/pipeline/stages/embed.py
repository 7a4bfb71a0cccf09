"""Embed: aligns each detected face and embeds faces of several frames in one ONNX Runtime call.
Output stays per frame (a frame's faces travel together: tracking needs them at once)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq

from stream.detections import Detections
from stream.liveness.stage import EyeReader
from stream.pipeline import framering, metrics, wire
from stream.pipeline.batching import Received, take_batch
from stream.pipeline.follow import Follow, Followed, FollowSettings
from stream.pipeline.roles import Role
from stream.pipeline.stages.base import Stage, Stop, send_blocking, set_threads, stage_threads

if TYPE_CHECKING:
    from stream.embedder import Embedder

log = logging.getLogger(__name__)
STAGE = Role.EMBED


def faces_in(msg: wire.Message) -> int:
    return len(msg.dets) if isinstance(msg, wire.Detected) else 0


class Embed(Stage):
    role = Role.EMBED

    def load(self) -> None:
        from stream.embedder import Embedder

        cfg = self.cfg
        threads = stage_threads(cfg, self.role)
        set_threads(threads)
        self.embedder = Embedder(
            cfg.model, home=cfg.home, device=cfg.embed.device, threads=threads, precision=cfg.embed.precision
        )
        w, h = self.embedder.crop_spec.size
        self.embedder.embed(np.zeros((8, h, w, 3), np.uint8))  # warm-up: first runs are slow (allocations)
        self.eyes = EyeReader(cfg, threads)  # liveness: only for cameras that ask (stream/liveness)
        f = cfg.embed.follow
        self.follow = Follow(
            FollowSettings(f.max_age, f.min_iou, f.min_quality, f.quality_gain, f.max_chip_change)
        )
        # Only the sink needs them downstream: for the video, and for a dashboard's preview when they
        # are a ring reference (a few bytes; inline pixels are not sent on for a preview).
        self.keep_pixels = cfg.outputs.record is not None or (
            cfg.dashboard is not None and cfg.transport.use_shm
        )

    def ready_line(self) -> str:
        return f"{self.name} ready ({self.cfg.model}, max_batch {self.cfg.embed.max_batch} faces)"

    def step(self) -> None:
        e = self.cfg.embed
        batch = take_batch(self.inp, self.role, e.max_batch, e.max_wait_ms, weigh=faces_in, trust=self.trust)
        if batch:
            process(
                batch,
                self.embedder,
                self.out,
                self.m,
                self.stop,
                self.keep_pixels,
                self.pixels,
                self.follow,
                self.cfg.match.tracking.cut_change,
                self.eyes,
            )


def with_quality(msg: wire.Dets, chips: np.ndarray, m: metrics.Metrics) -> tuple[Detections, np.ndarray]:
    """The frame's faces with their quality (stream.gallery.quality.assess, the score enrollment
    uses), and their chips; detections whose landmarks cannot be a face's (a hand, a microphone)
    are dropped here, counted, before any embedding work."""
    from stream.gallery.quality import assess_faces

    d = msg.dets
    quality, keep = assess_faces(d.boxes, d.scores, d.landmarks, chips)
    if not keep.all():
        m.faces_rejected_total.labels(msg.cam, "not a face").inc(int((~keep).sum()))
    return d[keep].with_columns(quality=quality[keep]), chips[keep]


def process(
    batch: list[Received],
    embedder: Embedder,
    out: zmq.Socket[Any],
    m: metrics.Metrics,
    stop: Stop,
    keep_pixels: bool,
    pixels: framering.StagePixels | None = None,
    follow: Follow | None = None,
    cut_change: float = 1.0,
    eyes: EyeReader | None = None,
) -> None:
    follow = follow or Follow(FollowSettings(max_age=0))
    # Ring frames: crops are cut from the slot in place (load) and kept only if the slot still held the
    # frame afterwards (check); the chips are copies, so nothing here holds the slot across batches.
    dropped = set()
    if pixels is not None:
        for r in batch:
            if isinstance(r.msg, wire.Dets) and len(r.msg.dets) and not pixels.load(r.msg):
                dropped.add(id(r))
    frames = [(r, r.msg) for r in batch if isinstance(r.msg, wire.Dets) and id(r) not in dropped]
    start = time.monotonic_ns()
    fresh_chips: list[np.ndarray] = []
    kept: list[tuple[Received, wire.Dets, list[Followed | int]]] = []
    for r, msg in frames:
        msg.t["embed_in"] = r.at_ns
        if "detect_out" in msg.t:
            m.queue_wait_seconds.labels(STAGE).observe((r.at_ns - msg.t["detect_out"]) / 1e9)
        n = len(msg.dets)
        c = None
        if n:
            try:
                c = embedder.crop(msg.frame, msg.dets)  # type: ignore[arg-type]  # loaded: pixels
            except Exception as e:  # noqa: BLE001 - one bad frame must not kill the stage
                log.warning("%s/%d: cannot crop faces: %s", msg.cam, msg.seq, e)
                msg.error = "alignment failed"
            if eyes is not None:
                eyes.measure(msg)  # while the pixels are loaded: checked with the crops just below
            if pixels is not None and not pixels.check(msg):
                dropped.add(id(r))
                continue
        sources: list[Followed | int] = []
        if c is None or len(c) != n:
            msg.dets = msg.dets[:0]  # keep the frame, forget its faces (not aligned)
        else:
            msg.dets, c = with_quality(msg, c, m)
            cut = msg.change is not None and msg.change >= cut_change
            sources = follow.assign(msg.cam, msg.dets.boxes, msg.dets.quality, c, cut)  # type: ignore[arg-type]
            fresh_chips += [c[i] for i, src in enumerate(sources) if isinstance(src, int)]
        kept.append((r, msg, sources))
    emb = np.zeros((0, embedder.dim), np.float32)
    faces_total = sum(len(src) for _, _, src in kept)
    if faces_total:
        m.batch_size.labels(STAGE).observe(len(fresh_chips))
        m.embeddings_total.labels("computed").inc(len(fresh_chips))
        m.embeddings_total.labels("carried").inc(faces_total - len(fresh_chips))
    try:
        if fresh_chips:
            emb = embedder.embed(np.stack(fresh_chips))
        follow.resolve(emb)
    except Exception as e:  # noqa: BLE001 - report, pass the frames on without faces
        log.warning("embedding a batch of %d faces failed: %s", len(fresh_chips), e)
        follow.resolve(None)
        for i, (r, msg, _) in enumerate(kept):
            msg.dets, msg.error = msg.dets[:0], "embedding failed"
            kept[i] = (r, msg, [])
    end = time.monotonic_ns()
    if frames:
        m.busy_seconds_total.labels(STAGE).inc((end - start) / 1e9)
    faces: dict[int, wire.Faces] = {}
    for r, msg, sources in kept:
        dets = msg.dets.with_columns(
            embeddings=Follow.embeddings(sources, emb, embedder.dim), reused=Follow.reused(sources)
        )
        if dets.quality is None:
            dets = dets.with_columns(quality=np.zeros(len(dets), np.float32))
        faces[id(r)] = msg.to(wire.Faces, dets=dets)
        msg.t["embed_out"] = end
        m.stage_seconds.labels(STAGE, msg.cam).observe((end - start) / 1e9)
        m.frames_total.labels(STAGE, msg.cam).inc()
    for r in batch:
        if pixels is not None:
            pixels.done(r.msg)  # embed is through with this slot (the recorder may still read it)
        out_msg = faces.get(id(r), r.msg)
        if not keep_pixels and isinstance(out_msg, wire.Faces):
            out_msg.frame = out_msg.ref = None
        if id(r) in dropped:
            continue
        if pixels is not None:
            pixels.carry(out_msg)
        send_blocking(out, out_msg, stop)
