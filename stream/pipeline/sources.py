"""Frame sources: webcam index, video file, rtsp:// / http(s):// URL, folder of images. All give RGB
uint8 frames (BGR->RGB happens here, once).

Live sources (webcams, URLs) are read by `LiveFeed`, a reader thread that keeps only the latest frame
(a busy pipeline never makes a camera queue old frames) and reopens a dropped camera with capped
exponential backoff, reporting up/down through a callback. A source that has never opened gives up
after its open timeout (a misspelled URL must not look like a quiet camera); one that opened once
retries forever (a camera that drops is coming back)."""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np

from stream.errors import FacestreamError
from stream.imageio import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

LIVE_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
OPEN_TIMEOUT_MS = 5000
PROBE_TIMEOUT_S = 1.0
STOP_WAIT_S = 1.0  # how long stop() waits for the reader thread
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "rtmp": 1935, "http": 80, "https": 443}


class SourceError(FacestreamError):
    """A source that cannot be opened or read (one line, names the source)."""


def is_live(url: str) -> bool:
    return url.isdigit() or url.lower().startswith(LIVE_SCHEMES)


def check(url: str) -> str | None:
    """A reason a local source cannot work (missing file, empty folder), without opening it."""
    if is_live(url):
        return None
    p = Path(url).expanduser()
    if not p.exists():
        return f"{url}: no such file or folder"
    if p.is_dir() and not _images(p):
        return f"{url}: folder has no images"
    return None


def without_url(url: str, message: str) -> str:
    """A SourceError's or check()'s message without its leading "URL: " (callers name the source)."""
    return message.removeprefix(f"{url}: ")


def diagnose(url: str, waited_s: float = 0.0) -> str:
    """Why a live source did not open, as far as a cheap look can tell: OpenCV only says that it
    failed, and "cannot open" alone does not tell a typo from a camera that is off or in use.
    waited_s: how long the failed open took (a server that accepts and never answers uses it all)."""
    if url.isdigit():
        if not sys.platform.startswith("linux"):
            return "no camera with this index, or it is in use"
        dev = Path(f"/dev/video{url}")
        if not dev.exists():
            return f"no such camera ({dev} does not exist)"
        if not os.access(dev, os.R_OK | os.W_OK):
            return f"no permission to open {dev} (is this user in the video group?)"
        return f"{dev} did not open (in use by another program, or not a capture device)"
    parts = urlsplit(url)
    try:
        port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        return "bad port in the URL"
    host = parts.hostname
    if not host or port is None:  # udp:// and friends: nothing to probe
        return "stream did not open"
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            pass
    except socket.gaierror:
        return f"cannot resolve host {host}"
    except ConnectionRefusedError:
        return f"connection refused by {host}:{port}"
    except TimeoutError:
        return f"no answer from {host}:{port} within {PROBE_TIMEOUT_S:g} s"
    except OSError as e:
        return f"cannot connect to {host}:{port} ({e.strerror or e})"
    if waited_s >= 0.9 * OPEN_TIMEOUT_MS / 1000:
        return f"{host}:{port} accepts connections but did not answer within {waited_s:.0f} s"
    return (
        f"{host}:{port} accepts connections but the stream did not open (wrong path, credentials or format?)"
    )


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _quiet_opencv() -> None:
    """OpenCV and FFmpeg print their own lines on every failed open ("[tcp @ 0x..] Connection
    refused", "[ WARN:0] can't open camera by index"): noise on each retry, since SourceError already
    says why and names the source. Process-wide, so only at OpenCV's error level; -v keeps them all.
    FFmpeg reads its variable when OpenCV first uses it, so this runs before the first open."""
    if log.isEnabledFor(logging.DEBUG):
        return
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    if "OPENCV_LOG_LEVEL" not in os.environ:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


