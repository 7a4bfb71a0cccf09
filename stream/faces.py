"""The small Python API the stages and commands share: frames -> detected, aligned, embedded faces.

analyzer = FaceAnalyzer()                      # MTCNN + the default embedder (dlib-resnet-v1)
faces = analyzer.analyze_image("photo.jpg")    # [Face(box, score, landmarks, embedding, chip)]
d = distance(faces[0].embedding, other.embedding, analyzer.embedder.metric)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stream.detections import Detections
from stream.detector import MTCNN
from stream.embedder import Embedder, distance
from stream.imageio import load_image
from stream.registry import DEFAULT_EMBEDDER

__all__ = ["Face", "FaceAnalyzer", "distance"]


@dataclass
class Face:
    """One row of an embedded `Detections` (stream/detections.py) with the chip the embedder saw:
    the image API's view of a face (the pipeline passes whole Detections)."""

    box: np.ndarray  # (4,) float32 x1, y1, x2, y2
    score: float
    landmarks: np.ndarray  # (5, 2): left eye, right eye, nose, mouth left, mouth right
    embedding: np.ndarray  # (dim,) float32
    chip: np.ndarray  # the aligned RGB uint8 crop the embedder saw

    @property
    def size(self) -> float:
        """Face size in pixels (the larger box side): used to pick the largest face, weight votes."""
        return float(max(self.box[2] - self.box[0], self.box[3] - self.box[1]))

    @staticmethod
    def rows(dets: Detections, chips: np.ndarray) -> list[Face]:
        """Each face of `dets` (embedded: dets.embeddings set) with its chip."""
        assert dets.embeddings is not None, "Face.rows needs embedded detections"
        return [
            Face(dets.boxes[i], float(dets.scores[i]), dets.landmarks[i], dets.embeddings[i], chips[i])
            for i in range(len(dets))
        ]


class FaceAnalyzer:
    """Detector + embedder, loaded once, applied to batches of frames."""

    def __init__(self, model: str = DEFAULT_EMBEDDER, home: Path | None = None, device: str | None = None):
        from stream.modelstore import require_model

        self.detector = MTCNN(weights_dir=require_model("mtcnn", home), device=device)
        self.embedder = Embedder(model, home=home, device=device)

    def detect(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        return self.detector.detect(frames)

    def analyze(self, frames: Sequence[np.ndarray]) -> list[list[Face]]:
        """All faces of each RGB uint8 frame, embedded in one batch across frames."""
        dets = self.detector.detect(frames)
        chips = [self.embedder.crop(f, d) for f, d in zip(frames, dets, strict=True)]
        counts = [len(c) for c in chips]
        if sum(counts) == 0:
            return [[] for _ in frames]
        embeddings = self.embedder.embed(np.concatenate(chips))
        out: list[list[Face]] = []
        start = 0
        for d, c, n in zip(dets, chips, counts, strict=True):
            out.append(Face.rows(d[:n].with_columns(embeddings=embeddings[start : start + n]), c))
            start += n
        return out

    def analyze_image(self, path: str | Path) -> list[Face]:
        return self.analyze([load_image(path)])[0]
