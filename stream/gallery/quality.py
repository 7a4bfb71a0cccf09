"""How good is a face for recognition? One score for the pipeline (faces under the gate are reported
but do not vote on their track's name) and for enrollment (such faces are not enrolled): one code
path, `assess`.

The parts, each mapped to 0..1 (1 = good enough that more does not help):
- size: pixels between the eyes (dlib's chips put the eyes ~55 px apart: under ~20 px the chip is
  mostly interpolation);
- sharpness: variance of the Laplacian of the aligned chip (fixed size, so comparable);
- pose: how far the nose sits off the eyes' midline, relative to the eye distance (a frontal face ~0,
  a profile 0.5 and more);
- detector score.
The score is the smallest part: one bad property is enough to make a weak face.

Plausibility: MTCNN now and then gives a face-like patch (a hand holding a microphone) five landmarks
in an arrangement no face has (mouth above the nose, eyes on top of each other, landmarks far outside
the box). Such a detection is not a face: its score is 0 and `plausible` is False.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

# Enrollment's defaults, from the shared photos: real faces there have eyes >= 24 px apart and
# sharpness >= 72 (background faces included); MTCNN's false detections score 2-7; obama-480p blurred
# 7x7 scores 23, obama-240p blurred 3x3 scores 26.
MIN_EYE_PX = 20.0
MIN_SHARPNESS = 40.0

# Where each part reaches 1.0 (the pipeline's gate is a fraction of these: stream.pipeline.config).
GOOD_EYE_PX = 40.0
GOOD_SHARPNESS = 100.0
PROFILE_YAW = 0.5  # nose offset / eye distance at which the pose part reaches 0
MIN_DET_SCORE, GOOD_DET_SCORE = 0.6, 0.95


def eye_distance(landmarks: np.ndarray) -> float:
    """Pixels between the eye centres (landmarks 0 and 1): the face's scale, independent of pose."""
    lm = np.asarray(landmarks, np.float64).reshape(5, 2)
    return float(np.linalg.norm(lm[1] - lm[0]))


