"""`facestream demo` on a fresh server: the sample photos (the real face_recognition 1.3.0 sdist from
PyPI, pinned and sha256-checked), the clip made from them, and one end-to-end run of the command in a
subprocess with its own $FACESTREAM_HOME and no network (real models, real stage processes)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import missing

from stream.errors import FacestreamError
from stream.pipeline.demo import frame_ranges
from stream.pipeline.demo_clip import SHOTS, SIZE, build_clip
from stream.pipeline.demo_samples import FACE_RECOGNITION, fetch_samples, samples_dir
from stream.pypi import fetch_package, sha256_file

pytestmark = pytest.mark.e2e  # every test here starts processes

PINS = {Path(m).name: sha for m, sha in FACE_RECOGNITION.members.items()}


def offline_env(tmp: Path) -> dict[str, str]:
    """pip pointed at a closed port (and no local wheel folders): what an offline server sees."""
    empty = tmp / "no-links"
    empty.mkdir(exist_ok=True)
    dead = "http://127.0.0.1:9/simple"
    return {
        "PIP_INDEX_URL": dead,
        "PIP_EXTRA_INDEX_URL": dead,
        "PIP_FIND_LINKS": str(empty),
        "PIP_RETRIES": "0",
    }


@pytest.fixture(scope="module")
def sdist() -> Path:
    """The pinned sdist, downloaded once into the default $FACESTREAM_HOME (like the model sources)."""
    from stream.home import downloads_dir

    try:
        return fetch_package(FACE_RECOGNITION, downloads_dir())
    except FacestreamError as e:
        missing(f"cannot get the face_recognition sdist: {e}")


@pytest.fixture(scope="module")
def photos(sdist: Path, tmp_path_factory) -> dict[str, Path]:
    return fetch_samples(tmp_path_factory.mktemp("home"), from_file=sdist)


# ----- the sample photos ------------------------------------------------------------------------------
def test_fetch_checks_caches_and_repairs(sdist: Path, tmp_path: Path, monkeypatch) -> None:
    home = tmp_path / "home"
    archive = home / "downloads" / FACE_RECOGNITION.filename
    archive.parent.mkdir(parents=True)
    archive.write_bytes(sdist.read_bytes()[:-100])  # a cached sdist that was altered (or cut short)
    try:
        got = fetch_samples(home)  # rejected, then a real `pip download` of the pinned sdist
    except FacestreamError as e:
        missing(f"PyPI not reachable: {e}")
    assert sha256_file(archive) == FACE_RECOGNITION.sha256
    assert {k: sha256_file(p) for k, p in got.items()} == PINS
    assert all(p.parent == samples_dir(home) for p in got.values())

    for k, v in offline_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    # Cached: no network needed. An altered photo is extracted again from the cached sdist.
    got["obama.jpg"].write_bytes(b"not the pinned photo")
    assert sha256_file(fetch_samples(home)["obama.jpg"]) == PINS["obama.jpg"]
    # An altered sdist is never used: dropped, and offline that is one clear error naming the fix.
    archive.write_bytes(b"x" * 1000)
    got["biden.jpg"].unlink()
    with pytest.raises(FacestreamError, match=r"demo photos: cannot download .* --from FILE") as err:
        fetch_samples(home)
    assert "\n" not in str(err.value)
    assert not archive.exists()
    # A local copy (--from) is checked too: a wrong file is refused, the right one works offline.
    bad = tmp_path / FACE_RECOGNITION.filename
    bad.write_bytes(b"x" * 1000)
    with pytest.raises(FacestreamError, match="sha256"):
        fetch_samples(home, from_file=bad)
    assert sha256_file(fetch_samples(home, from_file=sdist)["biden.jpg"]) == PINS["biden.jpg"]


# ----- the clip ---------------------------------------------------------------------------------------
def read_frames(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    return frames


def sharpness(bgr: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())


def test_clip_has_every_frame_camera_motion_and_cuts(photos: dict[str, Path], tmp_path: Path) -> None:
    segments = build_clip(photos, tmp_path / "clip.mp4")
    frames = read_frames(tmp_path / "clip.mp4")
    assert len(frames) == sum(s.frames for s in SHOTS) == segments[-1].last + 1
    assert frames[0].shape == (SIZE[1], SIZE[0], 3)
    assert [s.shot for s in segments] == list(SHOTS)
    assert [s.first for s in segments[1:]] == [s.last + 1 for s in segments[:-1]]
    diff = [float(cv2.absdiff(a, b).mean()) for a, b in zip(frames, frames[1:], strict=False)]
    cuts = [s.first for s in segments[1:]]
    within = [d for i, d in enumerate(diff) if i + 1 not in cuts]
    # The camera never stands still inside a shot, and travels far over a shot.
    assert min(within) > 0.3
    for s in segments:
        assert cv2.absdiff(frames[s.first], frames[s.last]).mean() > 20
    # A cut changes the whole picture at once: far more than any frame-to-frame move inside a shot.
    for c in cuts:
        assert diff[c - 1] > 2 * max(within), (c, diff[c - 1], max(within))
    # The pan blurs its middle frames (motion blur); the zoom shot starts out of focus.
    pan, zoom = segments[0], segments[1]
    assert sharpness(frames[(pan.first + pan.last) // 2]) < 0.5 * sharpness(frames[pan.first])
    assert sharpness(frames[zoom.first]) < 0.5 * sharpness(frames[zoom.last])
    assert segments[-1].shot.person != segments[-2].shot.person  # the last cut is to someone else


def test_frame_ranges() -> None:
    assert frame_ranges([]) == ""
    assert frame_ranges([7, 0, 1, 2, 5, 8, 2]) == "0-2, 5, 7-8"


# ----- the command, end to end ------------------------------------------------------------------------
def run_demo(home: Path, cwd: Path) -> subprocess.CompletedProcess:
    """`facestream demo` with no arguments, in cwd, with this $FACESTREAM_HOME and no network."""
    env = {**os.environ, **offline_env(cwd), "FACESTREAM_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "stream", "demo"]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def demo_run(models_home: Path, sdist: Path, tmp_path_factory):
    """`facestream demo` with no arguments, as a new user after set-up: a fresh $FACESTREAM_HOME with
    the built models and the cached photos, run from an empty folder, with no network."""
    tmp = tmp_path_factory.mktemp("demo")
    home = tmp / "home"
    shutil.copytree(models_home / "models", home / "models")
    fetch_samples(home, from_file=sdist)
    work = tmp / "work"
    work.mkdir()
    t0 = time.monotonic()
    proc = run_demo(home, work)
    print(f"demo took {time.monotonic() - t0:.1f} s\n{proc.stdout}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, proc


def test_demo_names_the_enrolled_person_and_not_the_stranger(demo_run) -> None:
    work, proc = demo_run
    rows = [json.loads(line) for line in (work / "facestream-demo.jsonl").read_text().splitlines()]
    n = sum(s.frames for s in SHOTS)
    assert [r["seq"] for r in rows] == list(range(n))  # every frame, once, in order
    first = 0
    for shot in SHOTS:
        shot_rows = rows[first : first + shot.frames]
        first += shot.frames
        assert all(len(r["faces"]) == 1 for r in shot_rows), shot.photo  # one face in every frame
        names = [r["faces"][0]["name"] for r in shot_rows]
        if shot.person == "obama":
            # Named from one photo despite blur and zoom; a few first frames of a track may wait.
            assert set(names) <= {"obama", None}
            assert names.count("obama") >= 2 * shot.frames // 3, (shot.photo, names)
        else:
            # The hard cut: biden appears where obama just was, and is never named obama (or anyone).
            assert set(names) == {None}, (shot.photo, names)
            assert shot_rows[0]["faces"][0]["track"] != rows[first - shot.frames - 1]["faces"][0]["track"]
            assert min(r["faces"][0]["distance"] for r in shot_rows) > 0.6
    assert len(read_frames(work / "facestream-demo.mp4")) == n


def test_demo_summary_reads_for_a_newcomer(demo_run) -> None:
    _, proc = demo_run
    out = proc.stdout
    for line in (
        "facestream demo summary",
        "enrolled: obama, from one photo (obama.jpg)",
        "frames 0-29 obama2.jpg, pan left to right: obama ",
        "frames 60-89 biden.jpg, cut to another person at the same place, zoom out: unknown 30/30 "
        "(expected: unknown, biden is not enrolled)",
        "in all: 90 frames, 90 faces",
        "obama: named in frames ",
        "unknown: ",
        "latency p50/p95 (ms): detect ",
        "outputs: facestream-demo.mp4 (annotated video), facestream-demo.jsonl",
    ):
        assert line in out, (line, out)
    assert "Traceback" not in proc.stderr


def test_demo_offline_without_photos_says_how_to_fix(tmp_path: Path) -> None:
    proc = run_demo(tmp_path / "home", tmp_path)  # fails before any model is needed
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("facestream: error: demo photos: cannot download face_recognition-1.3.0.tar.gz")
    assert "--from FILE" in last and "Traceback" not in proc.stderr
