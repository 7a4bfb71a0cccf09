"""What the page sees live, from the running pipeline: the results PUB (pixel-free: track and camera
events, and each frame's faces and stage stamps, turned here into per-camera fps, drops and latency)
and the sink's preview (downscaled JPEGs with their faces, stream/pipeline/preview.py).

One thread reads both ZeroMQ sockets (transport.socket: CURVE where the pipeline uses it) and hands
each message to the event loop. The preview is subscribed to only while a page watches (/api/live):
the sink's XPUB sees the subscription come and go and encodes pictures only meanwhile. Each browser
gets a bounded queue; a slow one loses messages (counted), never slows the others."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq

from stream.pipeline import transport, wire

if TYPE_CHECKING:
    from stream.pipeline.config import PipelineConfig

log = logging.getLogger(__name__)
QUEUE = 64  # messages waiting per browser before its oldest are dropped
WINDOW_S = 5.0  # fps and latency percentiles over the last few seconds
RECENT_EVENTS = 100  # replayed to a page that connects (its first screen is not empty)


class Hub:
    """Fan-out to the connected browsers (each an asyncio queue of SSE-ready strings)."""

    def __init__(self) -> None:
        self.queues: set[asyncio.Queue[str]] = set()
        self.dropped = 0

    def subscribe(self) -> asyncio.Queue[str]:
        q: asyncio.Queue[str] = asyncio.Queue(QUEUE)
        self.queues.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[str]) -> None:
        self.queues.discard(q)

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        text = f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
        for q in self.queues:
            if q.full():  # the oldest goes: a page wants the present
                q.get_nowait()
                self.dropped += 1
            q.put_nowait(text)


@dataclass
class CameraStats:
    up: bool = True
    frames: deque[tuple[float, dict[str, float | None]]] = field(default_factory=deque)
    dropped: int = 0
    last_seen: float = 0.0

    def add(self, now: float, latency: dict[str, float | None], skipped: int) -> None:
        self.frames.append((now, latency))
        self.dropped += skipped
        self.last_seen = time.time()
        self.up = True
        while self.frames and now - self.frames[0][0] > WINDOW_S:
            self.frames.popleft()

    def to_dict(self, now: float) -> dict[str, Any]:
        while self.frames and now - self.frames[0][0] > WINDOW_S:
            self.frames.popleft()
        out: dict[str, Any] = {
            "up": self.up,
            "fps": round(len(self.frames) / WINDOW_S, 2),
            "dropped": self.dropped,
            "last_seen": self.last_seen or None,
        }
        for stage in ("detect", "embed", "match", "total"):
            vals = [v for _, lat in self.frames if (v := lat.get(stage)) is not None]
            p50, p95 = np.percentile(vals, [50, 95]).round(1).tolist() if vals else [None, None]
            out[stage] = {"p50": p50, "p95": p95}
        return out


class Live:
    def __init__(self, cfg: PipelineConfig | None, results: str | None, preview: str | None):
        self.cfg = cfg
        self.results = results
        self.preview = preview
        self.events = Hub()  # /api/events: events and per-camera stats
        self.frames = Hub()  # /api/live: pictures (a subscriber here is a watcher)
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)
        self.cameras: dict[str, CameraStats] = {
            c: CameraStats(up=False) for c in (cfg.cameras if cfg else [])
        }
        self.connected = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def watchers(self) -> int:
        return len(self.frames.queues)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.results is None and self.preview is None:
            return
        self._thread = threading.Thread(target=self._read, name="facestream-live", daemon=True)
        self._thread.start()
        asyncio.get_running_loop().create_task(self._tick())

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    async def _tick(self) -> None:
        while not self._stop.is_set():
            await asyncio.sleep(1.0)
            self.events.publish("stats", self.stats())

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "cameras": {c: s.to_dict(now) for c, s in sorted(self.cameras.items())},
            "watchers": self.watchers,
            "dropped_to_browsers": self.events.dropped + self.frames.dropped,
        }

    # ----- the reader thread ---------------------------------------------------------------------------
    def _read(self) -> None:
        from stream.pipeline.transport import context

        ctx: zmq.Context[Any] = context(self.cfg) if self.cfg is not None else zmq.Context()
        socks: list[zmq.Socket[Any]] = []
        try:
            res = pre = None
            if self.results:
                res = transport.socket(ctx, zmq.SUB, connect=[self.results], hwm=1000, linger_ms=0)
                socks.append(res)
            if self.preview:
                pre = ctx.socket(zmq.SUB)  # subscribed only while watched
                pre.setsockopt(zmq.RCVHWM, 4)
                pre.setsockopt(zmq.LINGER, 0)
                pre.connect(self.preview)
                socks.append(pre)
            self.connected = True
            poller = zmq.Poller()
            for s in socks:
                poller.register(s, zmq.POLLIN)
            subscribed = False
            while not self._stop.is_set():
                if pre is not None and subscribed != (self.watchers > 0):
                    subscribed = not subscribed
                    pre.setsockopt(zmq.SUBSCRIBE if subscribed else zmq.UNSUBSCRIBE, b"")
                for sock, _ in poller.poll(200):
                    parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    if sock is res:
                        self._result(parts)
                    else:
                        self._picture(parts)
        except Exception:  # noqa: BLE001 - the page goes stale; the API keeps working
            log.exception("dashboard: reading the pipeline's results failed")
        finally:
            self.connected = False
            for s in socks:
                s.close(linger=0)
            ctx.term()

    def _soon(self, fn: Any, *args: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, *args)

    def _result(self, parts: list[Any]) -> None:
        try:
            msg = wire.decode(parts)
        except wire.WireError as e:
            log.warning("dashboard: bad message on the results PUB: %s", e)
            return
        if isinstance(msg, wire.Result):
            lat = wire.latencies_ms(msg.t)
            self._soon(self._on_frame, msg.cam, lat, msg.skipped)
        elif isinstance(msg, wire.Event):
            self._soon(self._on_event, {"camera": msg.cam, **msg.event})
        elif isinstance(msg, wire.EndOfStream):
            self._soon(self._on_end, msg.cam, msg.error)

    def _picture(self, parts: list[Any]) -> None:
        if len(parts) != 2:
            return
        try:
            head = json.loads(bytes(parts[0].buffer))
        except ValueError:
            return
        head["jpeg"] = base64.b64encode(parts[1].buffer).decode()
        self._soon(self.frames.publish, "frame", head)

    # ----- on the event loop ------------------------------------------------------------------------------
    def _camera(self, cam: str) -> CameraStats:
        return self.cameras.setdefault(cam, CameraStats())

    def _on_frame(self, cam: str, lat: dict[str, float | None], skipped: int) -> None:
        self._camera(cam).add(time.monotonic(), lat, skipped)

    def _on_event(self, event: dict[str, Any]) -> None:
        # Track events carry the video's own clock (pts) for files: the page shows when it heard them.
        event.setdefault("received", time.time())
        kind = str(event.get("type", ""))
        if kind in ("camera_down", "source_failed"):
            self._camera(str(event["camera"])).up = False
        self.recent.append(event)
        self.events.publish("event", event)

    def _on_end(self, cam: str, error: str | None) -> None:
        self._camera(cam).up = False
        self._on_event({"type": "camera_ended", "camera": cam, "error": error, "time": time.time()})
