"""Sources: files, folders, live feeds with latest-frame semantics and capped backoff, and what a source
that never opens does (its reason, its open timeout; end to end in test_source_failures.py)."""

from __future__ import annotations

import functools
import socket
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from waiting import wait_until

from stream.errors import FacestreamError
from stream.pipeline import config, sources


def write_video(path, frames: int = 5, size=(64, 48), fps: float = 25.0):
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for i in range(frames):
        img = np.zeros((size[1], size[0], 3), np.uint8)
        img[:, :, 0] = 200  # blue in BGR: must come out as RGB (0, 0, 200)
        img[0, 0, 1] = i
        w.write(img)
    w.release()
    return path


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def serve_video(folder, frames: int) -> tuple[ThreadingHTTPServer, str]:
    """A real live stream: a short video served over HTTP (FFmpeg opens it as a network source).
    Shut the server down to make the 'camera' drop."""
    write_video(folder / "v.mp4", frames=frames)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v.mp4"


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_kinds():
    assert sources.is_live("0") and sources.is_live("rtsp://h/x") and sources.is_live("https://h/x.mjpg")
    assert not sources.is_live("video.mp4")


def test_video_file_every_frame_rgb(tmp_path):
    src = sources.open_source(str(write_video(tmp_path / "v.mp4")))
    src.open()
    assert not src.live and src.fps == pytest.approx(25.0)
    frames = []
    while (f := src.read()) is not None:
        frames.append(f)
    assert len(frames) == 5
    assert frames[0].shape == (48, 64, 3) and frames[0].dtype == np.uint8
    assert frames[0][10, 10, 2] > 150 and frames[0][10, 10, 0] < 50  # converted BGR -> RGB


def test_missing_file_is_a_clear_error(tmp_path):
    assert "no such file" in sources.check(str(tmp_path / "nope.mp4"))
    with pytest.raises(sources.SourceError, match="nope.mp4"):
        sources.open_source(str(tmp_path / "nope.mp4")).open()
    (tmp_path / "notvideo.mp4").write_text("hello")
    with pytest.raises(sources.SourceError, match="cannot decode"):
        sources.open_source(str(tmp_path / "notvideo.mp4")).open()


