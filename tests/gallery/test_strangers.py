"""Strangers who come back (issue 13), on a clip built from the shared photos with the real models
(stream/pipeline/identity_eval.py's way): a person never enrolled appears twice, with someone else
and a restart of the match stage in between, and gets the same unknown id; promoting that id names
the next appearance."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from stream.cli import main
from stream.detections import Detections
from stream.gallery.strangers import Strangers
from stream.gallery.unknown_commands import promote
from stream.gallery.unknowns import Face, Unknowns
from stream.pipeline import identity_eval as ie
from stream.pipeline import wire
from stream.pipeline.config import MatchConfig, PipelineConfig, UnknownsConfig
from stream.pipeline.stages.match import Namer

FPS = 25.0
SHOT = 10  # frames a stranger is on screen
GAP = 15  # empty frames: the track ends (max_missed 12)
START = time.time() - 3600  # the clip's wall clock: an hour ago (retention counts from the wall clock)


def _clip(cast: dict[str, ie.Actor]) -> ie.Case:
    s1, s2 = cast["S1"], cast["S2"]
    a = 0
    b = a + SHOT + GAP
    c = b + SHOT + GAP
    return ie.Case(
        "return",
        "S1, S2, then S1 again elsewhere",
        c + SHOT,
        (
            ie.Appearance(s1, a, a + SHOT - 1, (200, 180, 110), (230, 180, 115)),
            ie.Appearance(s2, b, b + SHOT - 1, (330, 170, 120), (350, 170, 120)),
            ie.Appearance(s1, c, c + SHOT - 1, (470, 190, 95), (440, 185, 100)),
        ),
    )


@pytest.fixture(scope="module")
def clip(analyzer, shared_data: Path, tmp_path_factory):
    enroll, cast = ie.shared_cast(shared_data)
    gallery = tmp_path_factory.mktemp("strangers") / "g.db"
    ie.enroll_gallery(analyzer, enroll, gallery)
    frames = [f for f, _ in ie.render(_clip(cast), ie.load_photos(cast))]
    return gallery, frames, ie.embed_frames(analyzer, frames)


def _run(namer: Namer, frames, faces, lo: int, hi: int) -> tuple[list[list[wire.Result]], list[dict]]:
    results, events = [], []
    for i in range(lo, hi):
        msg = wire.Faces(
            cam="door", seq=i, pts=i / FPS, wall=START + i / FPS, frame=frames[i], dets=faces[i].dets
        )
        result, ev = namer.name(msg)
        results.append(result)
        events += ev
    return results, events


def _unknowns(results: list[wire.Result]) -> list[str | None]:
    return [u for r in results for u in (r.dets.unknowns or [])]


def test_a_stranger_who_comes_back_gets_the_same_id_and_promote_names_them(clip, analyzer, tmp_path):
    gallery, frames, faces = clip
    db = tmp_path / "g.db"
    db.write_bytes(gallery.read_bytes())  # each test its own copy: promote writes to it
    cfg = PipelineConfig(
        gallery=db, match=MatchConfig(unknowns=UnknownsConfig(enabled=True, returned_gap_s=1.0))
    )
    second = 2 * (SHOT + GAP)

    namer = Namer(cfg)
    first, events = _run(namer, frames, faces, 0, second)
    namer.close()
    visits = [e for e in events if e["type"] == "unknown_visit"]
    assert [e["new"] for e in visits] == [True, True], events  # S1 and S2: two new identities
    s1, s2 = visits[0]["unknown"], visits[1]["unknown"]
    assert s1 != s2
    assert set(_unknowns(first)) == {None}  # a first visit has no id yet: it is founded when it ends
    assert all(n is None for r in first for n in r.dets.names or [])

    namer = Namer(cfg)  # a restart: the identities come from the gallery file
    again, events = _run(namer, frames, faces, second, len(frames))
    events += namer.end("door", 0.0)
    namer.close()
    ids = _unknowns(again)
    assert len(ids) >= SHOT - 1 and set(ids[3:]) == {s1}, ids  # from min_faces (3) on: S1's id
    returned = [e for e in events if e["type"] == "unknown_returned"]
    assert [e["unknown"] for e in returned] == [s1] and returned[0]["away_s"] >= 1.0, events
    assert [(e["unknown"], e["new"]) for e in events if e["type"] == "unknown_visit"] == [(s1, False)]

    store = Unknowns.open(db, create=False)
    info = store.get(int(s1.split("-")[1]))
    assert info.visits == 2 and info.cameras == ["door"] and info.crops == 6  # 3 best faces a visit
    lines = promote(store, info.id, "angelina_jolie", analyzer)
    assert lines[-1].startswith(f"promoted {s1} to angelina_jolie")
    assert [i.label for i in store.all()] == [s2]  # the promoted identity is gone
    store.close()

    namer = Namer(cfg)
    named, events = _run(namer, frames, faces, second, len(frames))
    namer.close()
    names = [n for r in named for n in r.dets.names or []]
    assert names and all(n == "angelina_jolie" for n in names), names
    assert set(_unknowns(named)) == {None}
    assert not [e for e in events if e["type"].startswith("unknown_")]


def test_clustering_off_stores_nothing(clip, tmp_path):
    gallery, frames, faces = clip
    db = tmp_path / "g.db"
    db.write_bytes(gallery.read_bytes())
    cfg = PipelineConfig(gallery=db, match=MatchConfig(unknowns=UnknownsConfig(enabled=False)))
    namer = Namer(cfg)
    results, events = _run(namer, frames, faces, 0, len(frames))
    namer.close()
    assert set(_unknowns(results)) == {None} and not [e for e in events if e["type"].startswith("unknown_")]
    tables = {r[0] for r in sqlite3.connect(db).execute("SELECT name FROM sqlite_master")}
    assert "unknowns" not in tables


# ----- the store, retention, the commands: no models --------------------------------------------------
def _face(vec: np.ndarray, seen: float) -> Face:
    return Face(np.asarray(vec, np.float32), 0.9, seen)


def _vec(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=128)
    return v / np.linalg.norm(v)


def test_retention_deletes_identities_unseen_for_the_limit(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    store = Unknowns.open(db)
    day = 86400.0
    now = 100 * day
    old = store.add_visit("dlib-resnet-v1", "door", [_face(_vec(1), now - 31 * day)], None)
    recent = store.add_visit("dlib-resnet-v1", "door", [_face(_vec(2), now - 29 * day)], None)
    # An old identity seen again recently is kept: retention counts from the last visit.
    back = store.add_visit("dlib-resnet-v1", "door", [_face(_vec(3), now - 60 * day)], None)
    store.add_visit("dlib-resnet-v1", "yard", [_face(_vec(3), now - day)], back)
    assert store.expire(30, now) == [old]
    assert [i.id for i in store.all()] == [recent, back]
    _, owners, _ = store.faces("dlib-resnet-v1")
    assert old not in owners.tolist()  # its embeddings went with it
    assert store.get(back).cameras == ["door", "yard"] and store.get(back).visits == 2
    store.close()
    # The match stage applies the limit when it starts.
    strangers = Strangers(db, "dlib-resnet-v1", 0.6, "euclidean", UnknownsConfig(retention_days=0.5))
    assert strangers.store.all() == []
    strangers.close()
    assert db.stat().st_mode & 0o777 == 0o600


def test_bad_ids_are_one_line_errors(tmp_path: Path, capsys) -> None:
    db = tmp_path / "g.db"
    store = Unknowns.open(db)
    a = store.add_visit("dlib-resnet-v1", "door", [_face(_vec(1), 1.0)], None)
    b = store.add_visit("dlib-resnet-v1", "door", [_face(_vec(2), 2.0)], None)
    store.close()
    g = ["unknowns", "--gallery", str(db)]
    for argv, says in [
        ([*g, "show", "bob"], "'bob' is not an unknown id"),
        ([*g, "show", "unknown-99"], "no unknown-99 in gallery"),
        ([*g, "forget", "unknown-0"], "'unknown-0' is not an unknown id"),
        ([*g, "merge", f"unknown-{a}", f"unknown-{a}"], "cannot merge"),
        ([*g, "merge", f"unknown-{a}", "unknown-99"], "no unknown-99"),
        ([*g, "promote", "unknown-99", "Ada"], "no unknown-99"),
        ([*g, "promote", f"unknown-{a}", "a/b"], "path characters"),
        ([*g, "cluster", "--k", "0"], "--k must be at least 1"),
        (["unknowns", "--gallery", str(tmp_path / "none.db"), "list"], "does not exist"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, (argv, err)
    assert main([*g, "merge", f"unknown-{a}", f"unknown-{b}"]) == 0
    assert capsys.readouterr().out.strip() == f"merged unknown-{b} into unknown-{a}"
    assert main([*g, "show", f"unknown-{a}"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["id"], shown["visits"], shown["faces"], shown["cameras"]) == (
        f"unknown-{a}",
        2,
        2,
        ["door"],
    )
    assert main([*g, "forget", f"unknown-{a}"]) == 0
    capsys.readouterr()
    assert main([*g, "forget", f"unknown-{a}"]) == 2  # forgotten for good
    assert main([*g, "list", "--json"]) == 0
    assert capsys.readouterr().out.strip() == "[]"


def test_promote_without_crops_says_so(tmp_path: Path, capsys) -> None:
    db = tmp_path / "g.db"
    store = Unknowns.open(db)
    a = store.add_visit("dlib-resnet-v1", "door", [_face(_vec(1), 1.0)], None)
    store.close()
    assert main(["unknowns", "--gallery", str(db), "promote", f"unknown-{a}", "Ada"]) == 2
    assert "has no stored crops" in capsys.readouterr().err
    assert [i.id for i in Unknowns.open(db).all()] == [a]  # kept


def test_cluster_regroups_split_identities(tmp_path: Path, capsys) -> None:
    """Two people, each stored as two identities (as if the live threshold had split them): the
    threshold-based re-clustering gives two identities, K-means with k=3 three."""
    db = tmp_path / "g.db"
    store = Unknowns.open(db)
    rng = np.random.default_rng(0)
    p, q = _vec(1), _vec(2)  # unit vectors ~1.4 apart; faces of one person ~0.2 apart
    for k, person in enumerate((p, q, p, q)):
        faces = [_face(person + rng.normal(0, 0.02, 128), 100.0 * k) for _ in range(3)]
        store.add_visit("dlib-resnet-v1", "door", faces, None)
    store.close()
    g = ["unknowns", "--gallery", str(db)]
    assert main([*g, "cluster"]) == 0
    assert "12 faces: 4 identities -> 2" in capsys.readouterr().out
    store = Unknowns.open(db)
    infos = store.all()
    assert [i.faces for i in infos] == [6, 6] and [i.visits for i in infos] == [2, 2]
    _, owners, vecs = store.faces("dlib-resnet-v1")
    for u in set(owners.tolist()):  # each identity is one person's faces
        near_p = np.linalg.norm(vecs[owners == u] - p, axis=1) < 0.5
        assert near_p.all() or not near_p.any()
    store.close()
    assert main([*g, "cluster", "--k", "3"]) == 0
    assert "-> 3 (K-means, k=3)" in capsys.readouterr().out


def test_detections_carry_unknowns_through_index_and_merge() -> None:
    d = Detections.of(np.zeros((2, 4)), [1, 1], np.zeros((2, 5, 2))).with_columns(
        unknowns=[None, "unknown-2"]
    )
    assert d[1].unknowns == ["unknown-2"] and Detections.merge([d, d]).unknowns == [None, "unknown-2"] * 2


def test_the_match_stage_sees_changes_other_processes_make(tmp_path: Path) -> None:
    """promote / merge / forget / cluster run in another process: the running stage reloads."""
    db = tmp_path / "g.db"
    live = Strangers(db, "dlib-resnet-v1", 0.6, "euclidean", UnknownsConfig())
    other = Unknowns.open(db)
    a = other.add_visit("dlib-resnet-v1", "door", [_face(_vec(1), time.time())], None)
    live.refresh()
    assert live.nearest(_vec(1).astype(np.float32))[0] == a
    other.forget(a)
    live.refresh()
    assert live.nearest(_vec(1).astype(np.float32)) == (None, float("inf"))
    other.close()
    live.close()


def test_an_identity_keeps_at_most_max_faces_the_best(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    cfg = UnknownsConfig(min_faces=1, keep_faces=3, max_faces=5)
    live = Strangers(db, "dlib-resnet-v1", 0.6, "euclidean", cfg)
    rng = np.random.default_rng(0)
    person = _vec(1)
    qualities = [0.5, 0.9, 0.6, 0.95, 0.7, 0.55, 0.8, 0.65, 0.85]
    for visit in range(3):  # three visits of three faces, each visit one track
        tracks = np.array([visit], np.int32)
        for j in range(3):
            q = qualities[3 * visit + j]
            emb = (person + rng.normal(0, 0.01, 128)).astype(np.float32)[None]
            live.observe("door", 100.0 * visit + j, tracks, [False], emb, np.array([q], np.float32), 0.3)
        live.ended("door", [visit], 100.0 * visit + 5)
    [info] = live.store.all()
    assert info.visits == 3 and info.faces == 5  # nine stored, capped at five
    kept = [r[0] for r in live.store.conn.execute("SELECT quality FROM unknown_faces ORDER BY quality DESC")]
    assert kept == pytest.approx(sorted(qualities, reverse=True)[:5])
    # The running stage's appearance is the mean of the faces kept, as after a restart.
    ids, means = live.store.centroids("dlib-resnet-v1")
    assert live.counts[info.id] == 5 and np.allclose(live.means[live.ids == info.id], means[ids == info.id])
    for suffix in ("", "-wal", "-shm"):  # the unknown faces live in the gallery file, private like it
        assert Path(f"{db}{suffix}").stat().st_mode & 0o777 == 0o600
    live.close()


def test_a_stranger_is_matched_across_cameras(tmp_path: Path) -> None:
    """All cameras share the identities: a visit at the door, then the same face in the yard."""
    live = Strangers(tmp_path / "g.db", "dlib-resnet-v1", 0.6, "euclidean", UnknownsConfig(min_faces=2))
    person, other = _vec(1), _vec(2)
    q = np.array([0.9], np.float32)
    for j in range(3):
        live.observe(
            "door", float(j), np.array([1], np.int32), [False], person[None].astype(np.float32), q, 0.3
        )
    [visit] = live.ended("door", [1], 5.0)
    ids = []
    for j, vec in enumerate([person, person, other, other]):
        cam_track = np.array([7 if j < 2 else 8], np.int32)
        out, _ = live.observe("yard", 10.0 + j, cam_track, [False], vec[None].astype(np.float32), q, 0.3)
        ids += out
    assert visit["new"] and ids == [None, visit["unknown"], None, None]  # from min_faces on; not the other
    live.end_camera("yard", 20.0)
    assert live.store.get(int(visit["unknown"].split("-")[1])).cameras == ["door", "yard"]
    live.close()
