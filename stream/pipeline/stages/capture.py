"""Capture: one process per source. Reads frames (RGB), stamps them and pushes them to detect.

Files (default): every frame, blocking backpressure, then an end-of-stream message.
Files with realtime, and live sources: paced / latest-frame; a frame the pipeline cannot take at
once is dropped and counted (reason "busy"), frames decoded too late for their slot are "late".

A source that cannot be read -- a file that does not open, a live source that has not opened once
within its open timeout -- ends this process with EXIT_SOURCE_FAILED and one line for the supervisor
(report_fatal), which then fails the whole run."""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from pathlib import Path

import numpy as np
import zmq

from stream.pipeline import framering, transport, trust, wire
from stream.pipeline.config import PipelineConfig
from stream.pipeline.roles import Role
from stream.pipeline.scenecut import SceneChange
from stream.pipeline.sources import (
    Backoff,
    FolderSource,
    LiveFeed,
    SourceError,
    VideoSource,
    open_source,
    sleep_until,
    without_url,
)
from stream.pipeline.stages.base import (
    EXIT_OK,
    EXIT_SOURCE_FAILED,
    Stage,
    Stop,
    report_fatal,
    send_blocking,
)

log = logging.getLogger(__name__)
STAGE = Role.CAPTURE


def opened_mark(run_dir: Path, index: int) -> Path:
    """A file in the run directory: source `index` has opened once in this run. A capture process
    that the supervisor restarts then keeps live semantics (retry forever), no new deadline; and the
    supervisor can tell which sources never opened."""
    return run_dir / f"opened-capture-{index}"


