"""Sources: files, folders, live feeds with latest-frame semantics and capped backoff."""

from __future__ import annotations

import socket
import threading
import time

import cv2
import numpy as np
import pytest

from stream.pipeline import sources


def write_video(path, frames: int = 5, size=(64, 48), fps: float = 25.0):
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for i in range(frames):
        img = np.zeros((size[1], size[0], 3), np.uint8)
        img[:, :, 0] = 200  # blue in BGR: must come out as RGB (0, 0, 200)
        img[0, 0, 1] = i
        w.write(img)
    w.release()
    return path


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
    time.sleep(0.8)
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
        time.sleep(0.01)
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
    time.sleep(0.2)  # a busy consumer: ~20 frames arrive meanwhile
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