class VideoSource:
    """cv2.VideoCapture over a file, a webcam index or a stream URL."""

    def __init__(self, url: str, fps: float | None = None):
        self.url = url
        self.live = is_live(url)
        self._fps = fps
        self._native_fps: float | None = None
        self._cap: cv2.VideoCapture | None = None

    def open(self) -> None:
        problem = check(self.url)
        if problem:
            raise SourceError(problem)
        _quiet_opencv()
        t0 = time.monotonic()
        if self.url.isdigit():
            cap = cv2.VideoCapture(int(self.url))
        else:
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                OPEN_TIMEOUT_MS,
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                OPEN_TIMEOUT_MS,
            ]
            cap = cv2.VideoCapture(self.url, cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            why = diagnose(self.url, time.monotonic() - t0) if self.live else "cannot decode video"
            raise SourceError(f"{self.url}: {why}")
        self._cap = cap
        # Read once here: a live source's reader thread may close the capture while the capture
        # stage asks for the fps of the frame it is sending.
        native = cap.get(cv2.CAP_PROP_FPS)
        self._native_fps = native if 0 < native < 1000 else None

    @property
    def fps(self) -> float | None:
        return self._fps or self._native_fps

    def read(self) -> np.ndarray | None:
        """The next RGB frame; None at the end of a file or when a live stream stops delivering."""
        if self._cap is None:
            return None
        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            return None
        if bgr.ndim == 2:
            return cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class FolderSource:
    """The images of a folder in name order, as a finite stream. Undecodable files are skipped
    (logged), not fatal."""

    live = False

    def __init__(self, url: str, fps: float | None = None):
        self.url = url
        self.fps = fps
        self._files: list[Path] = []
        self.skipped: list[str] = []

    def open(self) -> None:
        problem = check(self.url)
        if problem:
            raise SourceError(problem)
        self._files = _images(Path(self.url).expanduser())

    def read(self) -> np.ndarray | None:
        from stream.imageio import load_image

        while self._files:
            path = self._files.pop(0)
            try:
                return load_image(path)
            except FacestreamError as e:
                log.warning("skipping %s", e)
                self.skipped.append(str(path))
        return None

    def close(self) -> None:
        self._files = []


def open_source(url: str, fps: float | None = None) -> VideoSource | FolderSource:
    """Not opened yet: call .open() (raises SourceError)."""
    if not is_live(url) and Path(url).expanduser().is_dir():
        return FolderSource(url, fps)
    return VideoSource(url, fps)


class Backoff:
    """Capped exponential delays: initial, 2x, 4x ... up to cap; reset() after a success."""

    def __init__(self, initial_s: float, cap_s: float):
        self.initial, self.cap = initial_s, cap_s
        self.attempt = 0

    def next(self) -> float:
        delay: float = min(self.cap, self.initial * (2**self.attempt))
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0


class LiveFeed:
    """Reads a live source in a thread; `latest()` hands out the newest frame only.

    on_state(up: bool, reason: str) is called on every up/down transition and on every failed retry
    (metrics, events, log). open_timeout_s: a source that has not opened once within this time gives
    up (`gave_up` holds the last reason and the thread ends); None waits forever."""

    def __init__(
        self,
        source: VideoSource,
        backoff: Backoff,
        on_state: Callable[[bool, str], None],
        on_reconnect: Callable[[], None] = lambda: None,
        open_timeout_s: float | None = None,
    ):
        self.source = source
        self.backoff = backoff
        self.on_state = on_state
        self.on_reconnect = on_reconnect
        self.open_timeout_s = open_timeout_s
        self.gave_up: str | None = None  # set (by the reader thread) when it never opened in time
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None
        self._index = 0  # frames read from the camera so far
        self._taken = 0  # index of the last frame handed out
        self.overwritten = 0  # frames replaced before anyone took them
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="live-feed", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Prompt even when the reader is stuck in an open or a read (up to OPEN_TIMEOUT_MS against a
        server that accepts and never answers): Ctrl-C must not wait for that. The reader thread owns
        the source and closes it on its way out; a stuck one is a daemon and dies with the process."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.ident is None:  # never started
            self.source.close()
        self._thread.join(timeout=STOP_WAIT_S)

    def latest(self, timeout_s: float) -> tuple[np.ndarray, int] | None:
        """The newest frame not handed out yet and its read index, or None after timeout_s."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._index > self._taken or self._stop.is_set(), timeout_s):
                return None
            if self._index <= self._taken:
                return None
            self._taken = self._index
            frame, self._frame = self._frame, None
            assert frame is not None, "the reader sets a frame with every step of _index"
            return frame, self._index

    @property
    def frames_read(self) -> int:
        return self._index

    def _run(self) -> None:
        try:
            self._read_loop()
        finally:
            self.source.close()

    def _read_loop(self) -> None:
        up = False
        first = True
        # Only a source that has never opened has a deadline: once it has delivered, a drop is a
        # camera rebooting or a network blip, and live semantics say keep trying.
        deadline = None if self.open_timeout_s is None else time.monotonic() + self.open_timeout_s
        while not self._stop.is_set():
            if not up:
                try:
                    if not first:
                        self.on_reconnect()
                    first = False
                    self.source.open()
                except SourceError as e:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        self.gave_up = str(e)
                        return
                    delay = self.backoff.next()
                    if left is None:
                        self.on_state(False, f"{e}; retrying in {delay:.1f}s")
                    else:  # one last try right at the deadline, not a backoff step past it
                        delay = min(delay, left)
                        self.on_state(False, f"{e}; retrying in {delay:.1f}s (gives up in {left:.1f}s)")
                    self._stop.wait(delay)
                    continue
                up = True
                deadline = None
                self.backoff.reset()
                self.on_state(True, "opened")
            frame = self.source.read()
            if frame is None:
                up = False
                self.source.close()
                # Backoff here too: a stream that opens and ends at once (a server that hangs up, a
                # file over HTTP) was reopened in a tight loop, hundreds of times a second.
                delay = self.backoff.next()
                self.on_state(
                    False, f"{self.source.url}: stream stopped delivering frames; reopening in {delay:.1f}s"
                )
                self._stop.wait(delay)
                continue
            with self._cond:
                if self._index > self._taken:
                    self.overwritten += 1
                self._frame = frame
                self._index += 1
                self._cond.notify_all()


def sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        time.sleep(delay)
