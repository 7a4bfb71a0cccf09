"""The dashboard's live pictures, made by the sink (which sees each frame's faces and can reach its
pixels) only while a dashboard watches: an XPUB in the run directory hears the dashboard subscribe
when its first browser opens the live view and unsubscribe when the last one leaves (ZeroMQ also
unsubscribes a dashboard that dies). Meanwhile each camera's newest result is downscaled and
JPEG-encoded at most dashboard.preview_fps times a second and sent as [JSON header, JPEG]; a slow
dashboard loses pictures (never blocks). The results PUB stays pixel-free."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import cv2
import zmq

from stream.pipeline import framering, wire
from stream.pipeline.config import PipelineConfig
from stream.pipeline.roles import PREVIEW

log = logging.getLogger(__name__)
JPEG_QUALITY = 70


class Preview:
    def __init__(self, cfg: PipelineConfig, pixels: framering.StagePixels):
        assert cfg.dashboard is not None
        self.pixels = pixels
        self.period_s = 1.0 / cfg.dashboard.preview_fps
        self.width = cfg.dashboard.preview_width
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.sock: zmq.Socket[Any] = self.ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.SNDHWM, 4)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(cfg.endpoint(PREVIEW))
        self.watched = False
        self.next_at: dict[str, float] = {}
        self.sent = 0

    @classmethod
    def maybe(cls, cfg: PipelineConfig, pixels: framering.StagePixels) -> Preview | None:
        """One when the run has a dashboard and a run directory (the preview's ipc endpoint)."""
        if cfg.dashboard is None or cfg.transport.run_dir is None:
            return None
        return cls(cfg, pixels)

    def _listen(self) -> None:
        # Non-verbose XPUB: the first subscription and the last unsubscription come through.
        while self.sock.poll(0, zmq.POLLIN):
            note = self.sock.recv()
            if note[:1] in (b"\x00", b"\x01"):
                self.watched = note[:1] == b"\x01"
                log.info("preview %s", "on: a dashboard watches" if self.watched else "off")

    def offer(self, msg: wire.Result, faces: list[dict[str, Any]]) -> None:
        """Called for every result; costs a poll unless a dashboard watches and the camera is due."""
        self._listen()
        now = time.monotonic()
        if not self.watched or now < self.next_at.get(msg.cam, 0.0):
            return
        frame = self.pixels.peek(msg)
        if frame is None:
            return  # overwritten already: the next frame will do
        self.next_at[msg.cam] = now + self.period_s
        h, w = frame.shape[:2]
        scale = min(1.0, self.width / w)
        if scale < 1.0:
            frame = cv2.resize(frame, (self.width, max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        ok, jpeg = cv2.imencode(
            ".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
        )
        if not ok:
            return
        head = {"camera": msg.cam, "seq": msg.seq, "wall": msg.wall, "width": w, "height": h, "faces": faces}
        try:
            self.sock.send_multipart([json.dumps(head).encode(), jpeg.tobytes()], zmq.NOBLOCK)
            self.sent += 1
        except zmq.Again:
            pass

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()
