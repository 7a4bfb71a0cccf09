"""Per-camera face tracks whose names never contradict the face they are shown on.

Tracks. Each track keeps its box, a velocity (to predict where the face is next) and an appearance:
the running mean of its good-quality embeddings. A face joins a track only where both agree: the
geometry (IoU with the predicted box, or for fast motion a centre distance) and the appearance
(distance to the track's appearance under `appearance_ratio` x the threshold). A face far from its
track's appearance starts a new track even where the boxes overlap: a hard cut to another person at
the same place, or two people crossing. `cut()` (a scene cut: the whole frame changed) ends every
track of the camera.

Names. Each face brings its own evidence: its nearest person (`candidate`), the distance, the
distance to the nearest other person (`runner_up`) and its quality. A track is named:
- at once, by one good-quality face that is clearly that person: distance at least `clear_margin`
  (a fraction of the threshold) under the threshold, and the runner-up at least `tie_margin` further;
- or by `agree_frames` good-quality faces in a row whose nearest person is the same, each within
  `near_band` over the threshold, the last within it (a face near someone else starts the count
  again, a face near nobody breaks it). A named track takes another name only this way.
Quality (stream.gallery.quality): a face under `min_quality` does not vote; one under
`good_quality` votes only when it is clear by the wider `weak_margin` (a poor face must be a much
clearer match to count), and never changes the track's appearance.

A face is output with its track's name only where its own evidence agrees: its candidate is that
name, it is within the threshold, and it is no tie. Otherwise it is unknown, whatever the track says:
tracking makes names steadier, it never asserts a name the face contradicts.

Events: "track_confirmed" (a track gets a name, or a different one), "unknown_persists" (a track
stays unknown for `unknown_frames` faces and `unknown_seconds`), "track_left" (an announced track is
not seen for `max_missed` updates or `max_age_s` seconds, a scene cut, or the stream ends). Each says
`frames_to_name` (how many faces the track took to get its name; null while unnamed) and `faces`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream.gallery.matcher import Match


@dataclass(frozen=True)
class Rules:
    """The tracker's settings (the pipeline's `match.tracking` config; defaults documented there)."""

    clear_margin: float = 0.05  # fraction of the threshold under it that names a track at once
    tie_margin: float = 0.05  # runner-up nearer than this (fraction of the threshold): a tie
    agree_frames: int = 3  # faces that must agree on a near-threshold name
    near_band: float = 0.15  # faces this fraction over the threshold still agree on their candidate
    min_quality: float = 0.05  # faces under this quality do not vote (stream.gallery.quality)
    good_quality: float = 0.3  # faces under this vote only when clear by weak_margin
    weak_margin: float = 0.15
    appearance_ratio: float = 1.0  # a face this far (x threshold) from a track's appearance: new track
    max_missed: int = 12
    max_age_s: float = 3.0
    iou_min: float = 0.3
    centre_max: float = 0.75  # centre distance / track box size, for fast motion
    unknown_frames: int = 10
    unknown_seconds: float = 1.0


@dataclass
class TrackedFace:
    track: int
    name: str | None  # the decision: the track's name where this face agrees, else None
    candidate: str | None  # this face's own nearest person (within the threshold or not)
    distance: float  # this face's distance to its candidate


@dataclass
class Event:
    type: str  # "track_confirmed" | "track_left" | "unknown_persists"
    camera: str
    track: int
    name: str | None
    first_seen: float
    last_seen: float
    best_distance: float | None
    frames_to_name: int | None = None  # faces the track took to get its name (None: unnamed)
    faces: int = 0  # faces of the track so far

    def to_dict(self) -> dict[str, Any]:
        best = self.best_distance
        return {
            "type": self.type,
            "camera": self.camera,
            "track": self.track,
            "name": self.name,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            # JSON has no inf: an empty gallery's "infinitely far" is null.
            "best_distance": None if best is None or not math.isfinite(best) else round(float(best), 6),
            "frames_to_name": self.frames_to_name,
            "faces": self.faces,
        }


@dataclass
class _Track:
    id: int
    box: np.ndarray
    first_seen: float
    last_seen: float
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))  # box change per update
    appearance: np.ndarray | None = None
    appearance_n: int = 0
    hits: int = 0
    missed: int = 0
    name: str | None = None
    named_at: int | None = None  # hits when the current name was given
    agree_with: str | None = None  # the candidate near-threshold faces have agreed on so far
    agree_count: int = 0
    announced_name: str | None = None  # last name a track_confirmed event carried
    unknown_announced: bool = False
    best: dict[str | None, float] = field(default_factory=dict)  # best own distance per candidate

    @property
    def announced(self) -> bool:
        return self.announced_name is not None or self.unknown_announced

    def predicted(self) -> np.ndarray:
        box: np.ndarray = self.box + self.velocity * (self.missed + 1)
        return box


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU between every box of a (M,4) and b (N,4), boxes x1,y1,x2,y2."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def _greedy(cost: np.ndarray, ok: np.ndarray) -> list[tuple[int, int]]:
    """Pairs (row, col) taken cheapest first among allowed cells, each row and column used once."""
    rows, cols = np.nonzero(ok)
    order = np.argsort(cost[rows, cols], kind="stable")
    used_r: set[int] = set()
    used_c: set[int] = set()
    pairs = []
    for i in order:
        r, c = int(rows[i]), int(cols[i])
        if r not in used_r and c not in used_c:
            used_r.add(r)
            used_c.add(c)
            pairs.append((r, c))
    return pairs


def embedding_distances(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """(M, N) distances between rows of a and rows of b, in the gallery's metric."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if metric == "cosine":
        an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
        cos: np.ndarray = 1.0 - an @ bn.T
        return cos
    d: np.ndarray = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=2)
    return d


