"""Sink: the end of the pipeline. Writes --out JSONL (one line per processed frame, flushed per line
so an interrupted run leaves valid JSONL), --events JSONL and --record annotated video; counts what it
wrote in the metrics (the summary's "out", summary.py); decides when every camera has ended and then
exits, which ends the run."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np
import zmq

from stream.pipeline import framering, metrics, wire
from stream.pipeline.batching import receive
from stream.pipeline.config import PipelineConfig
from stream.pipeline.mqtt import MqttPublisher
from stream.pipeline.preview import Preview
from stream.pipeline.roles import Role
from stream.pipeline.stages.base import Stage
from stream.pipeline.trust import Trust

log = logging.getLogger(__name__)
STAGE = Role.SINK
QUIET_S = 5.0  # without an end-of-stream message: silence that ends a camera whose capture exited
SPAN_FILE = "span.json"  # run dir: first capture stamp and last result (throughput; outlives a sink)
END_FILE = "sink.json"  # run dir: written as the sink ends (the supervisor: the run is over)


@dataclass
class CameraState:
    received: int = 0
    sent: int | None = None  # from the camera's end-of-stream message
    eos_at: float | None = None
    exited_at: float | None = None  # the supervisor saw the capture exit (fallback, see finished())
    last_at: float = 0.0
    error: str | None = None
    dropped: dict[str, int] | None = None
    stale: int = 0  # live frames a busy detector skipped (accounted on the next frame it kept)


def draw(frame: np.ndarray, faces: list[dict[str, Any]]) -> np.ndarray:
    """BGR copy of an RGB frame with boxes, names and distances drawn (faces as in the --out line)."""
    img = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    for f in faces:
        x1, y1, x2, y2 = (int(round(v)) for v in f["box"])
        colour = (0, 200, 0) if f["name"] else (0, 0, 230)
        cv2.rectangle(img, (x1, y1), (x2, y2), colour, 2)
        dist = f"{f['distance']:.2f}" if f["distance"] is not None else "-"
        label = f"{f['name'] or 'unknown'} {dist} #{f['track']}"
        cv2.putText(img, label, (x1, max(12, y1 - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
    return img


class Recorder:
    """One annotated video per camera: the --record path itself, or name-<camera>.mp4 when several."""

    def __init__(self, path: Path, cameras: list[str]):
        self.path = path
        self.cameras = cameras
        self.writers: dict[str, cv2.VideoWriter] = {}

    def path_for(self, cam: str) -> Path:
        if len(self.cameras) <= 1:
            return self.path
        return self.path.with_name(f"{self.path.stem}-{cam}{self.path.suffix}")

    def write(self, cam: str, frame: np.ndarray, faces: list[dict[str, Any]], fps: float | None) -> None:
        self.write_bgr(cam, draw(frame, faces), fps)

    def write_bgr(self, cam: str, img: np.ndarray, fps: float | None) -> None:
        """An annotated BGR frame (draw's output)."""
        if cam not in self.writers:
            h, w = img.shape[:2]
            fourcc = cv2.VideoWriter.fourcc(*"mp4v")
            self.writers[cam] = cv2.VideoWriter(str(self.path_for(cam)), fourcc, fps or 25.0, (w, h))
        self.writers[cam].write(img)

    def close(self) -> None:
        for w in self.writers.values():
            w.release()


class Sink:
    """What the sink does with each message (SinkStage runs it)."""

    def __init__(
        self, cfg: PipelineConfig, pixels: framering.StagePixels | None = None, trust: Trust | None = None
    ):
        self.cfg = cfg
        self.trust = Trust.of(cfg, STAGE) if trust is None else trust
        self.cams = {c: CameraState() for c in cfg.cameras}
        self.m = metrics.get()
        run_dir = cfg.transport.run_dir
        self.span = Span(Path(run_dir) / SPAN_FILE if run_dir is not None else None)
        # Append: the supervisor truncated the files at the start; a restarted sink continues them.
        self.out: IO[str] | None = _open(cfg.outputs.out)
        self.events: IO[str] | None = _open(cfg.outputs.events)
        self.recorder = Recorder(cfg.outputs.record, cfg.cameras) if cfg.outputs.record else None
        self._own_pixels = pixels is None
        self.pixels = framering.StagePixels(cfg, STAGE) if pixels is None else pixels
        # The operator's surface: pictures while a dashboard watches, events to MQTT (own modules).
        self.preview = Preview.maybe(cfg, self.pixels)
        self.mqtt = MqttPublisher.maybe(cfg)

    def handle(self, msg: wire.Message) -> None:
        cam = self.cams.setdefault(msg.cam, CameraState())
        now = time.monotonic()
        if isinstance(msg, wire.Result):
            cam.received += 1
            cam.stale += msg.skipped
            cam.last_at = now
            faces = wire.faces_json(msg.dets)
            lat = wire.latencies_ms(msg.t)
            self.span.add(msg.t)
            line = {
                "camera": msg.cam,
                "seq": msg.seq,
                "t_capture": msg.wall,
                "faces": faces,
                "latency_ms": lat,
            }
            if msg.error:
                line["error"] = msg.error
            if self.out:
                self.out.write(json.dumps(line, separators=(",", ":")) + "\n")
            if self.recorder and msg.has_pixels:
                self.record(msg, faces)
            if self.preview:
                self.preview.offer(msg, faces)
            self.pixels.done(msg)
            # Counted once written: these are the summary's "out", whatever happens to this process.
            self.m.frames_total.labels(STAGE, msg.cam).inc()
            self.m.faces_total.labels(msg.cam).inc(len(faces))
        elif isinstance(msg, wire.Event):
            if self.events:
                self.events.write(json.dumps(msg.event, separators=(",", ":")) + "\n")
            if self.mqtt:
                self.mqtt.event(msg.cam, msg.event)
        elif isinstance(msg, wire.CaptureGone):
            cam.exited_at = now
            cam.error = cam.error or msg.error
        elif isinstance(msg, wire.EndOfStream):
            if not self.trust.eos_counts_agree(msg, cam.received + cam.stale):
                return  # refused (counted, logged): fewer frames sent than already seen
            cam.stale += msg.skipped  # frames a stage dropped just before the end
            cam.sent = msg.sent
            cam.eos_at = now
            cam.error = msg.error
            cam.dropped = msg.dropped
            if cam.error:
                log.info("camera %s failed: %s", msg.cam, cam.error)  # the supervisor reports it: once

    def record(self, msg: wire.Result, faces: list[dict[str, Any]]) -> None:
        """Annotate and write the frame. Ring pixels: drawn on a copy, which is written only if the slot
        still held this frame after copying (else no video frame, counted as overwritten)."""
        if not self.pixels.load(msg):
            self.pixels.skipped.pop(msg.cam, None)  # the result itself was written: not a missing frame
            return
        assert msg.frame is not None and self.recorder is not None  # loaded; record() only with one
        img = draw(msg.frame, faces)
        if not self.pixels.check(msg):
            self.pixels.skipped.pop(msg.cam, None)
            return
        self.recorder.write_bgr(msg.cam, img, msg.fps)

    def finished(self) -> bool:
        """Every camera ended, and its frames arrived (or stopped arriving: lost with a killed worker)."""
        now = time.monotonic()
        grace = self.cfg.supervisor.eos_grace_s
        for cam in self.cams.values():
            if cam.eos_at is None:
                # No end-of-stream from the camera itself (its capture died): end the camera once its
                # capture has exited and nothing of it has arrived for a while.
                if cam.exited_at is None or now - max(cam.exited_at, cam.last_at) < max(grace, QUIET_S):
                    return False
                continue
            if cam.sent is not None and cam.received + cam.stale >= cam.sent:
                continue
            if now - max(cam.eos_at, cam.last_at) < grace:
                return False
        return True

    def summary(self) -> dict[str, Any]:
        """What only the sink knows (the counts are in the metrics): each camera's end as it said it."""
        return {
            "sent_said": {c: st.sent for c, st in self.cams.items()},
            "errors": {c: st.error for c, st in self.cams.items() if st.error},
        }

    def close(self) -> None:
        for f in (self.out, self.events):
            if f:
                f.close()
        if self.recorder:
            self.recorder.close()
        for extra in (self.preview, self.mqtt):
            if extra:
                extra.close()
        if self._own_pixels:
            self.pixels.close()
        self.span.save()
        # (No run directory any more: the supervisor died, and the stages removed it.)
        if self.cfg.transport.run_dir is not None and Path(self.cfg.transport.run_dir).is_dir():
            write_json(Path(self.cfg.transport.run_dir) / END_FILE, self.summary())


class Span:
    """The run's first capture stamp and last result (monotonic ns: one clock for every process on
    the host), kept in the run directory so that a restarted sink continues the first one's span."""

    def __init__(self, path: Path | None):
        self.path = path
        self.first: int | None = None
        self.last: int | None = None
        if path is not None and path.exists():
            try:
                saved = json.loads(path.read_text())
                self.first, self.last = saved.get("first"), saved.get("last")
            except (OSError, ValueError):
                pass  # half-written by a killed sink: the span starts again

    def add(self, t: dict[str, int]) -> None:
        if "capture" in t and (self.first is None or t["capture"] < self.first):
            self.first = t["capture"]
            self.save()  # once (or rarely): a sink killed later keeps the run's start
        if "match_out" in t and (self.last is None or t["match_out"] > self.last):
            self.last = t["match_out"]

    def save(self) -> None:
        if self.path is not None and self.path.parent.is_dir():
            write_json(self.path, {"first": self.first, "last": self.last})

    @staticmethod
    def seconds(path: Path) -> float | None:
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        first, last = saved.get("first"), saved.get("last")
        return (last - first) / 1e9 if first is not None and last is not None and last > first else None


def write_json(path: Path, value: Any) -> None:
    """Whole or not at all (a reader never sees half a file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    tmp.replace(path)


def _open(path: Path | None) -> IO[str] | None:
    # Line buffered: every line reaches the file as it is written, so a stop leaves valid JSONL.
    return open(path, "a", buffering=1, encoding="utf-8") if path else None


class SinkStage(Stage):
    role = Role.SINK

    def open(self) -> None:
        self.sink = Sink(self.cfg, self.pixels, self.trust)
        self.inp = self.input(hwm=16)

    def finished(self) -> bool:
        return self.sink.finished()

    def step(self) -> None:
        if not self.inp.poll(100, zmq.POLLIN):
            return
        got = receive(self.inp, self.role, zmq.NOBLOCK, self.trust)
        if got is not None:
            self.sink.handle(got.msg)

    def close(self) -> None:
        if hasattr(self, "sink"):
            self.sink.close()