class Capture(Stage):
    role = Role.CAPTURE

    def __init__(self, cfg: PipelineConfig, index: int, stop: Stop):
        super().__init__(cfg, index, stop)
        self.src = cfg.sources[index]
        self.cam: str = self.src.name  # type: ignore[assignment]
        self.sent = 0
        self.dropped: Counter[str] = Counter()
        self.pending_events: deque[wire.Message] = deque()
        self._up: bool | None = None
        self.ring: framering.RingWriter | None = None
        self.scene = SceneChange()
        # Down until it opens: a scrape during the first retries shows the camera, at 0.
        self.m.camera_up.labels(self.cam).set(0)

    def open(self) -> None:
        # Linger forever, even after a stop: the last frames and the end-of-stream may sit in the queue
        # for a while when detect is busy with other cameras; exiting must not discard them (the
        # supervisor bounds it).
        self.out = self.output(linger_ms=-1, linger_on_stop=None)
        # One host: pixels go into this camera's shared-memory ring, headers carry references.
        if self.cfg.transport.use_shm:
            self.ring = framering.RingWriter(
                self.cfg.transport.shm_dir,  # type: ignore[arg-type]
                self.index,
                self.cfg.ring_slots,
            )
        self.source = open_source(self.src.url, self.src.fps)

    def serve(self) -> int:
        if isinstance(self.source, VideoSource) and self.source.live:
            return self.run_live(self.source)
        return self.run_file(self.source)

    def close(self) -> None:
        if self.ring is not None:
            self.ring.close()

    # ----- state, events -----------------------------------------------------------------------
    @property
    def _opened_mark(self) -> Path | None:
        run_dir = self.cfg.transport.run_dir
        return opened_mark(Path(run_dir), self.index) if run_dir is not None else None

    def set_state(self, up: bool, reason: str) -> None:
        self.m.camera_up.labels(self.cam).set(1 if up else 0)
        if up and self._opened_mark is not None:
            self._opened_mark.touch()
        if up or reason in ("end of file", "stopped"):
            log.info("camera %s %s: %s", self.cam, "up" if up else "down", reason if not up else self.src.url)
        else:
            log.warning("camera %s down: %s", self.cam, reason)
        if up != self._up:
            self._up = up
            event = {
                "type": "camera_up" if up else "camera_down",
                "camera": self.cam,
                "reason": reason,
                "time": time.time(),
            }
            self.pending_events.append(wire.event_message(self.cam, event))

    def flush_events(self) -> None:
        # Events are never dropped: kept until a peer takes them (they are tiny and rare).
        while self.pending_events and transport.try_send(self.out, self.pending_events[0]):
            self.pending_events.popleft()

    def drop(self, reason: str) -> None:
        self.dropped[reason] += 1
        self.m.frames_dropped_total.labels(STAGE, self.cam, reason).inc()

    def emit(
        self,
        frame: np.ndarray,
        seq: int,
        fps: float | None,
        pts: float | None = None,
        live: bool = False,
        wait: bool = False,
    ) -> wire.Frame:
        """pts: the frame's time in the video (files), for tracking; live frames use wall time.
        live: latest-frame semantics downstream (a busy detector skips to the newest frame).
        wait: blocking backpressure: with a ring, wait until the readers are within their windows
        (framering.py: tiny headers are not held back by the HWMs)."""

        change = self.scene.measure(frame)  # scene cuts end the camera's tracks (match stage)

        def message(pixels: np.ndarray | None, ref: wire.FrameRef | None = None) -> wire.Frame:
            return wire.frame_message(self.cam, seq, pixels, ref, fps=fps, pts=pts, live=live, change=change)

        if self.ring is not None:
            try:
                self.ring.prepare(frame.shape)
            except framering.RingError as e:
                log.warning("camera %s: %s; sending this frame inline", self.cam, e)
                return message(frame)
            if wait:
                windows = self.cfg.ring_windows(self.ring.ring.slots)  # type: ignore[union-attr]
                timeout = self.cfg.capture.send_timeout_s
                if not self.ring.wait_room(seq, windows, self.stop, timeout) and not self.stop:
                    log.warning("camera %s: readers %.0fs behind the ring; overwriting", self.cam, timeout)
            name, slot = self.ring.write(frame, seq)
            h, w, c = frame.shape
            ref = wire.FrameRef(name, slot, (h, w, c))
            return message(None, ref)
        return message(frame)

    def sent_one(self) -> None:
        self.scene.sent()
        self.sent += 1
        self.m.frames_total.labels(STAGE, self.cam).inc()

    def finish(self, read: int, error: str | None = None) -> None:
        """Send this camera's end-of-stream behind its frames, and wait until detect took it (the ring's
        slots stay valid until then). Only a hard stop (or the supervisor's death) cuts this short."""
        hard = _HardStop(self.stop)
        self.flush_events()
        for ev in list(self.pending_events):
            send_blocking(self.out, ev, hard, timeout_s=5)
        ring = self.ring.name if self.ring is not None and self.ring.name else None
        eos = wire.eos_message(
            self.cam, self.sent, read=read, dropped=dict(self.dropped), error=error, ring=ring
        )
        eos.origin = trust.own_token()  # which process sent it: the readers check (trust.py)
        if self.stop and not self.stop.hard:
            log.info(
                "camera %s: waiting for the pipeline to take its last frames (stop again: at once)", self.cam
            )
        if not send_blocking(self.out, eos, hard, timeout_s=self.cfg.capture.send_timeout_s):
            if not self.stop.hard:
                log.error("camera %s: nobody took the end-of-stream message", self.cam)
        elif ring and not self.ring.wait_received(self.sent, self.cfg.capture.send_timeout_s, hard):  # type: ignore[union-attr]
            if not self.stop.hard:
                log.warning("camera %s: detect did not confirm the end-of-stream message", self.cam)

    def fail(self, message: str) -> int:
        """This source will never deliver: tell the supervisor (it fails the run) and the sink."""
        report_fatal(self.cfg, STAGE, self.index, message)
        self.finish(0, error=message)
        return EXIT_SOURCE_FAILED

    # ----- files ----------------------------------------------------------------------------------
    def run_file(self, source: VideoSource | FolderSource) -> int:
        try:
            source.open()
        except SourceError as e:
            self.set_state(False, str(e))
            # No retry: a file that is missing or undecodable now will be so in a second too.
            return self.fail(
                f"source {self.cam} ({self.src.url}) cannot be read: {without_url(self.src.url, str(e))}"
            )
        self.set_state(True, "opened")
        realtime = self.cfg.capture.realtime
        fps = source.fps or 25.0
        period = 1.0 / fps
        # Realtime pacing starts when detect is connected, not while models are still loading.
        while not self.stop and not self.out.poll(100, zmq.POLLOUT):
            pass
        t0 = time.monotonic()
        read = 0
        while not self.stop:
            frame = source.read()
            if frame is None:
                break
            seq = read
            read += 1
            self.flush_events()
            if realtime:
                due = t0 + seq * period
                if time.monotonic() > due + period:
                    self.drop("late")
                    continue
                sleep_until(due)
                if transport.try_send(self.out, self.emit(frame, seq, fps, seq * period, live=True)):
                    self.sent_one()
                else:
                    self.drop("busy")
            elif send_blocking(self.out, self.emit(frame, seq, fps, seq * period, wait=True), self.stop):
                self.sent_one()
        source.close()
        self.set_state(False, "end of file" if not self.stop else "stopped")
        self.finish(read)
        log.info(
            "camera %s: %d frames read, %d sent, dropped %s", self.cam, read, self.sent, dict(self.dropped)
        )
        return EXIT_OK

    # ----- live -----------------------------------------------------------------------------------
    def run_live(self, source: VideoSource) -> int:
        c = self.cfg.capture
        reconnects = self.m.camera_reconnects_total.labels(self.cam)
        mark = self._opened_mark
        timeout = None if mark is not None and mark.exists() else self.cfg.open_timeout(self.index)
        feed = LiveFeed(
            source,
            Backoff(c.reconnect_initial_s, c.reconnect_max_s),
            self.set_state,
            reconnects.inc,
            open_timeout_s=timeout,
        )
        feed.start()
        overwritten = 0
        try:
            while not self.stop:
                self.flush_events()
                got = feed.latest(timeout_s=0.2)
                if feed.overwritten > overwritten:
                    for _ in range(feed.overwritten - overwritten):
                        self.drop("busy")
                    overwritten = feed.overwritten
                if got is None:
                    if feed.gave_up:
                        break
                    continue
                frame, index = got
                if transport.try_send(self.out, self.emit(frame, index - 1, source.fps, live=True)):
                    self.sent_one()
                else:
                    self.drop("busy")
        finally:
            feed.stop()
        if feed.gave_up and not self.stop:
            return self.fail(
                f"source {self.cam} ({self.src.url}) never opened in {timeout:g} s: "
                f"{without_url(self.src.url, feed.gave_up)}; set open_timeout_s: forever to wait for it"
            )
        self.set_state(False, "stopped")
        self.finish(feed.frames_read)
        return EXIT_OK


class _HardStop:
    """A stop flag that fires only on a hard stop (SIGTERM, a second Ctrl-C) or when the supervisor is
    gone: after a graceful stop the end-of-stream message is still worth waiting for."""

    def __init__(self, stop: Stop) -> None:
        self.stop = stop

    def __bool__(self) -> bool:
        return self.stop.hard or self.stop.orphaned