def test_image_folder_in_order_skipping_bad_files(tmp_path):
    for i in range(3):
        img = np.full((20, 30, 3), i * 50, np.uint8)
        cv2.imwrite(str(tmp_path / f"{i:02d}.png"), img)
    (tmp_path / "01b.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "notes.txt").write_text("ignored")
    src = sources.open_source(str(tmp_path))
    src.open()
    got = []
    while (f := src.read()) is not None:
        got.append(int(f[0, 0, 0]))
    assert got == [0, 50, 100]
    assert len(src.skipped) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no images" in sources.check(str(empty))


def test_backoff_is_capped_exponential():
    b = sources.Backoff(0.5, 4.0)
    assert [b.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    b.reset()
    assert b.next() == 0.5


def test_live_feed_to_closed_port_reports_down_and_retries():
    url = f"rtsp://127.0.0.1:{closed_port()}/stream"
    states: list[tuple[bool, str]] = []
    reconnects = []
    feed = sources.LiveFeed(
        sources.VideoSource(url),
        sources.Backoff(0.05, 0.2),
        lambda up, why: states.append((up, why)),
        lambda: reconnects.append(1),
    )
    feed.start()
    wait_until(lambda: len(reconnects) >= 2, 10.0, "two reconnect attempts")
    feed.stop()
    assert states and not any(up for up, _ in states)
    assert url in states[0][1] and "retrying" in states[0][1]
    assert len(reconnects) >= 2
    assert feed.latest(0.01) is None


class FakeCamera:
    """A live source that delivers numbered frames at a fixed rate and can 'drop' once."""

    live = True
    url = "fake://cam"
    fps = 100.0

    def __init__(self, drop_after: int | None = None):
        self.i = 0
        self.opened = 0
        self.drop_after = drop_after

    def open(self):
        self.opened += 1

    def read(self):
        time.sleep(0.01)  # the camera's frame interval (100 fps)
        self.i += 1
        if self.drop_after is not None and self.i == self.drop_after:
            return None
        return np.full((4, 4, 3), self.i % 256, np.uint8)

    def close(self):
        pass


def test_live_feed_hands_out_only_the_latest_frame():
    cam = FakeCamera()
    feed = sources.LiveFeed(cam, sources.Backoff(0.01, 0.1), lambda up, why: None)
    feed.start()
    first = feed.latest(1.0)
    seen = feed.frames_read
    # A busy consumer: 20 frames arrive meanwhile.
    wait_until(lambda: feed.frames_read >= seen + 20, 10.0, "20 frames while the consumer is busy")
    frame, index = feed.latest(1.0)
    feed.stop()
    assert first is not None and index > first[1] + 5
    assert feed.overwritten >= 5  # counted as dropped by the capture stage


def test_live_feed_reopens_a_dropped_stream():
    cam = FakeCamera(drop_after=5)
    states: list[bool] = []
    done = threading.Event()

    def on_state(up, why):
        states.append(up)
        if states.count(True) == 2:
            done.set()

    feed = sources.LiveFeed(cam, sources.Backoff(0.01, 0.1), on_state)
    feed.start()
    assert done.wait(2.0)
    feed.stop()
    assert states[:3] == [True, False, True] and cam.opened == 2


# ----- sources that never open (issue 7, item 6) ---------------------------------------------------------
def test_diagnose_says_why_a_live_source_did_not_open():
    if not Path("/dev/video9").exists() and sys.platform.startswith("linux"):
        assert sources.diagnose("9") == "no such camera (/dev/video9 does not exist)"
    port = closed_port()
    assert sources.diagnose(f"rtsp://127.0.0.1:{port}/x") == f"connection refused by 127.0.0.1:{port}"
    assert sources.diagnose("rtsp://127.0.0.1:99999/x") == "bad port in the URL"
    with socket.socket() as server:  # something listens, but it is not the stream
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        url = f"rtsp://127.0.0.1:{port}/x"
        assert "accepts connections but the stream did not open" in sources.diagnose(url)
        # An open that used its whole timeout: a server that accepts and never answers.
        waited = sources.OPEN_TIMEOUT_MS / 1000
        assert sources.diagnose(url, waited).endswith(f"did not answer within {waited:.0f} s")


def test_live_feed_that_never_opens_gives_up_at_its_open_timeout():
    port = closed_port()
    states: list[str] = []
    feed = sources.LiveFeed(
        sources.VideoSource(f"rtsp://127.0.0.1:{port}/x"),
        sources.Backoff(0.05, 0.2),
        lambda up, why: states.append(why),
        open_timeout_s=0.6,
    )
    t0 = time.monotonic()
    feed.start()
    feed._thread.join(5)
    waited = time.monotonic() - t0
    assert not feed._thread.is_alive() and 0.55 <= waited < 2.0, waited
    assert feed.gave_up == f"rtsp://127.0.0.1:{port}/x: connection refused by 127.0.0.1:{port}"
    assert len(states) >= 3 and all("retrying in" in s and "gives up in" in s for s in states)
    feed.stop()


def test_live_feed_that_opened_once_retries_forever(tmp_path):
    """A real stream (a video over HTTP) that delivers, then its server goes away: no deadline any
    more, however short the open timeout -- a camera that dropped is coming back."""
    server, url = serve_video(tmp_path, frames=5)
    states: list[tuple[bool, str]] = []
    up = threading.Event()

    def on_state(is_up: bool, why: str) -> None:
        states.append((is_up, why))
        if is_up:
            up.set()

    feed = sources.LiveFeed(
        sources.VideoSource(url), sources.Backoff(0.05, 0.2), on_state, open_timeout_s=0.3
    )
    feed.start()
    try:
        assert up.wait(5.0), states
        server.shutdown()
        server.server_close()
        time.sleep(1.5)  # five times the open timeout
        assert feed.gave_up is None and feed._thread.is_alive()
        refused = [why for is_up, why in states if not is_up and "connection refused" in why]
        assert len(refused) >= 3 and not any("gives up" in why for why in refused)
        assert feed.frames_read >= 1
    finally:
        feed.stop()


def test_open_timeout_config(tmp_path):
    cfg = config.PipelineConfig.model_validate(
        {
            "sources": [
                {"url": "0"},
                {"url": "rtsp://h/x", "open_timeout_s": "forever"},
                {"url": "1", "open_timeout_s": 3},
            ],
            "capture": {"open_timeout_s": 20},
        }
    )
    assert [cfg.open_timeout(i) for i in range(3)] == [20.0, None, 3.0]
    assert config.PipelineConfig().capture.open_timeout_s == 10.0  # the default
    forever = config.PipelineConfig.model_validate(
        {"sources": [{"url": "0"}], "capture": {"open_timeout_s": "forever"}}
    )
    assert forever.open_timeout(0) is None
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert config.load(tmp_path / "c.yaml").open_timeout(1) is None  # what the supervisor hands its stages
    for bad in ("0", "-1", "never", "true", ".nan"):
        (tmp_path / "bad.yaml").write_text(f"sources: [{{url: '0', open_timeout_s: {bad}}}]\n")
        with pytest.raises(
            FacestreamError, match=r"sources\.0\.open_timeout_s: .*must be seconds > 0 or 'forever'"
        ):
            config.load(tmp_path / "bad.yaml")
    (tmp_path / "bad.yaml").write_text("capture: {open_timeout_s: null}\n")  # null: only a source inherits
    with pytest.raises(FacestreamError, match=r"capture\.open_timeout_s: .*must be seconds > 0 or 'forever'"):
        config.load(tmp_path / "bad.yaml")
    (tmp_path / "typo.yaml").write_text("sources: [{url: '0', open_timeout: 5}]\n")
    with pytest.raises(FacestreamError, match="open_timeout: Extra inputs are not permitted"):
        config.load(tmp_path / "typo.yaml")


def test_a_stream_that_ends_at_once_is_reopened_with_backoff():
    """A server that hangs up right after each open must not be reopened in a tight loop."""

    class Flapping(FakeCamera):
        def read(self):
            self.i += 1
            return np.zeros((4, 4, 3), np.uint8) if self.i % 2 else None  # one frame per open

    cam = Flapping()
    feed = sources.LiveFeed(cam, sources.Backoff(0.1, 0.1), lambda up, why: None)
    feed.start()
    time.sleep(0.55)  # a rate is counted over a fixed time
    feed.stop()
    assert 3 <= cam.opened <= 7, cam.opened  # ~one per 0.1 s (it was thousands)
