"""Enrollment, identify, verify, eval, rebuild and the bad-input rules with the real models on the
shared photos (knn_examples: 5 people, 1-2 training photos each, 5 test photos).

The CLI runs in-process with the session's FaceAnalyzer patched in (one model load for the whole
suite); the kill -9 and the live-matcher tests use real separate processes."""

from __future__ import annotations

import hashlib
import itertools
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO
from waiting import wait_until

from stream import cli
from stream.gallery import commands
from stream.gallery.enroll import EnrollOptions, enroll_person
from stream.gallery.matcher import Matcher
from stream.gallery.store import Gallery, decode_vector

MODEL = "dlib-resnet-v1"
PEOPLE = ["alex_lacamoire", "biden", "kit_harington", "obama", "rose_leslie"]
# Who is in each test photo (faces large enough to matter; obama_and_biden also shows two small
# strangers in the background, who must come out unknown).
TEST_TRUTH = {
    "alex_lacamoire1.jpg": ["alex_lacamoire"],
    "johnsnow_test1.jpg": ["kit_harington"],
    "kit_with_rose.jpg": ["kit_harington", "rose_leslie"],
    "obama1.jpg": ["obama"],
    "obama_and_biden.jpg": ["biden", "obama"],
}


@pytest.fixture(scope="module")
def knn(shared_data: Path) -> Path:
    return shared_data / "faces" / "face_recognition" / "knn_examples"


class CachingAnalyzer:
    """The session's FaceAnalyzer, remembering each distinct frame's faces: these tests show the
    same photos to enroll, identify, verify and eval many times (MTCNN takes ~1 s per photo here)."""

    def __init__(self, inner):
        self.inner, self.embedder, self.detector = inner, inner.embedder, inner.detector
        self.cache: dict[tuple, list] = {}

    def analyze(self, frames):
        out = []
        for f in frames:
            key = (f.shape, hashlib.sha1(f.tobytes()).hexdigest())
            if key not in self.cache:
                self.cache[key] = self.inner.analyze([f])[0]
            out.append(self.cache[key])
        return out

    def analyze_image(self, path):
        from stream.imageio import load_image

        return self.analyze([load_image(path)])[0]


@pytest.fixture(scope="module")
def cached(analyzer) -> CachingAnalyzer:
    return CachingAnalyzer(analyzer)


