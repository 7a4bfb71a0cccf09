"""What the detector's five landmarks (left eye, right eye, nose, mouth left, mouth right; image
left/right) say about a face over time: its yaw, and whether its motion is one plane's.

Yaw: the nose's offset from the eyes' midpoint along the eye line, in inter-ocular distances (0 for a
frontal face; positive when the nose moves towards the image's right, i.e. the person turns to their
own left when the camera image is not mirrored). A flat picture turned about any axis keeps its nose
where its own plane has it, so this hardly changes; a head that turns moves the nose off the eye line.

Planarity: every view of a flat picture is one homography of every other view, so the five points of
two frames of a picture fit a homography up to the detector's noise; the nose of a turning head sits
in front of the plane of eyes and mouth and does not fit. `plane_residual` is that fit's RMS error in
inter-ocular distances."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np


def interocular(lm: np.ndarray) -> float:
    return float(np.linalg.norm(lm[1] - lm[0]))


def yaw(lm: np.ndarray) -> float:
    """(5, 2) landmarks -> the nose's signed offset along the eye line, in inter-ocular distances."""
    lm = np.asarray(lm, np.float64)
    eye_line = lm[1] - lm[0]
    iod = float(np.linalg.norm(eye_line))
    if iod < 1e-6:
        return 0.0
    mid = (lm[0] + lm[1]) / 2
    return float(np.dot(lm[2] - mid, eye_line) / iod / iod)


def plane_residual(a: np.ndarray, b: np.ndarray) -> float:
    """RMS error of the least-squares homography a -> b (five points each), in b's inter-ocular
    distances; inf when no homography fits (degenerate points)."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    h: Any = cv2.findHomography(a64, b64, 0)[0]  # None for degenerate points (the stubs say never)
    if h is None:
        return float("inf")
    pts = cv2.perspectiveTransform(a64.reshape(-1, 1, 2), h).reshape(-1, 2)
    rms = float(np.sqrt(np.mean(np.sum((pts - b64) ** 2, axis=1))))
    return rms / max(interocular(b64), 1e-6)
