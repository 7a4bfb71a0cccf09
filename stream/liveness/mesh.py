"""MediaPipe's face mesh (the optional `mediapipe-face-landmark` model) on detected faces: a 192x192
crop rotated upright by the detector's eyes, 468 points back in frame pixels; then its eye model on a
64x64 crop of each eye, whose eyelid contour says how open the eye is (eye aspect ratio).

The crops follow MediaPipe's own regions: for the face, the detection box's centre, a square 1.5x its
longer side, rotated so that the eyes are level; for an eye, its two corners' midpoint, a square 2.3x
the corners' distance, rotated along them, right eyes mirrored (the eye model knows left eyes). The
face model's own eyelid points hardly move when the eyes close (eyes painted shut: its ratio fell by
~4%, the eye model's by ~40-65%), so blinks are read from the eye model."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from stream.errors import FacestreamError
from stream.modelstore import ONNX_FILE, read_manifest, require_model

log = logging.getLogger(__name__)
MODEL = "mediapipe-face-landmark"
SIZE = 192
N_POINTS = 468
ROI_SCALE = 1.5
IRIS_FILE = "iris.onnx"
EYE_SIZE = 64
EYE_ROI_SCALE = 2.3
# Each eye's corners in the mesh (outer-of-the-left-eye first: the right eye is mirrored to match).
EYE_CORNERS = ((33, 133, False), (362, 263, True))
# The eye model's contour: 0..8 the lower lid from corner to corner, 9..15 the upper lid between them.
# EAR = (|u1 - l1| + |u2 - l2|) / (2 |corner - corner|), with facing lid points (u1, l1), (u2, l2).
EAR_POINTS = (0, 11, 13, 8, 5, 3)  # corner, upper 1, upper 2, corner, lower 2, lower 1


def crop_transforms(boxes: np.ndarray, landmarks5: np.ndarray) -> np.ndarray:
    """(N, 2, 3) affine maps frame -> 192x192 crop, one per face."""
    out = np.zeros((len(boxes), 2, 3), np.float64)
    for i, (box, lm) in enumerate(
        zip(np.asarray(boxes, np.float64), np.asarray(landmarks5, np.float64), strict=True)
    ):
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        side = max(box[2] - box[0], box[3] - box[1]) * ROI_SCALE
        dx, dy = lm[1] - lm[0]
        angle = np.arctan2(dy, dx)
        s = SIZE / max(side, 1.0)
        c, sn = np.cos(-angle) * s, np.sin(-angle) * s
        # rotate by -angle about the centre, scale, then put the centre in the middle of the crop
        out[i] = [[c, -sn, SIZE / 2 - (c * cx - sn * cy)], [sn, c, SIZE / 2 - (sn * cx + c * cy)]]
    return out


def eye_transforms(points: np.ndarray) -> np.ndarray:
    """(N, 468, >=2) mesh points -> (N, 2, 2, 3) affine maps frame -> 64x64 eye crop (left, right)."""
    out = np.zeros((len(points), 2, 2, 3), np.float64)
    for i, pts in enumerate(np.asarray(points, np.float64)):
        for e, (a, b, mirror) in enumerate(EYE_CORNERS):
            p, q = pts[a, :2], pts[b, :2]
            c = (p + q) / 2
            s = EYE_SIZE / max(float(np.linalg.norm(q - p)) * EYE_ROI_SCALE, 1.0)
            angle = np.arctan2(q[1] - p[1], q[0] - p[0])
            cs, sn = np.cos(-angle) * s, np.sin(-angle) * s
            m = np.array([[cs, -sn, 0.0], [sn, cs, 0.0]])
            m[:, 2] = EYE_SIZE / 2 - m[:, :2] @ c
            if mirror:  # x -> EYE_SIZE - 1 - x, as a flipped crop
                m[0] = -m[0]
                m[0, 2] += EYE_SIZE - 1
            out[i, e] = m
    return out


def eye_aspect_ratio(contours: np.ndarray) -> np.ndarray:
    """(M, 71, >=2) eye model contours -> (M,) eye aspect ratios (scale, rotation and mirror free)."""
    q = np.asarray(contours, np.float64)[:, list(EAR_POINTS), :2]
    width = np.linalg.norm(q[:, 0] - q[:, 3], axis=1)
    lids = np.linalg.norm(q[:, 1] - q[:, 5], axis=1) + np.linalg.norm(q[:, 2] - q[:, 4], axis=1)
    return np.asarray(lids / np.maximum(2 * width, 1e-6), np.float32)


class FaceMesh:
    """The ONNX face mesh: `points(frame, boxes, landmarks5)` -> (N, 468, 3) frame pixels + presence."""

    def __init__(self, home: Path | None = None, threads: int | None = None):
        folder = require_model(MODEL, home)
        manifest = read_manifest(MODEL, home)
        self.session = _session(folder / str(manifest.get("file", ONNX_FILE)), threads)
        self.iris = _session(folder / str(manifest.get("iris_file", IRIS_FILE)), threads)

    def crops(
        self, frame: np.ndarray, boxes: np.ndarray, landmarks5: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3, 192, 192) float32 model inputs and their (N, 2, 3) frame -> crop maps."""
        maps = crop_transforms(boxes, landmarks5)
        x = np.zeros((len(maps), 3, SIZE, SIZE), np.float32)
        for i, m in enumerate(maps):
            chip = cv2.warpAffine(
                frame, m, (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
            )
            x[i] = chip.transpose(2, 0, 1)
        x *= 1.0 / 255.0
        return x, maps

    def points(
        self, frame: np.ndarray, boxes: np.ndarray, landmarks5: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(N, 468, 3) points (x, y in frame pixels; z in crop pixels) and (N,) face-presence logits."""
        n = len(boxes)
        if n == 0:
            return np.zeros((0, N_POINTS, 3), np.float32), np.zeros(0, np.float32)
        x, maps = self.crops(frame, boxes, landmarks5)
        out = np.asarray(self.session.run(None, {"input": x})[0], np.float32)
        pts = out[:, : N_POINTS * 3].reshape(n, N_POINTS, 3).copy()
        for i, m in enumerate(maps):
            inv = cv2.invertAffineTransform(m)
            xy = pts[i, :, :2].astype(np.float64)
            pts[i, :, :2] = xy @ inv[:, :2].T + inv[:, 2]
        return pts, out[:, -1]

    def eyes(self, frame: np.ndarray, boxes: np.ndarray, landmarks5: np.ndarray) -> np.ndarray:
        """(N,) eye aspect ratio per face (the mean of both eyes); NaN where the mesh sees no face."""
        pts, presence = self.points(frame, boxes, landmarks5)
        n = len(pts)
        if n == 0:
            return np.zeros(0, np.float32)
        maps = eye_transforms(pts).reshape(2 * n, 2, 3)
        x = np.zeros((2 * n, 3, EYE_SIZE, EYE_SIZE), np.float32)
        for i, m in enumerate(maps):
            x[i] = cv2.warpAffine(frame, m, (EYE_SIZE, EYE_SIZE), flags=cv2.INTER_LINEAR).transpose(2, 0, 1)
        x *= 1.0 / 255.0
        out = np.asarray(self.iris.run(None, {"input": x})[0], np.float32)
        ear = eye_aspect_ratio(out[:, : 71 * 3].reshape(2 * n, 71, 3)).reshape(n, 2).mean(axis=1)
        ear[presence <= 0] = np.nan  # logit 0 = probability 0.5, MediaPipe's own cut
        return np.asarray(ear, np.float32)


def _session(path: Path, threads: int | None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - a missing or damaged file: one line that says how to fix it
        raise FacestreamError(
            f"{path}: cannot load ({e}); rebuild with `facestream models pull --force {MODEL}`"
        ) from None
