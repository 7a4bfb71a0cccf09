"""The gallery: an SQLite file (WAL) of people, their face samples and per-model embeddings.

Layout (schema version 1):
  meta            key/value: app, schema_version, generation (bumped by triggers on every change)
  people          one row per enrolled name
  samples         one face per source photo: source sha256, box + landmarks in the photo, and a
                  normalised crop of the face with a generous margin (JPEG) so that the gallery can
                  be re-embedded for another model without the original photos
  embeddings      (sample, model) -> float32 vector; samples of one model never meet another's
  model_settings  per-model calibrated threshold (`facestream eval --set-threshold`)

Every write is one transaction, so a killed process leaves each sample either whole or absent.
The file (and its -wal/-shm companions) is created 0600: embeddings are biometric data.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stream.errors import FacestreamError

SCHEMA_VERSION = 1
APP_NAME = "facestream-gallery"
# PRAGMA application_id lives in the file header: lets us reject other SQLite files cheaply.
APPLICATION_ID = 0x46534731  # "FSG1"
MAX_NAME_LEN = 128

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE people (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created REAL NOT NULL
);
CREATE TABLE samples (
    id INTEGER PRIMARY KEY,
    person_id INTEGER NOT NULL REFERENCES people(id) ON DELETE CASCADE,
    source_sha256 TEXT NOT NULL,
    source_name TEXT NOT NULL,
    box TEXT NOT NULL,          -- JSON [x1, y1, x2, y2] in the source photo
    landmarks TEXT NOT NULL,    -- JSON [[x, y] * 5] in the source photo
    crop BLOB NOT NULL,         -- JPEG of the face with a generous margin (crops.py)
    crop_origin TEXT NOT NULL,  -- JSON [x0, y0, scale]: crop px = (photo px - origin) * scale
    created REAL NOT NULL
);
CREATE INDEX samples_person ON samples(person_id);
CREATE INDEX samples_sha ON samples(source_sha256);
CREATE TABLE embeddings (
    sample_id INTEGER NOT NULL REFERENCES samples(id) ON DELETE CASCADE,
    model TEXT NOT NULL,
    dim INTEGER NOT NULL CHECK (dim > 0),
    vector BLOB NOT NULL CHECK (length(vector) = 4 * dim),  -- little-endian float32
    created REAL NOT NULL,
    PRIMARY KEY (sample_id, model)
);
CREATE INDEX embeddings_model ON embeddings(model);
CREATE TABLE model_settings (
    model TEXT PRIMARY KEY,
    threshold REAL NOT NULL,
    source TEXT NOT NULL,       -- what calibrated it (e.g. the pairs file)
    updated REAL NOT NULL
);
"""

# A change counter maintained by the database itself, so no write path can forget to bump it:
# a running Matcher polls one row to learn whether it must reload.
_TRIGGERS = "\n".join(
    f"""CREATE TRIGGER {table}_{op.lower()}_gen AFTER {op} ON {table} BEGIN
    UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation';
END;"""
    for table in ("people", "samples", "embeddings", "model_settings")
    for op in ("INSERT", "UPDATE", "DELETE")
)


def _statements(script: str) -> list[str]:
    # executescript() would COMMIT first; split so the schema is created inside our transaction.
    out, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            out.append(current.strip())
            current = ""
    return out


def validate_name(name: str) -> str:
    """A person's name becomes a label in outputs and a folder name in exports: keep it printable
    and free of path syntax."""
    if not isinstance(name, str) or not name.strip():
        raise FacestreamError("a person's name must not be empty")
    if name != name.strip():
        raise FacestreamError(f"name {name!r} has leading or trailing spaces")
    if len(name) > MAX_NAME_LEN:
        raise FacestreamError(f"name {name[:20]!r}... is longer than {MAX_NAME_LEN} characters")
    if "/" in name or "\\" in name or name in (".", ".."):
        raise FacestreamError(f"name {name!r} must not contain path characters (/ \\ or be . / ..)")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn") for c in name):
        raise FacestreamError(f"name {name!r} contains control or unprintable characters")
    return name


def _inserted(cur: sqlite3.Cursor) -> int:
    """The id of the row an INSERT just made (lastrowid is None only when no row was inserted)."""
    if cur.lastrowid is None:
        raise RuntimeError("INSERT made no row")
    return cur.lastrowid


def encode_vector(vec: np.ndarray) -> bytes:
    return np.ascontiguousarray(vec, dtype="<f4").reshape(-1).tobytes()


