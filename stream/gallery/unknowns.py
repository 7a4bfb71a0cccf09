"""Unknown identities: strangers who come back, kept in the gallery file next to the people.

Tables (created on first use; older readers of the gallery never look at them):
  unknowns       one row per unknown identity: `unknown-<id>` (ids never reused: AUTOINCREMENT),
                 first/last seen (wall clock), visits, cameras (JSON list)
  unknown_faces  the good-quality faces that made it: per model embedding, quality, when, which
                 camera and visit, and the face's crop (stream.gallery.crops) where the match stage
                 had the pixels; at most `match.unknowns.max_faces` per identity and model (the best)

An identity's appearance is the mean of its faces' embeddings for the model. The file keeps the
gallery's 0600 mode (Gallery.open); the triggers that make a running Matcher reload do not fire
for these tables, so a stranger's visit never reloads the gallery.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stream.errors import FacestreamError
from stream.gallery.store import Gallery, _inserted, decode_vector, encode_vector

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS unknowns (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        visits INTEGER NOT NULL,
        cameras TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS unknown_faces (
        id INTEGER PRIMARY KEY,
        unknown_id INTEGER NOT NULL REFERENCES unknowns(id) ON DELETE CASCADE,
        model TEXT NOT NULL,
        dim INTEGER NOT NULL CHECK (dim > 0),
        vector BLOB NOT NULL CHECK (length(vector) = 4 * dim),
        quality REAL NOT NULL,
        seen REAL NOT NULL,
        camera TEXT NOT NULL,
        visit REAL NOT NULL,        -- the visit's start: faces of one track share it
        crop BLOB,                  -- JPEG (crops.py) or NULL where no pixels reached the match stage
        box TEXT,                   -- JSON box in the crop's coordinates
        landmarks TEXT              -- JSON [[x, y] * 5] in the crop's coordinates
    )""",
    "CREATE INDEX IF NOT EXISTS unknown_faces_id ON unknown_faces(unknown_id)",
]
_LABEL = re.compile(r"unknown-([1-9][0-9]{0,17})")


def label(uid: int) -> str:
    return f"unknown-{uid}"


def parse_label(text: str) -> int:
    """`unknown-17` -> 17; anything else is a one-line error."""
    m = _LABEL.fullmatch(text.strip())
    if m is None:
        raise FacestreamError(f"{text!r} is not an unknown id (they look like unknown-17)")
    return int(m.group(1))


@dataclass
class Face:
    """One good-quality face of an unknown track."""

    embedding: np.ndarray
    quality: float
    seen: float
    crop: bytes | None = None
    box: list[float] | None = None  # in the crop
    landmarks: list[list[float]] | None = None  # in the crop


@dataclass
class UnknownInfo:
    id: int
    first_seen: float
    last_seen: float
    visits: int
    cameras: list[str]
    faces: int = 0
    crops: int = 0
    models: dict[str, int] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return label(self.id)

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.label,
            "first_seen": round(self.first_seen, 3),
            "last_seen": round(self.last_seen, 3),
            "visits": self.visits,
            "cameras": self.cameras,
            "faces": self.faces,
            "crops": self.crops,
            "models": self.models,
        }


