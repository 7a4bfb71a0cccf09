"""MediaPipe's face mesh (the optional `mediapipe-face-landmark` model) on detected faces: a 192x192
crop rotated upright by the detector's eyes, 468 points back in frame pixels, and how open the eyes
are (eye aspect ratio).

The crop follows MediaPipe's own region for this model: the detection box's centre, a square 1.5x its
longer side, rotated so that the eyes are level."""

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
# Eye contours in MediaPipe's mesh (indices as in its face_mesh connections): corner, two upper-lid
# points, the other corner, two lower-lid points facing them; EAR = (|p1-p5| + |p2-p4|) / (2 |p0-p3|).
EYES = ((33, 160, 158, 133, 153, 144), (362, 385, 387, 263, 373, 380))


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


def eye_aspect_ratio(points: np.ndarray) -> np.ndarray:
    """(N, 468, >=2) points -> (N,) mean eye aspect ratio of both eyes (scale and rotation free)."""
    p = np.asarray(points, np.float64)[..., :2]
    ears = []
    for e in EYES:
        q = p[:, list(e)]
        width = np.linalg.norm(q[:, 0] - q[:, 3], axis=1)
        lids = np.linalg.norm(q[:, 1] - q[:, 5], axis=1) + np.linalg.norm(q[:, 2] - q[:, 4], axis=1)
        ears.append(lids / np.maximum(2 * width, 1e-6))
    return np.asarray(np.mean(ears, axis=0), np.float32)


class FaceMesh:
    """The ONNX face mesh: `points(frame, boxes, landmarks5)` -> (N, 468, 3) frame pixels + presence."""

    def __init__(self, home: Path | None = None, threads: int | None = None):
        folder = require_model(MODEL, home)
        manifest = read_manifest(MODEL, home)
        path = folder / str(manifest.get("file", ONNX_FILE))
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # noqa: BLE001 - a damaged file: one line that says how to fix it
            raise FacestreamError(
                f"{path}: cannot load ({e}); rebuild with `facestream models pull --force {MODEL}`"
            ) from None

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
        """(N,) eye aspect ratio per face; NaN where the mesh sees no face."""
        pts, presence = self.points(frame, boxes, landmarks5)
        ear = eye_aspect_ratio(pts) if len(pts) else np.zeros(0, np.float32)
        ear[presence <= 0] = np.nan  # logit 0 = probability 0.5, MediaPipe's own cut
        return ear
