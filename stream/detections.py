"""`Detections`: the one type for the faces of one frame, from the detector to the sinks.

Columns, one row per face (by descending detector score):

    boxes       (N, 4) float32   x1, y1, x2, y2 in frame pixels          detector
    scores      (N,)   float32   face probability                        detector
    landmarks   (N, 5, 2) float32  left eye, right eye, nose, mouth l/r  detector
    embeddings  (N, D) float32   or None before the embed stage           embed
    tracks      (N,)   int32     per-camera track id, or None             match
    names       N x (str | None) the decision (None: unknown), or None    match
    distances   (N,)   float64   to the nearest person (inf: none), or None  match
    quality     (N,)   float32   0..1 (stream.gallery.quality), or None     embed
    candidates  N x (str | None) each face's own nearest person, or None    match
    reused      (N,)   bool      the embedding was carried over from this face in an  embed
                                 earlier frame (not new evidence), or None: all fresh
    unknowns    N x (str | None) the unknown identity (unknown-17) of an unknown track  match
    eyes        (N,)   float32   eye aspect ratio (NaN: not measured), or None    embed
                                 (only cameras with liveness on: stream/liveness)
    liveness    N x (str | None) "live" | "not_live" | "unknown" per face's track,  match
                                 None where the camera does not ask; or None

Like supervision's `Detections`: `Detections.empty()`, `len(d)`, `d[i]` / `d[a:b]` / `d[mask]` (a
`Detections` again), `Detections.merge([...])`. The wire form (a dict of arrays) and the `run --out`
JSON form are made in the schema module, stream/pipeline/wire.py; `Face` (stream/faces.py) is one row
of it with the aligned chip, for the image API."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np

Index = int | slice | Sequence[int] | np.ndarray


@dataclass
class Detections:
    """One frame's faces (see the module docstring for the columns)."""

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray
    embeddings: np.ndarray | None = None
    tracks: np.ndarray | None = None
    names: list[str | None] | None = None
    distances: np.ndarray | None = None
    quality: np.ndarray | None = None
    candidates: list[str | None] | None = None
    reused: np.ndarray | None = None
    unknowns: list[str | None] | None = None
    eyes: np.ndarray | None = None
    liveness: list[str | None] | None = None

    def __post_init__(self) -> None:
        n = len(self.boxes)
        for f in fields(self):
            col = getattr(self, f.name)
            if col is not None and len(col) != n:
                raise ValueError(f"detections: {len(col)} {f.name} for {n} boxes")

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @staticmethod
    def empty() -> Detections:
        return Detections(
            np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32)
        )

    @staticmethod
    def of(boxes: object, scores: object, landmarks: object) -> Detections:
        """From anything array-like, in the canonical dtypes and shapes."""
        return Detections(
            np.asarray(boxes, np.float32).reshape(-1, 4),
            np.asarray(scores, np.float32).reshape(-1),
            np.asarray(landmarks, np.float32).reshape(-1, 5, 2),
        )

    def __getitem__(self, index: Index) -> Detections:
        """Rows as a Detections: an int (one row), a slice, indices or a boolean mask."""
        if isinstance(index, int | np.integer):
            index = [int(index)]
        rows = np.arange(len(self))[index]
        names = None if self.names is None else [self.names[i] for i in rows.reshape(-1)]
        cands = None if self.candidates is None else [self.candidates[i] for i in rows.reshape(-1)]
        unk = None if self.unknowns is None else [self.unknowns[i] for i in rows.reshape(-1)]
        live = None if self.liveness is None else [self.liveness[i] for i in rows.reshape(-1)]
        return Detections(
            self.boxes[rows],
            self.scores[rows],
            self.landmarks[rows],
            None if self.embeddings is None else self.embeddings[rows],
            None if self.tracks is None else self.tracks[rows],
            names,
            None if self.distances is None else self.distances[rows],
            None if self.quality is None else self.quality[rows],
            cands,
            None if self.reused is None else self.reused[rows],
            unk,
            None if self.eyes is None else self.eyes[rows],
            live,
        )

    def with_columns(self, **columns: object) -> Detections:
        """A copy with columns set (e.g. embeddings=..., or tracks=, names=, distances=)."""
        return replace(self, **columns)  # type: ignore[arg-type]

    @staticmethod
    def merge(parts: Sequence[Detections]) -> Detections:
        """Rows of several Detections in order. An optional column is kept when every part has it."""
        if not parts:
            return Detections.empty()

        def stack(name: str) -> np.ndarray | None:
            cols = [getattr(p, name) for p in parts]
            return None if any(c is None for c in cols) else np.concatenate(cols)

        names = None if any(p.names is None for p in parts) else [n for p in parts for n in p.names or []]
        cands = (
            None
            if any(p.candidates is None for p in parts)
            else [n for p in parts for n in p.candidates or []]
        )
        unk = None if any(p.unknowns is None for p in parts) else [n for p in parts for n in p.unknowns or []]
        live = (
            None if any(p.liveness is None for p in parts) else [v for p in parts for v in p.liveness or []]
        )
        boxes, scores, landmarks = stack("boxes"), stack("scores"), stack("landmarks")
        assert boxes is not None and scores is not None and landmarks is not None
        return Detections(
            boxes,
            scores,
            landmarks,
            stack("embeddings"),
            stack("tracks"),
            names,
            stack("distances"),
            stack("quality"),
            cands,
            stack("reused"),
            unk,
            stack("eyes"),
            live,
        )