class Unknowns:
    """The unknown identities of one gallery file."""

    def __init__(self, gallery: Gallery):
        self.gallery = gallery
        self.conn = gallery.conn
        # Deleted faces are biometric data: SQLite overwrites their freed pages instead of leaving
        # them readable in the file.
        self.conn.execute("PRAGMA secure_delete = ON")
        with gallery.transaction() as c:
            for statement in _SCHEMA:
                c.execute(statement)

    @classmethod
    def open(cls, path: str | Path, create: bool = True) -> Unknowns:
        gallery = Gallery.open(path, create=create)
        try:
            return cls(gallery)
        except BaseException:
            gallery.close()
            raise

    def close(self) -> None:
        self.gallery.close()

    def __enter__(self) -> Unknowns:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- reading -----------------------------------------------------------------------------
    def all(self) -> list[UnknownInfo]:
        infos = {
            uid: UnknownInfo(uid, first, last, visits, json.loads(cams))
            for uid, first, last, visits, cams in self.conn.execute(
                "SELECT id, first_seen, last_seen, visits, cameras FROM unknowns ORDER BY id"
            )
        }
        for uid, model, n, crops in self.conn.execute(
            "SELECT unknown_id, model, count(*), count(crop) FROM unknown_faces GROUP BY unknown_id, model"
        ):
            if uid in infos:
                infos[uid].faces += n
                infos[uid].crops += crops
                infos[uid].models[model] = n
        return list(infos.values())

    def get(self, uid: int) -> UnknownInfo:
        for info in self.all():
            if info.id == uid:
                return info
        raise FacestreamError(f"no {label(uid)} in gallery {self.gallery.path}")

    def faces(self, model: str, uid: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(face row ids, unknown ids, vectors (N, dim) float32) of one model's faces."""
        where, args = (
            ("model = ?", (model,)) if uid is None else ("model = ? AND unknown_id = ?", (model, uid))
        )
        rows = self.conn.execute(
            f"SELECT id, unknown_id, dim, vector FROM unknown_faces WHERE {where} ORDER BY id", args
        ).fetchall()
        if not rows:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        vecs = np.stack([decode_vector(r[3], r[2]) for r in rows])
        return np.array([r[0] for r in rows], np.int64), np.array([r[1] for r in rows], np.int64), vecs

    def samples(self, uid: int, model: str) -> list[tuple[np.ndarray, bytes | None]]:
        """(embedding, crop or None) of the identity's faces of one model."""
        self.get(uid)
        rows = self.conn.execute(
            "SELECT dim, vector, crop FROM unknown_faces WHERE unknown_id = ? AND model = ? ORDER BY id",
            (uid, model),
        ).fetchall()
        return [(decode_vector(v, d), None if c is None else bytes(c)) for d, v, c in rows]

    def centroids(self, model: str) -> tuple[np.ndarray, np.ndarray]:
        """(unknown ids, mean embedding of each) for one model."""
        _, owners, vecs = self.faces(model)
        if not len(owners):
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        ids = np.unique(owners)
        means = np.stack([vecs[owners == u].mean(axis=0) for u in ids]).astype(np.float32)
        return ids, means

    def crops(self, uid: int) -> list[tuple[bytes, list[float], list[list[float]], float]]:
        """(crop JPEG, box, landmarks, quality) of the identity's faces that have a crop, best first."""
        self.get(uid)
        rows = self.conn.execute(
            """SELECT crop, box, landmarks, quality FROM unknown_faces
               WHERE unknown_id = ? AND crop IS NOT NULL ORDER BY quality DESC, id""",
            (uid,),
        ).fetchall()
        return [(bytes(c), json.loads(b), json.loads(lm), float(q)) for c, b, lm, q in rows]

    # ----- writing -----------------------------------------------------------------------------
    def add_visit(
        self, model: str, camera: str, faces: list[Face], join: int | None, keep: int | None = None
    ) -> int:
        """Stores one visit (a track's faces) into `join`, or into a new identity; returns its id.
        `keep`: the identity keeps at most this many faces of the model, the best (then the newest)."""
        if not faces:
            raise ValueError("a visit needs faces")
        first = min(f.seen for f in faces)
        last = max(f.seen for f in faces)
        with self.gallery.transaction() as c:
            row = (
                None
                if join is None
                else c.execute(
                    "SELECT first_seen, last_seen, cameras FROM unknowns WHERE id = ?", (join,)
                ).fetchone()
            )
            if row is None:  # a new stranger (or the one to join was forgotten meanwhile)
                uid = _inserted(
                    c.execute(
                        "INSERT INTO unknowns(first_seen, last_seen, visits, cameras) VALUES (?, ?, 1, ?)",
                        (first, last, json.dumps([camera])),
                    )
                )
            else:
                uid = int(join)  # type: ignore[arg-type]  # row is not None only when join is
                cams = json.loads(row[2])
                cams = cams if camera in cams else [*cams, camera]
                c.execute(
                    """UPDATE unknowns SET first_seen = ?, last_seen = ?, visits = visits + 1,
                       cameras = ? WHERE id = ?""",
                    (min(row[0], first), max(row[1], last), json.dumps(cams), uid),
                )
            for f in faces:
                vec = np.asarray(f.embedding, np.float32).reshape(-1)
                if not np.all(np.isfinite(vec)):
                    continue
                c.execute(
                    """INSERT INTO unknown_faces(unknown_id, model, dim, vector, quality, seen, camera,
                       visit, crop, box, landmarks) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                    (
                        uid,
                        model,
                        int(vec.size),
                        sqlite3.Binary(encode_vector(vec)),
                        float(f.quality),
                        float(f.seen),
                        camera,
                        first,
                        None if f.crop is None else sqlite3.Binary(f.crop),
                        None if f.box is None else json.dumps(f.box),
                        None if f.landmarks is None else json.dumps(f.landmarks),
                    ),
                )
            if keep is not None:
                c.execute(
                    """DELETE FROM unknown_faces WHERE id IN (
                           SELECT id FROM unknown_faces WHERE unknown_id = ? AND model = ?
                           ORDER BY quality DESC, seen DESC, id DESC LIMIT -1 OFFSET ?)""",
                    (uid, model, int(keep)),
                )
        return uid

    def forget(self, uid: int) -> int:
        """Deletes an identity with its crops and embeddings for good; returns how many faces went."""
        with self.gallery.transaction() as c:
            if c.execute("SELECT 1 FROM unknowns WHERE id = ?", (uid,)).fetchone() is None:
                raise FacestreamError(f"no {label(uid)} in gallery {self.gallery.path}")
            n = int(
                c.execute("SELECT count(*) FROM unknown_faces WHERE unknown_id = ?", (uid,)).fetchone()[0]
            )
            c.execute("DELETE FROM unknowns WHERE id = ?", (uid,))
        self._reclaim()
        return n

    def merge(self, keep: int, other: int) -> None:
        """`other`'s faces and visits join `keep`; `other` is gone."""
        if keep == other:
            raise FacestreamError(f"cannot merge {label(keep)} with itself")
        a, b = self.get(keep), self.get(other)
        with self.gallery.transaction() as c:
            c.execute("UPDATE unknown_faces SET unknown_id = ? WHERE unknown_id = ?", (keep, other))
            cams = a.cameras + [x for x in b.cameras if x not in a.cameras]
            c.execute(
                "UPDATE unknowns SET first_seen = ?, last_seen = ?, visits = ?, cameras = ? WHERE id = ?",
                (
                    min(a.first_seen, b.first_seen),
                    max(a.last_seen, b.last_seen),
                    a.visits + b.visits,
                    json.dumps(cams),
                    keep,
                ),
            )
            c.execute("DELETE FROM unknowns WHERE id = ?", (other,))

    def expire(self, days: float, now: float | None = None) -> list[int]:
        """Deletes identities not seen for `days` (and their faces); returns their ids."""
        cutoff = (time.time() if now is None else now) - days * 86400.0
        with self.gallery.transaction() as c:
            gone = [r[0] for r in c.execute("SELECT id FROM unknowns WHERE last_seen < ?", (cutoff,))]
            c.execute("DELETE FROM unknowns WHERE last_seen < ?", (cutoff,))
        if gone:
            self._reclaim()
        return gone

    def regroup(self, model: str, face_ids: np.ndarray, groups: np.ndarray) -> dict[int, int]:
        """Offline re-clustering: faces `face_ids` of `model` go to new identities by `groups` (one
        label per face). A group keeps the id of the identity most of its faces came from where that
        id is still free; identities left without faces are deleted. Returns {group: identity id}."""
        rows = self.conn.execute(
            "SELECT id, unknown_id, seen, camera, visit FROM unknown_faces WHERE model = ?", (model,)
        ).fetchall()
        info = {r[0]: r[1:] for r in rows}
        assignment: dict[int, int] = {}
        with self.gallery.transaction() as c:
            taken: set[int] = set()
            for g in sorted(set(int(x) for x in groups), key=lambda g: -int((groups == g).sum())):
                members = [int(f) for f, x in zip(face_ids, groups, strict=True) if int(x) == g]
                olds = [info[f][0] for f in members]
                best = max(set(olds) - taken, key=olds.count, default=None)
                seen = [info[f][1] for f in members]
                cams = sorted({info[f][2] for f in members})
                visits = len({(info[f][2], info[f][3]) for f in members})
                if best is None:
                    best = _inserted(
                        c.execute(
                            "INSERT INTO unknowns(first_seen, last_seen, visits, cameras) VALUES (?, ?, ?, ?)",
                            (min(seen), max(seen), visits, json.dumps(cams)),
                        )
                    )
                else:
                    c.execute(
                        "UPDATE unknowns SET first_seen = ?, last_seen = ?, visits = ?, cameras = ? WHERE id = ?",
                        (min(seen), max(seen), visits, json.dumps(cams), best),
                    )
                taken.add(best)
                c.executemany(
                    "UPDATE unknown_faces SET unknown_id = ? WHERE id = ?", [(best, f) for f in members]
                )
                assignment[g] = best
            c.execute("DELETE FROM unknowns WHERE id NOT IN (SELECT DISTINCT unknown_id FROM unknown_faces)")
        return assignment

    def _reclaim(self) -> None:
        # ... and the WAL still holds the old pages until a checkpoint: truncate it now.
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