@pytest.fixture
def run(cached, monkeypatch, capsys):
    """facestream CLI in-process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(commands, "_analyzer", lambda model: cached)

    def _run(*argv: object) -> tuple[int, str, str]:
        capsys.readouterr()
        rc = cli.main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return rc, out, err

    return _run


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("facestream: error: "), err
    return lines[0]


def identify_names(run, gallery: Path, image: Path) -> list[str | None]:
    import json

    rc, out, err = run("identify", "--gallery", gallery, image, "--json")
    assert rc == 0, err
    faces = json.loads(out)["faces"]
    for f in faces:
        assert set(f) == {"box", "score", "name", "distance"} and len(f["box"]) == 4
    return [f["name"] for f in faces]


@pytest.mark.parametrize("which", [0, -1], ids=["first-photo", "last-photo"])
def test_one_shot_enrollment_names_every_test_face(run, knn, tmp_path, which):
    gallery = tmp_path / "g.db"
    for person in PEOPLE:
        photo = sorted((knn / "train" / person).iterdir())[which]
        rc, out, err = run("enroll", "--gallery", gallery, person, photo)
        assert rc == 0, err
        assert f"enrolled {person} <- {photo}" in out
    for image, truth in TEST_TRUTH.items():
        names = identify_names(run, gallery, knn / "test" / image)
        assert sorted(n for n in names if n) == truth, (image, names)
        if image == "obama_and_biden.jpg":
            assert names.count(None) == 2  # the background strangers


@pytest.fixture(scope="module")
def full_gallery(cached, knn, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("full") / "g.db"
    with Gallery.open(path, create=True) as g:
        for person in PEOPLE:
            enroll_person(g, cached, person, sorted((knn / "train" / person).iterdir()), EnrollOptions())
    return path


@pytest.fixture(scope="module")
def test_embeddings(cached, knn) -> dict[str, np.ndarray]:
    """Embeddings of the test faces that belong to enrolled people, in TEST_TRUTH order per photo."""
    out = {}
    for image in TEST_TRUTH:
        faces = cached.analyze_image(knn / "test" / image)
        out[image] = np.stack([f.embedding for f in faces])
    return out


@pytest.mark.parametrize("left_out", PEOPLE)
def test_leave_one_out_is_unknown(full_gallery, test_embeddings, tmp_path, left_out):
    path = tmp_path / "g.db"
    shutil.copy(full_gallery, path)
    with Gallery.open(path) as g:
        g.remove_person(left_out)
    matcher = Matcher(path, MODEL)
    for image, truth in TEST_TRUTH.items():
        names = [m.name for m in matcher.match(test_embeddings[image])]
        assert left_out not in names
        expected = sorted(p for p in truth if p != left_out)
        assert sorted(n for n in names if n) == expected, (image, names)


def test_verify(run, knn):
    import json

    obama, obama2, biden = (
        knn / "train/obama/obama.jpg",
        knn / "train/obama/obama2.jpg",
        knn / "train/biden/biden.jpg",
    )
    rc, out, _ = run("verify", obama, obama2, "--json")
    res = json.loads(out)
    assert rc == 0 and res["same"] is True and res["threshold"] == 0.6 and res["distance"] < 0.5
    rc, out, _ = run("verify", obama, biden, "--json")
    res = json.loads(out)
    assert rc == 0 and res["same"] is False and res["distance"] > 0.7
    rc, out, _ = run("verify", obama, biden)
    assert out.startswith("different people")
    rc, _, err = run("verify", obama, knn / "test/kit_with_rose.jpg")
    assert rc == 2 and "2 faces found" in one_error_line(err)
    rc, out, _ = run(
        "verify", knn / "test/obama1.jpg", knn / "test/obama_and_biden.jpg", "--largest", "--json"
    )
    assert json.loads(out)["same"] is True  # obama is the largest face there


def single_face_images(knn: Path) -> dict[str, str]:
    photos = {str(p.relative_to(knn)): p.parent.name for p in sorted((knn / "train").rglob("*.jp*g"))}
    photos |= {"test/alex_lacamoire1.jpg": "alex_lacamoire", "test/johnsnow_test1.jpg": "kit_harington"}
    photos |= {"test/obama1.jpg": "obama"}
    return photos


def test_eval_on_shared_pairs(run, knn, tmp_path, full_gallery):
    import json

    photos = single_face_images(knn)
    blank = tmp_path / "blank.jpg"  # no face: the pair is counted in no_face, not scored
    cv2.imwrite(str(blank), np.full((200, 200, 3), 128, np.uint8))
    rows = ["file_x,file_y,same"]
    rows += [
        f"{x},{y},{'yes' if photos[x] == photos[y] else 'no'}" for x, y in itertools.combinations(photos, 2)
    ]
    rows.append(f"test/obama1.jpg,{blank},0")
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    gallery = tmp_path / "g.db"
    shutil.copy(full_gallery, gallery)
    plot = tmp_path / "roc.png"
    rc, out, err = run(
        "eval",
        "--pairs",
        csv_path,
        "--images",
        knn,
        "--json",
        "--plot",
        plot,
        "--set-threshold",
        "--gallery",
        gallery,
    )
    assert rc == 0, err
    res = json.loads(out)
    n = len(photos) * (len(photos) - 1) // 2
    assert res["pairs"] == n and res["no_face"] == 1
    # 9 same / 57 different pairs: same <= 0.43, different >= 0.70, so the default 0.6 is perfect.
    assert res["accuracy"] == 1.0 and res["best_accuracy"] == 1.0 and res["threshold"] == 0.6
    assert res["auc"] == 1.0 and res["eer"] == 0.0 and res["val_at_far_1e-3"] == 1.0
    assert 0.43 < res["best_threshold"] < 0.7
    for key in ["pairs", "no_face", "accuracy", "threshold", "best_accuracy", "best_threshold", "auc"]:
        assert key in res
    assert cv2.imread(str(plot)) is not None
    # The calibrated threshold is stored for the model and the Matcher picks it up.
    assert Matcher(gallery, MODEL).threshold == pytest.approx(res["best_threshold"], abs=1e-6)
    rc, out, _ = run("gallery", "--gallery", gallery, "list")
    assert f"calibrated threshold for {MODEL}" in out


def distinct_photos(knn: Path, n: int, out: Path) -> None:
    """n single-person folders of distinct files (re-encoded at different qualities: new sha256)."""
    sources = sorted((knn / "train").rglob("*.jp*g"))
    for i in range(n):
        img = cv2.imread(str(sources[i % len(sources)]))
        (out / f"p{i:02d}").mkdir(parents=True)
        cv2.imwrite(str(out / f"p{i:02d}" / "1.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 70 + i])


def committed(path: Path) -> dict[str, list[bytes]]:
    """person -> embedding blobs, read with a plain sqlite connection (as a third party would)."""
    c = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        rows = c.execute(
            """SELECT p.name, e.vector FROM people p JOIN samples s ON s.person_id = p.id
               JOIN embeddings e ON e.sample_id = s.id ORDER BY p.name, s.id"""
        ).fetchall()
    except sqlite3.OperationalError:  # schema not created yet
        return {}
    finally:
        c.close()
    out: dict[str, list[bytes]] = {}
    for name, blob in rows:
        out.setdefault(name, []).append(blob)
    return out


@pytest.mark.e2e
def test_kill_9_while_enrolling_keeps_committed_samples_whole(run, knn, tmp_path):
    photos, gallery = tmp_path / "photos", tmp_path / "g.db"
    distinct_photos(knn, 12, photos)
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream", "enroll", "--gallery", str(gallery), "--from-dir", str(photos)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    seen: dict[str, list[bytes]] = {}

    def three_committed_or_ended() -> bool:
        if proc.poll() is not None:
            return True
        if gallery.exists():
            seen.clear()
            seen.update(committed(gallery))
        return len(seen) >= 3

    try:
        wait_until(three_committed_or_ended, 90, "three people committed", every=0.02)
        assert proc.poll() is None, f"enroll ended before it could be killed: {proc.stderr.read()[-500:]!r}"
        proc.kill()  # SIGKILL: no cleanup, no rollback, possibly mid-transaction
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    with Gallery.open(gallery) as g:
        assert g.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        people = {p.name: p for p in g.people()}
        assert 3 <= len(people) < 12
        for p in people.values():  # no person without their sample, no sample without embedding
            assert p.samples == 1 and p.models == {MODEL: 1}
        orphans = g.conn.execute(
            "SELECT count(*) FROM samples s LEFT JOIN embeddings e ON e.sample_id = s.id WHERE e.sample_id IS NULL"
        ).fetchone()[0]
        assert orphans == 0
        for (vec,) in committed(gallery).values():
            v = decode_vector(vec, 128)
            assert np.all(np.isfinite(v)) and 0.1 < np.linalg.norm(v) < 10
        for name, blobs in seen.items():  # what was committed before the kill is there, bit for bit
            assert committed(gallery)[name] == blobs
    # Re-running finishes the job and skips what was already committed.
    rc, out, err = run("enroll", "--gallery", gallery, "--from-dir", photos)
    assert rc == 0, err
    assert f"{12 - len(people)} photo(s) enrolled, {len(people)} skipped" in out
    assert len(committed(gallery)) == 12


MATCHER_LOOP = """
import sys, time
import numpy as np
from stream.gallery.matcher import Matcher
m = Matcher(sys.argv[1], "dlib-resnet-v1")
q = np.load(sys.argv[2])
print("ready", m.match(q)[0].name, flush=True)
deadline = time.time() + 60
while time.time() < deadline:
    if m.refresh():
        name = m.match(q)[0].name
        print("refreshed", name, flush=True)
        if name:
            break
    time.sleep(0.02)
