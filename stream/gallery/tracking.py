"""Per-camera face tracks and per-track identity voting, so names do not flicker frame to frame.

Association: greedy on IoU (best pairs first), then greedy on centre distance for what is left
(fast motion or dropped frames make boxes stop overlapping). Each face then votes for the name its
Match gave (or for "unknown"), weighted by face size (small faces are less reliable) and by its
margin to the threshold (a face just under the threshold says little). Votes accumulate over the
track's life: a track is one physical person, so more evidence only ever sharpens the answer.

A track gets a name when that name leads the weighted vote, has at least `min_votes` faces, and
is strictly ahead of the runner-up; a tie, or unknown leading, is unknown.

Events: "track_confirmed" (a track gets a name, or a different one), "unknown_persists" (a track
stays unknown for `unknown_frames` faces and `unknown_seconds`), "track_left" (an announced track is
not seen for `max_missed` updates or `max_age_s` seconds, or the stream ends).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream.gallery.matcher import Match


@dataclass
class TrackedFace:
    track: int
    name: str | None  # the track's voted name, not this frame's match
    distance: float  # this frame's match distance


@dataclass
class Event:
    type: str  # "track_confirmed" | "track_left" | "unknown_persists"
    camera: str
    track: int
    name: str | None
    first_seen: float
    last_seen: float
    best_distance: float | None

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
        }


@dataclass
class _Votes:
    count: int = 0
    weight: float = 0.0
    best_distance: float = math.inf


@dataclass
class _Track:
    id: int
    box: np.ndarray
    first_seen: float
    last_seen: float
    hits: int = 0
    missed: int = 0
    name: str | None = None
    announced_name: str | None = None  # last name a track_confirmed event carried
    unknown_announced: bool = False
    votes: dict[str | None, _Votes] = field(default_factory=dict)

    @property
    def announced(self) -> bool:
        return self.announced_name is not None or self.unknown_announced


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


def _greedy(score: np.ndarray, ok: np.ndarray, larger_better: bool) -> list[tuple[int, int]]:
    """Pairs (row, col) taken best-first among allowed cells, each row and column used once."""
    rows, cols = np.nonzero(ok)
    order = np.argsort(-score[rows, cols] if larger_better else score[rows, cols], kind="stable")
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


class FaceTracker:
    """Tracks faces of one camera and votes each track's identity. Feed it every processed frame
    (also frames with no faces) in time order."""

    def __init__(
        self,
        camera: str,
        threshold: float,
        min_votes: int = 3,
        max_missed: int = 12,
        max_age_s: float = 3.0,
        iou_min: float = 0.3,
        centre_max: float = 0.75,
        unknown_frames: int = 10,
        unknown_seconds: float = 1.0,
        ref_face_px: float = 100.0,
        full_margin: float = 0.25,
    ):
        self.camera = camera
        self.threshold = float(threshold)
        self.min_votes = min_votes
        self.max_missed = max_missed
        self.max_age_s = max_age_s
        self.iou_min = iou_min
        self.centre_max = centre_max  # centre distance / track box size, for the fallback pass
        self.unknown_frames = unknown_frames
        self.unknown_seconds = unknown_seconds
        self.ref_face_px = ref_face_px  # faces this big (sqrt of area) or bigger vote fully
        self.full_margin = full_margin  # relative margin to the threshold that votes fully
        self.tracks: dict[int, _Track] = {}
        self._next_id = 1

    # ----- voting ----------------------------------------------------------------------------
    def vote_weight(self, box: np.ndarray, distance: float) -> float:
        w = max(float(box[2] - box[0]), 0.0)
        h = max(float(box[3] - box[1]), 0.0)
        size_w = min(max(math.sqrt(w * h) / self.ref_face_px, 0.1), 1.0)
        if not math.isfinite(distance):
            return size_w  # empty gallery: certainly unknown
        margin = abs(self.threshold - distance) / max(self.threshold, 1e-9)
        margin_w = min(max(margin / self.full_margin, 0.05), 1.0)
        return size_w * margin_w

    def _decide(self, track: _Track) -> str | None:
        if not track.votes:
            return None
        ranked = sorted(track.votes.items(), key=lambda kv: kv[1].weight, reverse=True)
        leader, top = ranked[0]
        if leader is None or top.count < self.min_votes:
            return None
        if len(ranked) > 1 and math.isclose(ranked[1][1].weight, top.weight, rel_tol=1e-9):
            return None  # a tie is unknown
        return leader

    # ----- association -----------------------------------------------------------------------
    def _associate(self, boxes: np.ndarray) -> dict[int, int]:
        """detection index -> track id."""
        ids = list(self.tracks)
        if not ids or len(boxes) == 0:
            return {}
        tboxes = np.stack([self.tracks[i].box for i in ids])
        iou = iou_matrix(tboxes, boxes)
        pairs = _greedy(iou, iou >= self.iou_min, larger_better=True)
        taken_t = {r for r, _ in pairs}
        taken_d = {c for _, c in pairs}
        free_t = [r for r in range(len(ids)) if r not in taken_t]
        free_d = [c for c in range(len(boxes)) if c not in taken_d]
        if free_t and free_d:
            tb, db = tboxes[free_t], boxes[free_d]
            tc = (tb[:, :2] + tb[:, 2:]) / 2
            dc = (db[:, :2] + db[:, 2:]) / 2
            tsize = np.maximum(tb[:, 2:] - tb[:, :2], 1.0).max(axis=1)
            dsize = np.maximum(db[:, 2:] - db[:, :2], 1.0).max(axis=1)
            dist = np.linalg.norm(tc[:, None, :] - dc[None, :, :], axis=2) / tsize[:, None]
            ratio = dsize[None, :] / tsize[:, None]
            ok = (dist <= self.centre_max) & (ratio > 0.5) & (ratio < 2.0)
            for r, c in _greedy(dist, ok, larger_better=False):
                pairs.append((free_t[r], free_d[c]))
        return {c: ids[r] for r, c in pairs}

    # ----- frames ----------------------------------------------------------------------------
    def update(
        self, t: float, boxes: np.ndarray, matches: Sequence[Match]
    ) -> tuple[list[TrackedFace], list[Event]]:
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        if len(boxes) != len(matches):
            raise ValueError(f"{len(boxes)} boxes but {len(matches)} matches")
        events: list[Event] = []
        assigned = self._associate(boxes)
        seen: set[int] = set()
        out: list[TrackedFace] = []
        for i, (box, m) in enumerate(zip(boxes, matches, strict=True)):
            tid = assigned.get(i)
            if tid is None:
                tid = self._next_id
                self._next_id += 1
                self.tracks[tid] = _Track(tid, box, first_seen=t, last_seen=t)
            tr = self.tracks[tid]
            seen.add(tid)
            tr.box, tr.last_seen, tr.missed = box, t, 0
            tr.hits += 1
            v = tr.votes.setdefault(m.name, _Votes())
            v.count += 1
            v.weight += self.vote_weight(box, m.distance)
            v.best_distance = min(v.best_distance, m.distance)
            tr.name = self._decide(tr)
            events.extend(self._announce(tr, t))
            out.append(TrackedFace(tid, tr.name, float(m.distance)))
        for tid in list(self.tracks):
            if tid in seen:
                continue
            tr = self.tracks[tid]
            tr.missed += 1
            if tr.missed > self.max_missed or t - tr.last_seen > self.max_age_s:
                events.extend(self._close(tr))
        return out, events

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
            and tr.hits >= self.unknown_frames
            and t - tr.first_seen >= self.unknown_seconds
        ):
            tr.unknown_announced = True
            return [self._event("unknown_persists", tr, None)]
        return []

    def _close(self, tr: _Track) -> list[Event]:
        del self.tracks[tr.id]
        # Tracks never announced were too short to matter (a false detection, a passer-by's blur).
        return [self._event("track_left", tr, tr.name)] if tr.announced else []

    def _event(self, kind: str, tr: _Track, name: str | None) -> Event:
        v = tr.votes.get(name)
        if v is None:  # an unknown track: report the nearest anything got
            best = min((x.best_distance for x in tr.votes.values()), default=math.inf)
        else:
            best = v.best_distance
        return Event(kind, self.camera, tr.id, name, tr.first_seen, tr.last_seen, best)


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