def sharpness(chip: np.ndarray) -> float:
    """Variance of the Laplacian of the aligned chip (fixed size, so comparable across photos)."""
    grey = cv2.cvtColor(np.ascontiguousarray(chip), cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def _upright(landmarks: np.ndarray) -> np.ndarray:
    """Landmarks rotated so that the eye line is horizontal, in units of the eye distance, with the
    eyes' midpoint at the origin (y grows downwards, as in the image)."""
    lm = np.asarray(landmarks, np.float64).reshape(5, 2)
    v = lm[1] - lm[0]
    d = max(float(np.hypot(*v)), 1e-9)
    c, s = v[0] / d, v[1] / d
    rot = np.array([[c, s], [-s, c]])
    upright: np.ndarray = ((lm - (lm[0] + lm[1]) / 2) @ rot.T) / d
    return upright


def yaw(landmarks: np.ndarray) -> float:
    """Nose offset from the eyes' midline / eye distance: ~0 frontal, 0.5 and more in profile."""
    return abs(float(_upright(landmarks)[2, 0]))


def implausible(box: np.ndarray, landmarks: np.ndarray) -> str | None:
    """Why these five points cannot be a face's eyes, nose and mouth corners, or None."""
    lm = np.asarray(landmarks, np.float64).reshape(5, 2)
    b = np.asarray(box, np.float64).reshape(4)
    w, h = b[2] - b[0], b[3] - b[1]
    eyes = eye_distance(lm)
    if w <= 0 or h <= 0 or eyes <= 0:
        return "empty box or eyes on top of each other"
    v = lm[1] - lm[0]
    if abs(math.degrees(math.atan2(v[1], v[0]))) > 60:
        return "eye line tilted over 60 degrees (or the eyes swapped)"
    pad = 0.25 * max(w, h)
    inside = (
        (lm[:, 0] >= b[0] - pad)
        & (lm[:, 0] <= b[2] + pad)
        & (lm[:, 1] >= b[1] - pad)
        & (lm[:, 1] <= b[3] + pad)
    )
    if not inside.all():
        return "landmarks outside the box"
    if not 0.15 <= eyes / w <= 0.8:
        return f"eye distance {eyes / w:.2f} of the box width"
    u = _upright(lm)
    nose_y, mouth_y = u[2, 1], (u[3, 1] + u[4, 1]) / 2
    if nose_y < 0.1 or mouth_y - nose_y < 0.05:
        return "nose not below the eyes, or mouth not below the nose"
    # In box heights, not eye distances: a turned face's eyes are foreshortened, its height is not.
    drop = mouth_y * eyes / h
    if not 0.15 <= drop <= 0.8:
        return f"mouth {drop:.2f} box heights below the eyes"
    mouth_w = u[4, 0] - u[3, 0]
    if not 0.3 <= mouth_w <= 1.6:
        return f"mouth {mouth_w:.2f} eye distances wide"
    return None


@dataclass(frozen=True)
class Quality:
    score: float  # 0..1: the smallest part (0 when implausible)
    eye_px: float
    sharpness: float
    yaw: float
    det_score: float
    not_a_face: str | None  # why the landmarks cannot be a face's, or None

    @property
    def plausible(self) -> bool:
        return self.not_a_face is None


def _part(value: float, bad: float, good: float) -> float:
    return min(max((value - bad) / (good - bad), 0.0), 1.0)


def assess(box: np.ndarray, score: float, landmarks: np.ndarray, chip: np.ndarray) -> Quality:
    """The quality of one detected face, from its box, detector score, landmarks and aligned chip."""
    eyes = eye_distance(landmarks)
    sharp = sharpness(chip)
    y = yaw(landmarks)
    why = implausible(box, landmarks)
    parts = (
        _part(eyes, 0.0, GOOD_EYE_PX),
        _part(sharp, 0.0, GOOD_SHARPNESS),
        _part(-y, -PROFILE_YAW, 0.0),
        _part(float(score), MIN_DET_SCORE, GOOD_DET_SCORE),
    )
    total = 0.0 if why is not None else float(min(parts))
    return Quality(total, eyes, sharp, y, float(score), why)


def assess_faces(
    boxes: np.ndarray, scores: np.ndarray, landmarks: np.ndarray, chips: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each face's quality score (N,) float32 and whether it is a face at all (N,) bool: what the
    embed stage (and the identity benchmark) attach to a frame's detections."""
    qs = [assess(boxes[i], float(scores[i]), landmarks[i], chips[i]) for i in range(len(boxes))]
    return np.array([q.score for q in qs], np.float32), np.array([q.plausible for q in qs], bool)


def quality_problem(
    landmarks: np.ndarray,
    chip: np.ndarray,
    min_eye_px: float,
    min_sharpness: float,
    box: np.ndarray | None = None,
    score: float = 1.0,
) -> str | None:
    """Why this face should not be enrolled, or None if it is fine (enrollment's gate on `assess`)."""
    q = assess(box if box is not None else _box_around(landmarks), score, landmarks, chip)
    if q.eye_px < min_eye_px:
        return f"face too small (eyes {q.eye_px:.0f} px apart, need {min_eye_px:.0f})"
    if q.sharpness < min_sharpness:
        return f"face too blurred (sharpness {q.sharpness:.0f}, need {min_sharpness:.0f})"
    if q.not_a_face is not None:
        return f"not a face ({q.not_a_face})"
    return None


def _box_around(landmarks: np.ndarray) -> np.ndarray:
    """A face box for landmarks alone: the points' extent, grown to a face's proportions."""
    lm = np.asarray(landmarks, np.float64).reshape(5, 2)
    lo, hi = lm.min(axis=0), lm.max(axis=0)
    c, s = (lo + hi) / 2, max(float((hi - lo).max()), 1.0) * 1.6
    return np.array([c[0] - s / 2, c[1] - s / 2, c[0] + s / 2, c[1] + s / 2])