def decode_vector(blob: bytes, dim: int) -> np.ndarray:
    if len(blob) != 4 * dim:
        raise FacestreamError(f"corrupt embedding in gallery: {len(blob)} bytes for dim {dim}")
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


@dataclass
class NewSample:
    """One face to store: where it came from, where it was, its crop and its embedding."""

    source_sha256: str
    source_name: str
    box: Sequence[float]
    landmarks: np.ndarray  # (5, 2) in the source photo
    crop_image: bytes
    crop_origin: tuple[float, float, float]  # x0, y0, scale
    embedding: np.ndarray  # (dim,)


@dataclass
class StoredSample:
    id: int
    person: str
    source_sha256: str
    source_name: str
    box: list[float]
    landmarks: np.ndarray
    crop_image: bytes
    crop_origin: tuple[float, float, float]


@dataclass
class PersonInfo:
    id: int
    name: str
    samples: int
    models: dict[str, int]  # model -> number of samples embedded with it
    created: float


@contextlib.contextmanager
def _private_umask() -> Iterator[None]:
    # sqlite creates -wal/-shm itself; with umask 077 they cannot come out group/world readable.
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


class Gallery:
    """An open gallery file. `Gallery.open(path, create=True)` for writers (enroll), `create=False`
    for readers (identify, matcher). Not shared between threads."""

    def __init__(self, path: Path, conn: sqlite3.Connection):
        self.path = path
        self.conn = conn

    # ----- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, create: bool = False) -> Gallery:
        path = Path(path)
        created = False
        if path.is_dir():
            raise FacestreamError(f"{path} is a directory, not a facestream gallery")
        if not path.exists():
            if not create:
                raise FacestreamError(f"gallery {path} does not exist (enroll someone to create it)")
            if not path.parent.is_dir():
                raise FacestreamError(f"cannot create gallery {path}: folder {path.parent} does not exist")
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
                os.close(fd)
                created = True
            except FileExistsError:
                pass  # another process created it a moment ago; open it as an existing file
            except OSError as e:
                raise FacestreamError(f"cannot create gallery {path}: {e.strerror}") from None
        # The file is never opened here other than through SQLite, not even to peek at its header:
        # closing any descriptor of a file drops every POSIX lock this process holds on it, so a
        # peek would silently unlock a connection this process already has open (the matcher, when
        # the match stage opens the gallery again for unknown identities). Another process's
        # connection, closing, then takes itself for the last one, checkpoints and deletes the WAL
        # under ours: "database disk image is malformed" (tests/gallery/test_gallery_processes.py).
        with _private_umask():
            try:
                conn = sqlite3.connect(str(path), timeout=10.0, isolation_level=None, check_same_thread=False)
            except sqlite3.Error as e:
                raise FacestreamError(f"cannot open gallery {path} ({e})") from None
            try:
                conn.execute("PRAGMA foreign_keys = ON")
                conn.execute("PRAGMA busy_timeout = 10000")
                if created or path.stat().st_size == 0:
                    os.chmod(path, 0o600)  # an empty file someone else made: private before data lands
                    cls._init_schema(conn, path)
                elif conn.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
                    # Read by SQLite (a file that is no database fails here): nothing is written
                    # to another program's file, not even the journal mode.
                    raise FacestreamError(f"{path} is not a facestream gallery")
                # Touching the WAL here (inside the umask) creates -wal/-shm privately.
                conn.execute("PRAGMA journal_mode = WAL")
                # FULL: a committed enrollment survives power loss too, not only a killed process.
                conn.execute("PRAGMA synchronous = FULL")
            except sqlite3.DatabaseError as e:
                conn.close()
                raise FacestreamError(f"{path} is not a facestream gallery ({e})") from None
            except BaseException:
                conn.close()
                raise
        gallery = cls(path, conn)
        try:
            gallery._check_schema()
        except BaseException:
            conn.close()
            raise
        return gallery

    @staticmethod
    def _init_schema(conn: sqlite3.Connection, path: Path) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Two processes may race to initialise an empty file: only the first one does.
            if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                conn.execute("ROLLBACK")
                return
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            for statement in _statements(_SCHEMA + _TRIGGERS):
                conn.execute(statement)
            conn.executemany(
                "INSERT INTO meta(key, value) VALUES (?, ?)",
                [
                    ("app", APP_NAME),
                    ("schema_version", str(SCHEMA_VERSION)),
                    ("generation", "0"),
                    ("created", str(time.time())),
                ],
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _check_schema(self) -> None:
        not_ours = FacestreamError(f"{self.path} is not a facestream gallery")
        try:
            app_id = self.conn.execute("PRAGMA application_id").fetchone()[0]
            if app_id != APPLICATION_ID:
                raise not_ours
            meta = dict(self.conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError:
            raise not_ours from None
        if meta.get("app") != APP_NAME:
            raise not_ours
        try:
            version = int(meta.get("schema_version", ""))
        except ValueError:
            raise not_ours from None
        if version > SCHEMA_VERSION:
            raise FacestreamError(
                f"{self.path} is a gallery of a newer facestream (schema {version}; "
                f"this version reads up to {SCHEMA_VERSION})"
            )

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front so two writers queue instead
        of failing half-way; any exception rolls everything back."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    # ----- reading -------------------------------------------------------------------------
    def generation(self) -> int:
        """Bumped by every committed change (triggers); cheap enough to poll."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(row[0])

    def people(self) -> list[PersonInfo]:
        rows = self.conn.execute(
            """SELECT p.id, p.name, p.created,
                      (SELECT count(*) FROM samples s WHERE s.person_id = p.id)
               FROM people p ORDER BY p.name"""
        ).fetchall()
        per_model: dict[int, dict[str, int]] = {}
        for pid, model, n in self.conn.execute(
            """SELECT s.person_id, e.model, count(*) FROM embeddings e
               JOIN samples s ON s.id = e.sample_id GROUP BY s.person_id, e.model ORDER BY e.model"""
        ):
            per_model.setdefault(pid, {})[model] = n
        return [PersonInfo(pid, name, n, per_model.get(pid, {}), created) for pid, name, created, n in rows]

    def person_id(self, name: str) -> int | None:
        row = self.conn.execute("SELECT id FROM people WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def models(self) -> dict[str, int]:
        """Model name -> number of embedded samples."""
        return dict(self.conn.execute("SELECT model, count(*) FROM embeddings GROUP BY model ORDER BY model"))

    def find_source(self, sha256: str) -> str | None:
        """The name of whoever was enrolled from a file with this hash, if anyone."""
        row = self.conn.execute(
            "SELECT p.name FROM samples s JOIN people p ON p.id = s.person_id WHERE s.source_sha256 = ?",
            (sha256,),
        ).fetchone()
        return row[0] if row else None

    def embeddings(self, model: str) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        """All samples embedded by `model`, grouped by person: (vectors (S, dim) float32,
        person ids (S,) int64 in ascending order, {person id: name})."""
        rows = self.conn.execute(
            """SELECT p.id, p.name, e.dim, e.vector FROM embeddings e
               JOIN samples s ON s.id = e.sample_id JOIN people p ON p.id = s.person_id
               WHERE e.model = ? ORDER BY p.id, s.id""",
            (model,),
        ).fetchall()
        names = {pid: name for pid, name, _, _ in rows}
        if not rows:
            return np.zeros((0, 0), np.float32), np.zeros(0, np.int64), names
        dims = {dim for _, _, dim, _ in rows}
        if len(dims) != 1:
            raise FacestreamError(
                f"gallery {self.path} mixes embedding sizes {sorted(dims)} for model {model}"
            )
        dim = dims.pop()
        blob = b"".join(r[3] for r in rows)
        if len(blob) != 4 * dim * len(rows):
            raise FacestreamError(f"corrupt embedding in gallery {self.path}")
        vectors = np.frombuffer(blob, dtype="<f4").reshape(len(rows), dim).astype(np.float32)
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        return vectors, ids, names

    def iter_samples(self) -> Iterator[StoredSample]:
        """Every sample with its crop, streamed (crops are ~25 KB each: never all in memory)."""
        cur = self.conn.execute(
            """SELECT s.id, p.name, s.source_sha256, s.source_name, s.box, s.landmarks, s.crop,
                      s.crop_origin FROM samples s JOIN people p ON p.id = s.person_id ORDER BY s.id"""
        )
        for r in cur:
            yield StoredSample(
                id=r[0],
                person=r[1],
                source_sha256=r[2],
                source_name=r[3],
                box=json.loads(r[4]),
                landmarks=np.asarray(json.loads(r[5]), np.float32),
                crop_image=r[6],
                crop_origin=tuple(json.loads(r[7])),
            )

    def first_crop(self, name: str) -> bytes | None:
        """The face crop (JPEG) of a person's first sample: their thumbnail."""
        row = self.conn.execute(
            """SELECT s.crop FROM samples s JOIN people p ON p.id = s.person_id WHERE p.name = ?
               ORDER BY s.id LIMIT 1""",
            (name,),
        ).fetchone()
        return bytes(row[0]) if row else None

    def count_samples(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM samples").fetchone()[0])

    def threshold(self, model: str) -> float | None:
        row = self.conn.execute("SELECT threshold FROM model_settings WHERE model = ?", (model,)).fetchone()
        return float(row[0]) if row else None

    def thresholds(self) -> dict[str, float]:
        return {m: float(t) for m, t in self.conn.execute("SELECT model, threshold FROM model_settings")}

    # ----- writing -------------------------------------------------------------------------
    def add_person(self, name: str, samples: Sequence[NewSample], model: str) -> list[int | None]:
        """Adds `samples` (creating the person if new) in one transaction. Returns, per sample, its
        new id, or None where its source photo was already in the gallery: checked again inside the
        transaction, so two enrollments racing with the same photo store it once."""
        validate_name(name)
        now = time.time()
        ids: list[int | None] = []
        with self.transaction() as c:
            pid = self.person_id(name)
            for s in samples:
                if self.find_source(s.source_sha256) is not None:
                    ids.append(None)
                    continue
                if pid is None:
                    pid = _inserted(c.execute("INSERT INTO people(name, created) VALUES (?, ?)", (name, now)))
                cur = c.execute(
                    """INSERT INTO samples(person_id, source_sha256, source_name, box, landmarks, crop,
                       crop_origin, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
                    (
                        pid,
                        s.source_sha256,
                        s.source_name,
                        json.dumps([round(float(v), 2) for v in s.box]),
                        json.dumps(np.round(np.asarray(s.landmarks, float), 2).tolist()),
                        sqlite3.Binary(s.crop_image),
                        json.dumps([float(v) for v in s.crop_origin]),
                        now,
                    ),
                )
                sid = _inserted(cur)
                self._put_embedding(c, sid, model, s.embedding, now)
                ids.append(sid)
        return ids

    @staticmethod
    def _put_embedding(
        c: sqlite3.Connection, sample_id: int, model: str, vec: np.ndarray, now: float
    ) -> None:
        vec = np.asarray(vec, np.float32).reshape(-1)
        if not np.all(np.isfinite(vec)):
            raise FacestreamError("refusing to store an embedding with NaN/inf values")
        c.execute(
            "INSERT OR REPLACE INTO embeddings(sample_id, model, dim, vector, created) VALUES (?, ?, ?, ?, ?)",
            (sample_id, model, int(vec.size), sqlite3.Binary(encode_vector(vec)), now),
        )

    def set_embeddings(self, model: str, vectors: dict[int, np.ndarray]) -> None:
        """Stores (replacing) embeddings by sample id for one model, all in one transaction."""
        now = time.time()
        with self.transaction() as c:
            for sid, vec in vectors.items():
                self._put_embedding(c, sid, model, vec, now)

    def remove_person(self, name: str) -> int:
        """Deletes a person with all samples and embeddings; returns how many samples went."""
        with self.transaction() as c:
            pid = self.person_id(name)
            if pid is None:
                raise FacestreamError(f"no person named {name!r} in gallery {self.path}")
            n = int(c.execute("SELECT count(*) FROM samples WHERE person_id = ?", (pid,)).fetchone()[0])
            c.execute("DELETE FROM people WHERE id = ?", (pid,))
        return n

    def rename_person(self, old: str, new: str) -> None:
        validate_name(new)
        with self.transaction() as c:
            pid = self.person_id(old)
            if pid is None:
                raise FacestreamError(f"no person named {old!r} in gallery {self.path}")
            if old != new and self.person_id(new) is not None:
                raise FacestreamError(f"{new!r} is already in gallery {self.path}")
            c.execute("UPDATE people SET name = ? WHERE id = ?", (new, pid))

    def set_threshold(self, model: str, threshold: float, source: str) -> None:
        if not np.isfinite(threshold) or threshold <= 0:
            raise FacestreamError(f"refusing to store threshold {threshold} for {model}")
        with self.transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO model_settings(model, threshold, source, updated) VALUES (?, ?, ?, ?)",
                (model, float(threshold), source, time.time()),
            )
