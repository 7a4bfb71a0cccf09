"""Negative samples: "this face is not NAME" (`facestream gallery reject NAME CROP_OR_ID`).

A rejection stores, for one person and model, the embedding of a face that was wrongly taken for
them (from a crop or photo file, or the stored faces of an unknown identity) with its crop. The
Matcher vetoes a face whose candidate is that person when the face is nearer to one of the person's
rejected faces than to any of the person's own samples: it comes out as nobody (no name, no
candidate), so neither a decision nor the tracker's near-threshold agreement can name it NAME.

Table (created on first use; older readers never look at it), in the gallery file:
  rejections  person (deleted with them), model, vector, crop (JPEG, stream.gallery.crops) where
              there is one, source (the file name or unknown id it came from), created
Its triggers bump the gallery's generation, so a running Matcher reloads on a rejection.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

import numpy as np

from stream.errors import FacestreamError
from stream.gallery.store import Gallery, decode_vector, encode_vector

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS rejections (
        id INTEGER PRIMARY KEY,
        person_id INTEGER NOT NULL REFERENCES people(id) ON DELETE CASCADE,
        model TEXT NOT NULL,
        dim INTEGER NOT NULL CHECK (dim > 0),
        vector BLOB NOT NULL CHECK (length(vector) = 4 * dim),
        crop BLOB,
        source TEXT NOT NULL,
        created REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS rejections_person ON rejections(person_id)",
    *(
        f"""CREATE TRIGGER IF NOT EXISTS rejections_{op.lower()}_gen AFTER {op} ON rejections BEGIN
        UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation';
    END"""
        for op in ("INSERT", "DELETE")
    ),
]


def add(
    gallery: Gallery,
    name: str,
    model: str,
    faces: Sequence[tuple[np.ndarray, bytes | None]],
    source: str,
) -> int:
    """Stores (embedding, crop) faces as not being `name`; returns how many."""
    if not faces:
        raise ValueError("a rejection needs faces")
    with gallery.transaction() as c:
        for statement in _SCHEMA:
            c.execute(statement)
        row = c.execute("SELECT id FROM people WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise FacestreamError(f"no person named {name!r} in gallery {gallery.path}")
        for emb, crop in faces:
            vec = np.asarray(emb, np.float32).reshape(-1)
            if not vec.size or not np.all(np.isfinite(vec)):
                raise FacestreamError(f"{source}: the face has no usable embedding")
            c.execute(
                """INSERT INTO rejections(person_id, model, dim, vector, crop, source, created)
                   VALUES (?, ?, ?, ?, ?, ?, ?)""",
                (
                    row[0],
                    model,
                    int(vec.size),
                    sqlite3.Binary(encode_vector(vec)),
                    None if crop is None else sqlite3.Binary(crop),
                    source,
                    time.time(),
                ),
            )
    return len(faces)


def vectors(conn: sqlite3.Connection, model: str) -> dict[int, np.ndarray]:
    """person id -> (K, dim) float32 rejected embeddings of `model` ({} when none were ever made)."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'rejections'"
    ).fetchone()
    if exists is None:
        return {}
    out: dict[int, list[np.ndarray]] = {}
    for pid, dim, blob in conn.execute(
        "SELECT person_id, dim, vector FROM rejections WHERE model = ? ORDER BY id", (model,)
    ):
        out.setdefault(int(pid), []).append(decode_vector(blob, int(dim)))
    return {pid: np.stack(v) for pid, v in out.items()}


def count(conn: sqlite3.Connection, name: str) -> int:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'rejections'"
    ).fetchone()
    if exists is None:
        return 0
    row = conn.execute(
        "SELECT count(*) FROM rejections r JOIN people p ON p.id = r.person_id WHERE p.name = ?", (name,)
    ).fetchone()
    return int(row[0])
