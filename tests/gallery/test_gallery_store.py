"""Gallery file: schema, permissions, foreign files, names, writes and the change counter."""

from __future__ import annotations

import sqlite3
import stat

import numpy as np
import pytest

from stream.errors import FacestreamError
from stream.gallery.store import Gallery, NewSample, decode_vector, validate_name

MODEL = "dlib-resnet-v1"


def sample(seed: int, dim: int = 128) -> NewSample:
    rng = np.random.default_rng(seed)
    return NewSample(
        source_sha256=f"{seed:064x}",
        source_name=f"photo{seed}.jpg",
        box=[10, 20, 110, 140],
        landmarks=rng.uniform(0, 100, (5, 2)),
        crop_image=b"\x89PNG fake",
        crop_origin=(0.0, 0.0, 1.0),
        embedding=rng.normal(size=dim).astype(np.float32),
    )


def test_create_is_private_and_versioned(tmp_path):
    path = tmp_path / "g.db"
    with Gallery.open(path, create=True) as g:
        g.add_person("alice", [sample(1)], MODEL)
        files = sorted(p.name for p in tmp_path.iterdir())
        assert files == ["g.db", "g.db-shm", "g.db-wal"]
        for p in tmp_path.iterdir():  # biometric data: owner only, -wal/-shm included
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    with Gallery.open(path) as g:
        assert g.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "1"
        assert g.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_missing_gallery_not_created_by_readers(tmp_path):
    with pytest.raises(FacestreamError, match="does not exist"):
        Gallery.open(tmp_path / "nope.db")
    assert not (tmp_path / "nope.db").exists()


@pytest.mark.parametrize("content", [b"hello, not a database at all" * 10, None])
def test_foreign_files_refused(tmp_path, content):
    path = tmp_path / "other.db"
    if content is None:  # an SQLite file of some other application
        c = sqlite3.connect(path)
        c.execute("CREATE TABLE t (x)")
        c.commit()
        c.close()
    else:
        path.write_bytes(content)
    with pytest.raises(FacestreamError, match="is not a facestream gallery"):
        Gallery.open(path, create=True)


def test_newer_schema_refused(tmp_path):
    path = tmp_path / "g.db"
    Gallery.open(path, create=True).close()
    c = sqlite3.connect(path)
    c.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    c.commit()
    c.close()
    with pytest.raises(FacestreamError, match="newer facestream"):
        Gallery.open(path)


@pytest.mark.parametrize("bad", ["", "  ", "a/b", "..", "x\\y", "tab\there", "nl\n", " lead"])
def test_bad_names(bad):
    with pytest.raises(FacestreamError):
        validate_name(bad)


def test_good_names():
    for name in ["obama", "Rose Leslie", "José Álvarez", "李小龍", "o'neil"]:
        assert validate_name(name) == name


def test_add_list_rename_remove(tmp_path):
    with Gallery.open(tmp_path / "g.db", create=True) as g:
        g0 = g.generation()
        g.add_person("alice", [sample(1), sample(2)], MODEL)
        g.add_person("bob", [sample(3)], MODEL)
        g.add_person("alice", [sample(4)], MODEL)  # more photos join the same person
        assert g.generation() > g0
        people = {p.name: p for p in g.people()}
        assert people["alice"].samples == 3 and people["alice"].models == {MODEL: 3}
        assert people["bob"].samples == 1
        assert g.models() == {MODEL: 4}
        assert g.find_source(f"{3:064x}") == "bob"
        vecs, ids, names = g.embeddings(MODEL)
        assert vecs.shape == (4, 128) and vecs.dtype == np.float32
        assert list(ids) == sorted(ids)
        np.testing.assert_array_equal(vecs[-1], sample(3).embedding)  # bob is last (higher id)
        assert g.embeddings("facenet-vggface2")[0].shape[0] == 0
        g.rename_person("bob", "robert")
        with pytest.raises(FacestreamError, match="already"):
            g.rename_person("robert", "alice")
        with pytest.raises(FacestreamError, match="no person"):
            g.rename_person("carol", "dave")
        assert g.remove_person("alice") == 3
        assert [p.name for p in g.people()] == ["robert"]
        # Cascades: no orphan samples or embeddings remain.
        assert g.conn.execute("SELECT count(*) FROM samples").fetchone()[0] == 1
        assert g.conn.execute("SELECT count(*) FROM embeddings").fetchone()[0] == 1
        with pytest.raises(FacestreamError, match="no person"):
            g.remove_person("alice")


def test_failed_transaction_leaves_nothing(tmp_path):
    with Gallery.open(tmp_path / "g.db", create=True) as g:
        bad = sample(2)
        bad.embedding = np.array([np.nan] * 128, np.float32)
        with pytest.raises(FacestreamError):
            g.add_person("alice", [sample(1), bad], MODEL)
        assert g.people() == []
        assert g.conn.execute("SELECT count(*) FROM samples").fetchone()[0] == 0


def test_thresholds_and_decode(tmp_path):
    with Gallery.open(tmp_path / "g.db", create=True) as g:
        assert g.threshold(MODEL) is None
        g.set_threshold(MODEL, 0.55, "pairs.csv")
        assert g.threshold(MODEL) == pytest.approx(0.55)
        with pytest.raises(FacestreamError):
            g.set_threshold(MODEL, float("nan"), "x")
    with pytest.raises(FacestreamError, match="corrupt"):
        decode_vector(b"\0" * 10, 128)


def test_gallery_init_command(tmp_path, capsys):
    """`facestream gallery init`: creates a private, empty gallery; a second call changes nothing;
    a missing folder or a foreign file is a one-line error."""
    from stream import cli

    path = tmp_path / "people.db"
    assert cli.main(["gallery", "--gallery", str(path), "init"]) == 0
    assert "created (0 people)" in capsys.readouterr().out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with Gallery.open(path) as g:
        g.add_person("alice", [sample(1)], MODEL)
    assert cli.main(["gallery", "--gallery", str(path), "init"]) == 0
    assert "exists (1 people)" in capsys.readouterr().out
    with Gallery.open(path) as g:
        assert [p.name for p in g.people()] == ["alice"]
    assert cli.main(["gallery", "--gallery", str(tmp_path / "no" / "g.db"), "init"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not exist" in err, err
    foreign = tmp_path / "notes.txt"
    foreign.write_text("shopping list\n" * 20)
    assert cli.main(["gallery", "--gallery", str(foreign), "init"]) != 0
    assert "not a facestream gallery" in capsys.readouterr().err
    assert foreign.read_text() == "shopping list\n" * 20
