"""Recognise once, then follow: the embed stage carries a face's embedding over to the same face in the
next frames of its camera instead of computing it again (embed.follow; what it saves:
benchmarks/RESULTS.md, "Recognise once, then follow").

A face takes the embedding of a face embedded in an earlier frame of its camera when all of these hold:
- its box overlaps where that face was in the camera's previous frame (IoU >= min_iou): the same place,
  no jump;
- that embedding was computed fewer than max_age frames ago: every face is embedded afresh at least
  every max_age frames;
- it is a good face (quality >= min_quality): a poor face's every new look is new evidence, which
  a near-threshold or blurred face needs to be named at all (the tracker asks for several agreeing
  faces), while a good face's embedding changes little from one frame to the next;
- its quality is not better by quality_gain or more: a better view is worth a new embedding;
- its aligned chip looks like the chip that was embedded (grey 24 x 24 thumbnails, mean absolute
  difference <= max_chip_change): another person stepping into the same place (a hard cut that the
  scene-change score does not see) is embedded afresh;
- the frame is not a scene cut.
A carried-over embedding is marked (Detections.reused). The tracker takes it as the face's evidence
for naming, but not as a new vote and not into the track's appearance: the same evidence counted
twice would let a near-threshold face "agree" with itself.

State is per camera and per embed worker; with several workers each sees part of a camera's frames,
and the overlap rules hold all the same (faces move further between the frames one worker sees)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

THUMB = 24


@dataclass(frozen=True)
class FollowSettings:
    max_age: int = 5  # frames; 0 turns following off (every face embedded in every frame)
    min_iou: float = 0.5
    min_quality: float = 0.3
    quality_gain: float = 0.1
    max_chip_change: float = 0.06  # 0..1


@dataclass
class Followed:
    """A face whose embedding can be carried over: where it was, and what was embedded."""

    box: np.ndarray
    quality: float
    thumb: np.ndarray
    age: int = 0  # frames since its embedding was computed
    embedding: np.ndarray | None = None  # None until the batch that computes it is embedded
    row: int | None = None  # its row among the batch's fresh embeddings, until then


def chip_thumb(chip: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(chip, cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (THUMB, THUMB), interpolation=cv2.INTER_AREA).astype(np.float32)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


class Follow:
    """One embed worker's memory of the faces it embedded, per camera."""

    def __init__(self, settings: FollowSettings) -> None:
        self.settings = settings
        self.cameras: dict[str, list[Followed]] = {}
        self._rows = 0  # fresh faces in the current batch
        # Every face embedded in the current batch: a later frame of the batch may have let go of one
        # that an earlier frame of it still carries, and each must get its embedding.
        self._pending: list[Followed] = []

    def assign(
        self, cam: str, boxes: np.ndarray, quality: np.ndarray, chips: np.ndarray, cut: bool
    ) -> list[Followed | int]:
        """For each face of one frame: the earlier face whose embedding it takes, or its row among
        the batch's fresh faces (to be embedded). Frames of a batch in their order; then resolve()."""
        s = self.settings
        if s.max_age <= 0:  # off: every face is fresh, and nothing is remembered
            first, self._rows = self._rows, self._rows + len(boxes)
            return list(range(first, self._rows))
        previous = [] if cut else self.cameras.get(cam, [])
        thumbs = [chip_thumb(c) for c in chips]
        pairs = sorted(
            ((_iou(boxes[i], f.box), i, k) for i in range(len(boxes)) for k, f in enumerate(previous)),
            reverse=True,
        )
        taken: dict[int, Followed] = {}
        used: set[int] = set()
        for overlap, i, k in pairs:
            if overlap < s.min_iou:
                break
            if i in taken or k in used:
                continue
            f = previous[k]
            if (
                f.age + 1 < s.max_age
                and quality[i] >= s.min_quality
                and quality[i] < f.quality + s.quality_gain
                and float(np.abs(thumbs[i] - f.thumb).mean()) / 255.0 <= s.max_chip_change
            ):
                taken[i] = f
                used.add(k)
        out: list[Followed | int] = []
        now: list[Followed] = []
        for i in range(len(boxes)):
            if i in taken:
                f = taken[i]
                f.box, f.age = boxes[i].copy(), f.age + 1
                out.append(f)
                now.append(f)
            else:
                row, self._rows = self._rows, self._rows + 1
                face = Followed(boxes[i].copy(), float(quality[i]), thumbs[i], row=row)
                self._pending.append(face)
                now.append(face)
                out.append(row)
        self.cameras[cam] = now
        return out

    def resolve(self, fresh: np.ndarray | None) -> None:
        """The batch's fresh embeddings (rows as assigned), or None: embedding failed, forget all."""
        rows, self._rows = self._rows, 0
        pending, self._pending = self._pending, []
        if fresh is None or len(fresh) != rows:
            self.cameras.clear()
            return
        for f in pending:
            assert f.row is not None
            f.embedding, f.row = fresh[f.row].copy(), None

    @staticmethod
    def embeddings(sources: list[Followed | int], fresh: np.ndarray, dim: int) -> np.ndarray:
        """One frame's embeddings, after resolve(): fresh rows and carried-over ones."""
        out = np.empty((len(sources), dim), np.float32)
        for i, src in enumerate(sources):
            if isinstance(src, int):
                out[i] = fresh[src]
            else:
                assert src.embedding is not None, "resolve() first"
                out[i] = src.embedding
        return out

    @staticmethod
    def reused(sources: list[Followed | int]) -> np.ndarray:
        return np.array([not isinstance(src, int) for src in sources], bool)
