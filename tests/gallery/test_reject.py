"""`facestream gallery reject NAME CROP_OR_ID`: "not this person". A face (a crop or photo file, or an
unknown identity's stored faces) is stored as a negative sample of NAME, and the matcher no longer
names that face, nor faces nearer to it than to NAME's own samples, NAME."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stream.cli import main
from stream.gallery.matcher import Matcher
from stream.gallery.store import Gallery, NewSample
from stream.gallery.unknowns import Face, Unknowns

MODEL = "dlib-resnet-v1"
KNN = Path("faces") / "face_recognition" / "knn_examples"


def _vec(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=128)
    return (v / np.linalg.norm(v)).astype(np.float32)


def _towards(a: np.ndarray, b: np.ndarray, d: float) -> np.ndarray:
    """The point at distance d from a on the way to b."""
    return (a + (b - a) / np.linalg.norm(b - a) * d).astype(np.float32)


def _sample(name: str, vec: np.ndarray) -> NewSample:
    return NewSample(name * 64, f"{name}.jpg", [0, 0, 10, 10], np.zeros((5, 2)), b"jpeg", (0, 0, 1), vec)


def test_a_rejected_face_is_not_named_again_and_the_running_matcher_reloads(tmp_path: Path, capsys) -> None:
    db = tmp_path / "g.db"
    ada, bob, stranger = _vec(1), _vec(2), _vec(3)
    with Gallery.open(db, create=True) as g:
        g.add_person("a", [_sample("a", ada)], MODEL)
        g.add_person("b", [_sample("b", bob)], MODEL)
    lookalike = _towards(ada, stranger, 0.45)  # within the threshold (0.6) of ada's only sample
    near_ada = _towards(ada, stranger, 0.1)  # ada herself, nearer her sample than the lookalike
    matcher = Matcher(db, MODEL)
    assert [m.name for m in matcher.match(np.stack([lookalike, near_ada]))] == ["a", "a"]

    # The lookalike was stored as a stranger's visit; the user says it is not ada.
    store = Unknowns.open(db)
    uid = store.add_visit(MODEL, "door", [Face(_towards(ada, stranger, 0.5), 0.9, 1.0)], None)
    store.close()
    assert main(["gallery", "--gallery", str(db), "reject", "a", f"unknown-{uid}"]) == 0
    assert capsys.readouterr().out.strip() == f"rejected 1 face(s) of unknown-{uid} as a ({MODEL})"

    assert matcher.refresh()  # a rejection changes the gallery's generation: a running stage reloads
    for got in (matcher.match(lookalike[None])[0], matcher.evidence(lookalike[None])[0]):
        # Nobody: no name and no candidate, so the tracker's agreement cannot name it `a` either.
        assert (got.name, got.candidate, got.distance) == (None, None, float("inf"))
    assert matcher.match(near_ada[None])[0].name == "a"  # ada herself still is
    assert matcher.match(_towards(bob, stranger, 0.3)[None])[0].name == "b"  # other people untouched
    matcher.close()

    # Removing the person removes the faces rejected as them.
    with Gallery.open(db) as g:
        g.remove_person("a")
        assert g.conn.execute("SELECT count(*) FROM rejections").fetchone()[0] == 0


def test_reject_bad_input_is_one_line_errors(tmp_path: Path, shared_data: Path, capsys) -> None:
    db = tmp_path / "g.db"
    with Gallery.open(db, create=True) as g:
        g.add_person("a", [_sample("a", _vec(1))], MODEL)
    store = Unknowns.open(db)
    other = store.add_visit("another-model", "door", [Face(_vec(4), 0.9, 1.0)], None)
    store.close()
    blank = tmp_path / "blank.png"
    import cv2

    cv2.imwrite(str(blank), np.full((120, 120, 3), 90, np.uint8))
    g = ["gallery", "--gallery", str(db), "reject"]
    for argv, says in [
        ([*g, "nobody", "unknown-1"], "no person named 'nobody'"),
        ([*g, "a", "unknown-99"], "no unknown-99 in gallery"),
        ([*g, "a", "bob"], "'bob' is neither an image file nor an unknown id"),
        ([*g, "a", f"unknown-{other}"], f"unknown-{other} has no faces embedded with {MODEL}"),
        ([*g, "a", str(blank)], "no face found"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, (argv, err)


def test_reject_a_photo_end_to_end(tmp_path: Path, shared_data: Path, models_home: Path, capsys) -> None:
    """With a threshold loose enough that biden passes for obama, `reject obama biden.jpg` stops that:
    another photo of biden is no longer obama; obama's other photo still is."""
    db, knn = tmp_path / "g.db", shared_data / KNN
    assert main(["enroll", "--gallery", str(db), "obama", str(knn / "train" / "obama" / "obama.jpg")]) == 0

    def identify(photo: Path) -> str | None:
        capsys.readouterr()
        assert main(["identify", "--gallery", str(db), "--threshold", "1.2", "--json", str(photo)]) == 0
        faces = json.loads(capsys.readouterr().out)["faces"]
        assert len(faces) == 1
        name: str | None = faces[0]["name"]
        return name

    biden, biden2 = knn / "train" / "biden" / "biden.jpg", knn / "train" / "biden" / "biden2.jpg"
    obama2 = knn / "train" / "obama" / "obama2.jpg"
    if identify(biden2) != "obama":
        pytest.fail("the loose threshold no longer confuses biden with obama: the test needs another pair")
    assert main(["gallery", "--gallery", str(db), "reject", "obama", str(biden)]) == 0
    assert identify(biden2) is None
    assert identify(biden) is None
    assert identify(obama2) == "obama"
