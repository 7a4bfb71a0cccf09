"""How much a camera's whole picture changed between two frames it sent: a scene-cut signal for the
tracker (a cut to another shot ends the camera's tracks: whoever is there now is recognised afresh).

The measure is the mean absolute difference of two 32 x 32 grey thumbnails, in 0..1: cheap (a strided
view and one small resize per frame, in capture, where every frame of a camera passes in order),
and blind to what moves inside a shot (a face, a pan of a few pixels). Where it lies for real video
and for cuts: benchmarks/RESULTS.md (Identity)."""

from __future__ import annotations

import cv2
import numpy as np

THUMB = 32


def thumbnail(frame: np.ndarray) -> np.ndarray:
    """A THUMB x THUMB grey float32 copy of an H x W x 3 frame."""
    h, w = frame.shape[:2]
    step = max(1, min(h, w) // (THUMB * 4))  # a strided view first: resize reads a fraction of the pixels
    small = cv2.resize(
        np.ascontiguousarray(frame[::step, ::step]), (THUMB, THUMB), interpolation=cv2.INTER_AREA
    )
    grey: np.ndarray = small.astype(np.float32).mean(axis=2)
    return grey


def change(a: np.ndarray, b: np.ndarray) -> float:
    """0 (same picture) .. 1 (black to white) between two thumbnails."""
    return float(np.abs(a - b).mean() / 255.0)


class SceneChange:
    """Per camera: the change of each frame against the last frame that was sent on (frames dropped
    before they left do not count: the tracker never saw them)."""

    def __init__(self) -> None:
        self._sent: np.ndarray | None = None
        self._pending: np.ndarray | None = None

    def measure(self, frame: np.ndarray) -> float | None:
        """This frame's change score, None for a camera's first frame (or a frame that is not RGB)."""
        if frame.ndim != 3 or frame.shape[2] != 3 or not frame.size:
            self._pending = None
            return None
        self._pending = thumbnail(frame)
        return None if self._sent is None else change(self._sent, self._pending)

    def sent(self) -> None:
        """The frame measured last went on."""
        if self._pending is not None:
            self._sent = self._pending