"""


@pytest.mark.e2e
def test_running_matcher_picks_up_new_person(run, knn, tmp_path, test_embeddings):
    gallery = tmp_path / "g.db"
    rc, _, err = run("enroll", "--gallery", gallery, "alex_lacamoire", knn / "train/alex_lacamoire/img1.jpg")
    assert rc == 0, err
    np.save(tmp_path / "q.npy", test_embeddings["obama1.jpg"])
    proc = subprocess.Popen(
        [sys.executable, "-c", MATCHER_LOOP, str(gallery), str(tmp_path / "q.npy")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().split() == ["ready", "None"]
        rc, _, err = run("enroll", "--gallery", gallery, "obama", knn / "train/obama/obama2.jpg")
        assert rc == 0, err
        lines = proc.communicate(timeout=60)[0].split("\n")
        assert "refreshed obama" in lines
    finally:
        if proc.poll() is None:
            proc.kill()


def test_rebuild_from_stored_crops(run, full_gallery, tmp_path, test_embeddings):
    gallery = tmp_path / "g.db"
    shutil.copy(full_gallery, gallery)
    before, _, _ = Gallery.open(gallery).embeddings(MODEL)
    rc, out, err = run("gallery", "--gallery", gallery, "rebuild", "--model", MODEL)
    assert rc == 0, err and "re-embedded 9 sample(s)" in out
    after, _, _ = Gallery.open(gallery).embeddings(MODEL)
    # Same faces from 2x-margin crops (JPEG, rescaled) instead of the photos: nearly the same vectors.
    drift = np.linalg.norm(after - before, axis=1)
    assert drift.max() < 0.15, drift
    m = Matcher(gallery, MODEL)
    for image, truth in TEST_TRUTH.items():
        assert sorted(x.name for x in m.match(test_embeddings[image]) if x.name) == truth


def test_list_rename_remove(run, full_gallery, tmp_path):
    import json

    gallery = tmp_path / "g.db"
    shutil.copy(full_gallery, gallery)
    rc, out, _ = run("gallery", "--gallery", gallery, "list", "--json")
    listing = json.loads(out)
    assert [p["name"] for p in listing["people"]] == PEOPLE
    assert listing["models"] == {MODEL: 9}
    assert run("gallery", "--gallery", gallery, "rename", "kit_harington", "Kit Harington")[0] == 0
    assert run("gallery", "--gallery", gallery, "remove", "biden")[0] == 0
    rc, out, _ = run("gallery", "--gallery", gallery, "list")
    assert "Kit Harington" in out and "biden" not in out and "4 people" in out
    rc, _, err = run("gallery", "--gallery", gallery, "remove", "nobody")
    assert rc == 2 and "no person named 'nobody'" in one_error_line(err)
    rc, _, err = run("gallery", "--gallery", gallery, "rename", "obama", "a/b")
    assert rc == 2 and "path characters" in one_error_line(err)


def test_bad_input_one_line_and_nothing_written(run, knn, tmp_path):
    gallery = tmp_path / "g.db"
    obama = knn / "train/obama/obama2.jpg"
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("this is not a jpeg")
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((300, 300, 3), 200, np.uint8))
    two = knn / "test/kit_with_rose.jpg"
    cases = [
        (("enroll", "--gallery", gallery, "obama", tmp_path / "missing.jpg"), "missing.jpg: no such file"),
        (("enroll", "--gallery", gallery, "obama", not_image), "notes.jpg: not an image"),
        (("enroll", "--gallery", gallery, "obama", obama, blank), "blank.png: no face found"),
        (("enroll", "--gallery", gallery, "kit", two), "2 faces found"),
        (("enroll", "--gallery", gallery, "", obama), "must not be empty"),
        (("enroll", "--gallery", gallery, "../evil", obama), "path characters"),
        (("identify", "--gallery", gallery, obama), "does not exist"),
    ]
    for argv, message in cases:
        rc, out, err = run(*argv)
        assert rc == 2 and message in one_error_line(err), (argv, err)
        assert not gallery.exists(), argv  # nothing half-written: not even an empty gallery
    # An all-or-nothing person: one bad photo in the list and none of them is stored.
    assert run("enroll", "--gallery", gallery, "biden", knn / "train/biden/biden.jpg")[0] == 0
    before = Gallery.open(gallery).generation()
    rc, _, err = run("enroll", "--gallery", gallery, "obama", obama, blank)
    assert rc == 2 and Gallery.open(gallery).generation() == before
    # --keep-going stores the good ones and exits 1.
    rc, out, err = run("enroll", "--gallery", gallery, "obama", obama, blank, "--keep-going")
    assert rc == 1 and "failed obama <- " in err and "1 photo(s) enrolled" in out
    # Same photo again: skipped and said.
    rc, out, _ = run("enroll", "--gallery", gallery, "obama", obama)
    assert rc == 0 and "skipped obama" in out and "already enrolled (as obama)" in out
    # Several faces with --largest is fine.
    assert run("enroll", "--gallery", gallery, "kit_harington", two, "--largest")[0] == 0


def test_quality_gate(run, knn, tmp_path, shared_data):
    gallery = tmp_path / "g.db"
    src = cv2.imread(str(shared_data / "faces/face_recognition/obama-480p.jpg"))
    blurred, small = tmp_path / "blurred.png", tmp_path / "small.png"
    cv2.imwrite(str(blurred), cv2.GaussianBlur(src, (7, 7), 0))
    cv2.imwrite(str(small), cv2.resize(src, None, fx=0.3, fy=0.3, interpolation=cv2.INTER_AREA))
    rc, _, err = run("enroll", "--gallery", gallery, "obama", blurred)
    assert rc == 2 and "face too blurred" in one_error_line(err) and "--force" in err
    rc, _, err = run("enroll", "--gallery", gallery, "obama", small)
    assert rc == 2 and "face too small" in one_error_line(err)
    rc, out, err = run("enroll", "--gallery", gallery, "obama", blurred, small, "--force")
    assert rc == 0 and "2 photo(s) enrolled" in out


def test_foreign_gallery_and_other_model(run, knn, tmp_path, full_gallery):
    obama = knn / "test/obama1.jpg"
    text = tmp_path / "g.txt"
    text.write_text("hello\n" * 100)
    rc, _, err = run("identify", "--gallery", text, obama)
    assert rc == 2 and f"{text} is not a facestream gallery" in one_error_line(err)
    rc, _, err = run("enroll", "--gallery", text, "obama", obama)
    assert rc == 2 and "is not a facestream gallery" in one_error_line(err)
    assert text.read_text() == "hello\n" * 100
    rc, _, err = run("identify", "--gallery", full_gallery, obama, "--model", "facenet-vggface2")
    line = one_error_line(err)
    assert rc == 2 and "no samples made with model facenet-vggface2 (it has: dlib-resnet-v1)" in line
    assert "rebuild --model facenet-vggface2" in line
