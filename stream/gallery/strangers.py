"""Live clustering of unknown faces in the match stage: strangers who come back get the same id.

Per track the match stage reports each face (its track, whether the track has a name, quality,
embedding). A track that is never named collects its good-quality faces (the tracker's own
`good_quality` gate); once it has `min_faces`, the mean of them is compared with every unknown
identity's appearance: within `join_ratio` x the threshold it is that identity, and its faces are
output with the id (`unknown_returned` when the identity was last seen `returned_gap_s` ago or
more). When the track ends it is stored as one visit of that identity, or founds a new one
(`unknown_visit` says which). A track that got a name at any point is never stored.

Only the `keep_faces` best faces of a visit are kept, and the `max_faces` best of an identity, with a
crop where the frame's pixels reached the match stage (a crop is cut only when a face enters the best
few, so its cost is a handful of small JPEG encodes per track)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stream.gallery.tracking import embedding_distances
from stream.gallery.unknowns import Face, Unknowns, label
from stream.pipeline.config import UnknownsConfig

log = logging.getLogger(__name__)


@dataclass
class _Visit:
    first_seen: float
    total: np.ndarray | None = None  # sum of good embeddings
    good: int = 0
    best: list[Face] = field(default_factory=list)  # the best faces, best first
    named: bool = False
    unknown: int | None = None
    announced: bool = False


class Strangers:
    """Unknown identities of one gallery, for the match stage (all cameras share them)."""

    def __init__(self, gallery: Path, model: str, threshold: float, metric: str, cfg: UnknownsConfig):
        self.cfg = cfg
        self.model = model
        self.threshold = threshold
        self.metric = metric
        self.store = Unknowns.open(gallery, create=True)
        self.visits: dict[tuple[str, int], _Visit] = {}
        self._next_expiry = 0.0
        self._version = int(self.store.conn.execute("PRAGMA data_version").fetchone()[0])
        self.expire(time.time())
        self._load()

    def refresh(self) -> None:
        """Picks up changes other processes made (promote, merge, forget, cluster)."""
        version = int(self.store.conn.execute("PRAGMA data_version").fetchone()[0])
        if version != self._version:
            self._version = version
            self._load()

    def _load(self) -> None:
        self.ids, self.means = self.store.centroids(self.model)
        self.counts = {
            int(u): n
            for u, n in zip(*np.unique(self.store.faces(self.model)[1], return_counts=True), strict=True)
        }
        self.last_seen = {i.id: i.last_seen for i in self.store.all()}

    def expire(self, now: float) -> None:
        if now < self._next_expiry:
            return
        self._next_expiry = now + 3600.0  # retention is in days: hourly checks are plenty
        gone = self.store.expire(self.cfg.retention_days, now)
        if gone:
            log.info(
                "retention: deleted %d unknown identities unseen for %g days",
                len(gone),
                self.cfg.retention_days,
            )
            self._load()

    def close(self) -> None:
        self.store.close()

    def nearest(self, emb: np.ndarray) -> tuple[int | None, float]:
        if not len(self.ids) or self.means.shape[1] != emb.shape[-1]:
            return None, math.inf
        d = embedding_distances(emb.reshape(1, -1), self.means, self.metric)[0]
        k = int(np.argmin(d))
        return int(self.ids[k]), float(d[k])

    def observe(
        self,
        cam: str,
        now: float,
        tracks: np.ndarray,
        named: list[bool],
        emb: np.ndarray | None,
        quality: np.ndarray,
        good_quality: float,
        crop: Any = None,
        reused: np.ndarray | None = None,
    ) -> tuple[list[str | None], list[dict[str, Any]]]:
        """One frame's faces -> the unknown id to output per face, and events. `named`: the face's
        track has a name now; `crop(i)` -> (JPEG, box, landmarks) of face i, or None without pixels;
        `reused[i]`: face i's embedding was carried over from an earlier frame (not a new look, so
        it does not count again)."""
        self.expire(now)
        out: list[str | None] = []
        events: list[dict[str, Any]] = []
        for i, tid in enumerate(tracks.tolist()):
            v = self.visits.setdefault((cam, tid), _Visit(now))
            v.named = v.named or named[i]
            if v.named:
                out.append(None)
                continue
            q = float(quality[i])
            fresh = reused is None or not bool(reused[i])
            good = emb is not None and emb.shape[1] and q >= good_quality
            if fresh and good and emb is not None and np.all(np.isfinite(emb[i])):
                e = np.asarray(emb[i], np.float64)
                v.total = e.copy() if v.total is None else v.total + e
                v.good += 1
                self._keep(v, Face(np.asarray(emb[i], np.float32), q, now), i, crop)
                if v.good >= self.cfg.min_faces:
                    uid, d = self.nearest(v.total / v.good)
                    v.unknown = uid if d <= self.cfg.join_ratio * self.threshold else None
                    if v.unknown is not None and not v.announced:
                        v.announced = True
                        away = now - self.last_seen.get(v.unknown, now)
                        if away >= self.cfg.returned_gap_s:
                            events.append(
                                self._event("unknown_returned", cam, tid, v.unknown, away_s=round(away, 3))
                            )
            out.append(None if v.unknown is None else label(v.unknown))
        return out, events

    def _keep(self, v: _Visit, face: Face, i: int, crop: Any) -> None:
        k = self.cfg.keep_faces
        if len(v.best) >= k and face.quality <= v.best[-1].quality:
            return
        if crop is not None:
            got = crop(i)
            if got is not None:
                face.crop, face.box, face.landmarks = got
        v.best.append(face)
        v.best.sort(key=lambda f: -f.quality)
        del v.best[k:]

    def ended(self, cam: str, tids: list[int], now: float) -> list[dict[str, Any]]:
        """Tracks that ended: unknown ones with enough good faces become a visit."""
        events = []
        for tid in tids:
            v = self.visits.pop((cam, tid), None)
            if v is None or v.named or v.good < self.cfg.min_faces or v.total is None:
                continue
            join = v.unknown
            if join is not None and join not in self.ids:
                join = None  # merged or forgotten meanwhile (`facestream unknowns`): look again
            if join is None:  # the appearance may have come near an identity founded meanwhile
                uid, d = self.nearest(v.total / v.good)
                join = uid if d <= self.cfg.join_ratio * self.threshold else None
            uid = self.store.add_visit(self.model, cam, v.best, join, keep=self.cfg.max_faces)
            self._learn(uid, v.best)
            self.last_seen[uid] = max(self.last_seen.get(uid, 0.0), max(f.seen for f in v.best), now)
            events.append(self._event("unknown_visit", cam, tid, uid, new=join is None or join != uid))
        return events

    def end_camera(self, cam: str, now: float) -> list[dict[str, Any]]:
        return self.ended(cam, [t for c, t in self.visits if c == cam], now)

    def _learn(self, uid: int, faces: list[Face]) -> None:
        """The in-memory appearance of `uid` takes the new faces (the same mean the store computes)."""
        vecs = np.stack([f.embedding for f in faces]).astype(np.float64)
        n = self.counts.get(uid, 0)
        if n + len(vecs) > self.cfg.max_faces:  # the store kept the best max_faces: their mean
            _, _, kept = self.store.faces(self.model, uid)
            mean, total = kept.astype(np.float64).mean(axis=0), len(kept)
        else:
            mean = (
                (self.means[self.ids == uid][0] * n + vecs.sum(axis=0)) / (n + len(vecs))
                if n
                else vecs.mean(0)
            )
            total = n + len(vecs)
        hit = np.nonzero(self.ids == uid)[0]
        if len(hit):
            self.means[int(hit[0])] = mean
        else:
            row = mean.reshape(1, -1).astype(np.float32)
            self.means = row if not len(self.ids) else np.vstack([self.means, row])
            self.ids = np.append(self.ids, uid)
        self.counts[uid] = total

    def _event(self, kind: str, cam: str, tid: int, uid: int, **extra: Any) -> dict[str, Any]:
        return {"type": kind, "camera": cam, "track": tid, "name": None, "unknown": label(uid), **extra}
