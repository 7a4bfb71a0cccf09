"""Is a face good enough to enroll? Too small or too blurred faces make weak gallery samples: they
match strangers and miss the person. Both measures are cheap and explainable to the user."""

from __future__ import annotations

import cv2
import numpy as np

# Defaults, from the shared photos: real faces there have eyes >= 24 px apart and sharpness >= 72
# (background faces included); MTCNN's false detections score 2-7; obama-480p blurred 7x7 scores 23,
# obama-240p blurred 3x3 scores 26. dlib's chips put the eyes ~55 px apart: under 20 px the chip is
# mostly interpolation.
MIN_EYE_PX = 20.0
MIN_SHARPNESS = 40.0


def eye_distance(landmarks: np.ndarray) -> float:
    """Pixels between the eye centres (landmarks 0 and 1): the face's scale, independent of pose."""
    lm = np.asarray(landmarks, np.float64).reshape(5, 2)
    return float(np.linalg.norm(lm[1] - lm[0]))


def sharpness(chip: np.ndarray) -> float:
    """Variance of the Laplacian of the aligned chip (fixed size, so comparable across photos)."""
    grey = cv2.cvtColor(np.ascontiguousarray(chip), cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def quality_problem(
    landmarks: np.ndarray, chip: np.ndarray, min_eye_px: float, min_sharpness: float
) -> str | None:
    """Why this face should not be enrolled, or None if it is fine."""
    eyes = eye_distance(landmarks)
    if eyes < min_eye_px:
        return f"face too small (eyes {eyes:.0f} px apart, need {min_eye_px:.0f})"
    sharp = sharpness(chip)
    if sharp < min_sharpness:
        return f"face too blurred (sharpness {sharp:.0f}, need {min_sharpness:.0f})"
    return None
