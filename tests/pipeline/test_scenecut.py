"""The scene-change score on real video and real cuts, against the default cut level."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from stream.pipeline.config import TrackingConfig
from stream.pipeline.scenecut import SceneChange

CUT = TrackingConfig().cut_change


def rgb(path: Path, size: tuple[int, int] = (640, 360)) -> np.ndarray:
    return cv2.cvtColor(cv2.resize(cv2.imread(str(path)), size), cv2.COLOR_BGR2RGB)


def test_a_busy_walkway_is_no_cut_and_a_cut_is(shared_data: Path) -> None:
    cap = cv2.VideoCapture(str(shared_data / "video/facenet-pytorch-video.mp4"))
    scene = SceneChange()
    scores = []
    for _ in range(40):
        ok, frame = cap.read()
        assert ok
        scores.append(scene.measure(frame[:, :, ::-1]))
        scene.sent()
    cap.release()
    assert scores[0] is None  # a camera's first frame
    assert 0 < max(s for s in scores[1:] if s is not None) < CUT / 2  # people walking, a moving camera
    # A cut to a photo of people, and between two portraits.
    faces = shared_data / "faces/face_recognition/knn_examples"
    a, b = rgb(faces / "train/biden/biden.jpg"), rgb(faces / "train/obama/obama.jpg")
    cut = scene.measure(a)
    assert cut is not None and cut > CUT
    scene.sent()
    assert (scene.measure(b) or 0) > CUT


def test_only_frames_sent_on_count() -> None:
    scene = SceneChange()
    black, white = np.zeros((90, 160, 3), np.uint8), np.full((90, 160, 3), 255, np.uint8)
    assert scene.measure(black) is None
    scene.sent()
    assert scene.measure(white) == 1.0  # measured, but dropped (never sent)
    assert scene.measure(black) == 0.0  # against the last frame that went on