class FaceTracker:
    """Tracks faces of one camera and names each track from its faces' own evidence. Feed it every
    processed frame (also frames with no faces) in time order."""

    def __init__(self, camera: str, threshold: float, rules: Rules | None = None, metric: str = "euclidean"):
        self.camera = camera
        self.threshold = float(threshold)
        self.rules = rules or Rules()
        self.metric = metric
        self.tracks: dict[int, _Track] = {}
        self._next_id = 1

    # ----- one face's evidence ---------------------------------------------------------------------
    @staticmethod
    def candidate(m: Match) -> str | None:
        """The face's nearest person (a Match made without a candidate: its name)."""
        if not math.isfinite(m.distance):
            return None
        return m.candidate if m.candidate is not None else m.name

    def within(self, m: Match) -> bool:
        """The face is within the threshold of its candidate, and no tie with another person."""
        tie = m.runner_up - m.distance < self.rules.tie_margin * self.threshold
        return self.candidate(m) is not None and m.distance <= self.threshold and not tie

    def clear(self, m: Match, quality: float = 1.0) -> bool:
        """Within the threshold by the margin this face's quality asks for."""
        r = self.rules
        margin = r.clear_margin if quality >= r.good_quality else r.weak_margin
        return self.within(m) and m.distance <= self.threshold * (1.0 - margin)

    # ----- association -------------------------------------------------------------------------------
    def _associate(self, boxes: np.ndarray, emb: np.ndarray | None) -> dict[int, int]:
        """detection index -> track id."""
        ids = list(self.tracks)
        if not ids or len(boxes) == 0:
            return {}
        r = self.rules
        tboxes = np.stack([self.tracks[i].predicted() for i in ids])
        iou = iou_matrix(tboxes, boxes)
        tc = (tboxes[:, :2] + tboxes[:, 2:]) / 2
        dc = (boxes[:, :2] + boxes[:, 2:]) / 2
        tsize = np.maximum(tboxes[:, 2:] - tboxes[:, :2], 1.0).max(axis=1)
        dsize = np.maximum(boxes[:, 2:] - boxes[:, :2], 1.0).max(axis=1)
        centre = np.linalg.norm(tc[:, None, :] - dc[None, :, :], axis=2) / tsize[:, None]
        ratio = dsize[None, :] / tsize[:, None]
        ok = (iou >= r.iou_min) | ((centre <= r.centre_max) & (ratio > 0.5) & (ratio < 2.0))
        cost = (1.0 - iou) + centre
        if emb is not None and emb.shape[1]:
            gate = r.appearance_ratio * self.threshold
            have = [k for k, i in enumerate(ids) if self.tracks[i].appearance is not None]
            if have:
                apps = np.stack([self.tracks[ids[k]].appearance for k in have])  # type: ignore[misc]
                app = np.zeros((len(ids), len(boxes)))
                app[have] = embedding_distances(apps, emb, self.metric)
                ok &= app <= gate
                cost = cost + app / max(gate, 1e-9)
        pairs = _greedy(cost, ok)
        return {c: ids[row] for row, c in pairs}

    # ----- frames ------------------------------------------------------------------------------------
    def update(
        self,
        t: float,
        boxes: np.ndarray,
        matches: Sequence[Match],
        embeddings: np.ndarray | None = None,
        quality: np.ndarray | None = None,
        reused: np.ndarray | None = None,
    ) -> tuple[list[TrackedFace], list[Event]]:
        """One frame's faces: boxes, each face's Match (with candidate and runner_up), embeddings
        (for appearance; None: geometry only), quality (None: every face votes) and which embeddings
        were carried over from an earlier frame (stream/pipeline/follow.py: evidence already
        counted, so no vote and no appearance update; None: all fresh)."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        n = len(boxes)
        if len(matches) != n:
            raise ValueError(f"{n} boxes but {len(matches)} matches")
        emb = None if embeddings is None or n == 0 else np.asarray(embeddings, np.float64).reshape(n, -1)
        qual = np.ones(n) if quality is None else np.asarray(quality, np.float64).reshape(n)
        fresh = np.ones(n, bool) if reused is None else ~np.asarray(reused, bool).reshape(n)
        events: list[Event] = []
        assigned = self._associate(boxes, emb)
        seen: set[int] = set()
        out: list[TrackedFace] = []
        for i, (box, m) in enumerate(zip(boxes, matches, strict=True)):
            tid = assigned.get(i)
            if tid is None:
                tid = self._next_id
                self._next_id += 1
                self.tracks[tid] = _Track(tid, box.copy(), first_seen=t, last_seen=t)
            tr = self.tracks[tid]
            seen.add(tid)
            if tr.hits:
                step = (box - tr.box) / (tr.missed + 1)
                tr.velocity = 0.5 * tr.velocity + 0.5 * step
            tr.box, tr.last_seen, tr.missed = box.copy(), t, 0
            tr.hits += 1
            good = qual[i] >= self.rules.good_quality
            if good and fresh[i] and emb is not None and emb.shape[1] and np.all(np.isfinite(emb[i])):
                self._learn(tr, emb[i])
            cand = self.candidate(m)
            tr.best[cand] = min(tr.best.get(cand, math.inf), float(m.distance))
            if qual[i] >= self.rules.min_quality and fresh[i]:
                self._vote(tr, m, float(qual[i]))
            events.extend(self._announce(tr, t))
            agrees = tr.name is not None and cand == tr.name and self.within(m)
            out.append(TrackedFace(tid, tr.name if agrees else None, cand, float(m.distance)))
        for tid in list(self.tracks):
            if tid in seen:
                continue
            tr = self.tracks[tid]
            tr.missed += 1
            if tr.missed > self.rules.max_missed or t - tr.last_seen > self.rules.max_age_s:
                events.extend(self._close(tr))
        return out, events

    def _learn(self, tr: _Track, e: np.ndarray) -> None:
        # A running mean over the last ~10 good faces: follows slow changes (pose, light) while one
        # odd frame moves it little.
        tr.appearance_n = min(tr.appearance_n + 1, 10)
        if tr.appearance is None:
            tr.appearance = e.copy()
        else:
            tr.appearance += (e - tr.appearance) / tr.appearance_n

    def _vote(self, tr: _Track, m: Match, quality: float) -> None:
        r, t = self.rules, self.threshold
        cand = self.candidate(m)
        tie = m.runner_up - m.distance < r.tie_margin * t
        if quality < r.good_quality:
            if not self.clear(m, quality):
                return  # a poor face that is not a clear match says nothing either way
        elif cand is None or tie or m.distance > t * (1.0 + r.near_band):
            tr.agree_with, tr.agree_count = None, 0  # a good face near nobody: agreement is broken
            return
        if cand != tr.agree_with:  # a conflict (or the first say): agreement starts again
            tr.agree_with, tr.agree_count = cand, 0
        tr.agree_count += 1
        if tr.name == cand or m.distance > t:
            return  # a face over the threshold agrees, but names nobody
        # An unnamed track takes a clear face's word at once; a named one changes its name only
        # when agree_frames faces in a row say so (a face of the track that matches someone else
        # is shown unknown meanwhile: it agrees with neither).
        if (tr.name is None and self.clear(m, quality)) or tr.agree_count >= r.agree_frames:
            tr.name, tr.named_at = cand, tr.hits

    def cut(self, t: float) -> list[Event]:
        """A scene cut: whoever is in the new picture is someone to recognise afresh."""
        return self.flush(t)

    def flush(self, t: float) -> list[Event]:
        """End of stream: close every track."""
        events: list[Event] = []
        for tr in list(self.tracks.values()):
            events.extend(self._close(tr))
        return events

    def _announce(self, tr: _Track, t: float) -> list[Event]:
        if tr.name is not None and tr.name != tr.announced_name:
            tr.announced_name = tr.name
            return [self._event("track_confirmed", tr, tr.name)]
        if (
            tr.name is None
            and not tr.unknown_announced
            and tr.announced_name is None
            and tr.hits >= self.rules.unknown_frames
            and t - tr.first_seen >= self.rules.unknown_seconds
        ):
            tr.unknown_announced = True
            return [self._event("unknown_persists", tr, None)]
        return []

    def _close(self, tr: _Track) -> list[Event]:
        del self.tracks[tr.id]
        # Tracks never announced were too short to matter (a false detection, a passer-by's blur).
        return [self._event("track_left", tr, tr.name)] if tr.announced else []

    def _event(self, kind: str, tr: _Track, name: str | None) -> Event:
        if name is None:  # an unknown track: report the nearest anything got
            best = min(tr.best.values(), default=math.inf)
        else:
            best = tr.best.get(name, math.inf)
        return Event(kind, self.camera, tr.id, name, tr.first_seen, tr.last_seen, best, tr.named_at, tr.hits)


def count_flips(names: Iterable[str | None]) -> int:
    """Name changes of one track after it was first named (None -> A at the start is no flip;
    A -> B, A -> None and None -> A after that each count)."""
    flips, named, prev = 0, False, None
    for n in names:
        if named and n != prev:
            flips += 1
        named = named or n is not None
        prev = n
    return flips


def flips_per_track(records: Iterable[tuple[int, str | None]]) -> dict[int, int]:
    """records: (track, name) per face in frame order -> flips per track."""
    per: dict[int, list[str | None]] = {}
    for track, name in records:
        per.setdefault(track, []).append(name)
    return {t: count_flips(ns) for t, ns in per.items()}
