"""`bench_pipeline.py --baseline face_recognition`: the pipeline against the face_recognition library's
own per-frame loop (HOG detector + dlib encodings, benchmarks/fr_loop.py) on the same clips, the same
enrolled photo and the same machine, both sides in one run.

The baseline runs in its own venv, made once under $FACESTREAM_HOME/bench-venvs/face_recognition (or
--baseline-venv) with pinned versions and reused; it is driven as a subprocess and prints JSON.
Clips: the shared walkway clip (1080p), its 640x360 copy, and the demo clip (stream/pipeline/demo_clip.py:
two shots of obama, enrolled from another photo, then a cut to biden, who is not enrolled), where the
truth is known, so that wrong names can be counted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import venv
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
# What `pip install dlib-bin face_recognition_models` + `face_recognition --no-deps` resolved to on
# 2026-11-30; opencv reads the frames, as face_recognition's own video examples do.
PINS = (
    "dlib-bin==20.0.1.post1",
    "face_recognition_models==0.3.0",
    "numpy==2.4.6",
    "pillow==13.0.0",
    "opencv-python-headless==5.0.0.93",
    "setuptools<81",  # face_recognition_models imports pkg_resources
)
FR = "face_recognition==1.3.0"
IOU = 0.5


def default_venv() -> Path:
    from stream.home import facestream_home

    return facestream_home() / "bench-venvs" / "face_recognition"


def ensure_venv(path: Path) -> Path:
    """The baseline venv's python, made on first use; reused while its pins are the same."""
    py = path / "bin" / "python"
    stamp = path / "facestream-pins.txt"
    want = "\n".join((*PINS, FR))
    if py.is_file() and stamp.is_file() and stamp.read_text() == want:
        return py
    print(f"making the face_recognition venv in {path} ...", file=sys.stderr)
    venv.create(path, with_pip=True, clear=True)
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, *PINS], check=True)
    subprocess.run([*pip, "--no-deps", FR], check=True)
    stamp.write_text(want)
    return py


def run_baseline(py: Path, clip: Path, enroll: dict[str, str]) -> dict:
    """enroll: {name: photo} or {name: photo@x1,y1,x2,y2} (a face box, for a face HOG misses)."""
    args = [str(py), str(HERE / "fr_loop.py"), "--clip", str(clip)]
    for name, photo in enroll.items():
        args += ["--enroll", f"{name}={photo}"]
    t0 = time.monotonic()
    proc = subprocess.run(args, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"face_recognition loop failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout)
    frames = [list(zip(f["boxes"], f["names"], strict=True)) for f in out["frames"]]
    return {"frames": frames, "wall": wall, "fps": len(frames) / out["loop_s"]}


def pipeline_frames(rows: list[dict]) -> list[list[tuple[list[float], str | None]]]:
    """Per frame (by seq) the faces of `facestream run`'s JSONL: (box, name)."""
    n = max((r["seq"] for r in rows), default=-1) + 1
    frames: list[list[tuple[list[float], str | None]]] = [[] for _ in range(n)]
    for r in rows:
        frames[r["seq"]] = [(f["box"], f["name"]) for f in r["faces"]]
    return frames


def iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def matched(ours: list, theirs: list) -> list[tuple[int, int]]:
    """Faces of one frame paired one-to-one at IoU >= 0.5, greedily by IoU: (ours, theirs) indices."""
    pairs = sorted(
        ((iou(a[0], b[0]), i, j) for i, a in enumerate(ours) for j, b in enumerate(theirs)), reverse=True
    )
    used_i, used_j, out = set(), set(), []
    for v, i, j in pairs:
        if v < IOU:
            break
        if i not in used_i and j not in used_j:
            used_i.add(i)
            used_j.add(j)
            out.append((i, j))
    return out


def covered(ours: list, theirs: list) -> int:
    """Their faces whose centre lies inside one of our boxes: found, whatever the box convention (HOG's
    boxes are squares of at least 36 px (with upsample 1) cut tighter than MTCNN's, so a face found by
    both can pair below IoU 0.5)."""
    n = 0
    for b, _ in theirs:
        cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
        n += any(a[0] <= cx <= a[2] and a[1] <= cy <= a[3] for a, _ in ours)
    return n


def score(frames: list, other: list, truth: list[str | None] | None) -> dict:
    """Faces found; the other side's faces paired with them (IoU >= 0.5) and covered by them (centre
    inside); paired faces named differently by the two sides; names given; wrong names (where the
    truth is known: each demo frame shows one person, and any name other than theirs is wrong)."""
    faces = sum(len(f) for f in frames)
    pairs = [(a, b, matched(a, b)) for a, b in zip(frames, other, strict=False)]
    names = [(i, n) for i, f in enumerate(frames) for _, n in f if n is not None]
    wrong = None if truth is None else sum(1 for i, n in names if i >= len(truth) or n != truth[i])
    return {
        "faces": faces,
        "matched": sum(len(m) for _, _, m in pairs),
        "covered": sum(covered(a, b) for a, b, _ in pairs),
        "disagree": sum(a[i][1] != b[j][1] for a, b, m in pairs for i, j in m),
        "names": len(names),
        "wrong": wrong,
    }


def demo_clip(tmp: Path) -> tuple[Path, dict[str, str], list[str | None]]:
    """The demo clip, its enrolled photo and the person who may be named in each frame (None: the
    shot shows someone not enrolled)."""
    from stream.pipeline.demo import ENROLL_NAME, ENROLL_PHOTO
    from stream.pipeline.demo_clip import build_clip
    from stream.pipeline.demo_samples import fetch_samples

    photos = fetch_samples()
    clip = tmp / "demo.mp4"
    truth: list[str | None] = []
    for seg in build_clip(photos, clip):
        who = seg.shot.person if seg.shot.person == ENROLL_NAME else None
        truth += [who] * (seg.last - seg.first + 1)
    return clip, {ENROLL_NAME: str(photos[ENROLL_PHOTO])}, truth


def enroll(gallery: Path, people: dict[str, str]) -> Path:
    """facestream's gallery from the same photos (MTCNN finds the face itself: the box is the baseline's)."""
    for name, photo in people.items():
        cmd = [sys.executable, "-m", "stream", "enroll", "--gallery", str(gallery), "--force", "--largest"]
        subprocess.run([*cmd, name, photo.partition("@")[0]], check=True, capture_output=True)
    return gallery


def compare(
    clips: dict[str, tuple[Path, dict[str, str], list[str | None] | None]],
    venv_dir: Path,
    tmp: Path,
    run_pipeline: Callable[[Path, Path, Path, bool, str], dict],
    cfg_text: Callable[[str], str],
) -> None:
    """Per clip: the baseline once, the pipeline with detect.mode full and guided; prints the tables."""
    py = ensure_venv(venv_dir)
    table = []
    for name, (clip, people, truth) in clips.items():
        gallery = enroll(tmp / f"{name}.db", people)
        load = os.getloadavg()[0]
        base = run_baseline(py, clip, people)
        print(
            f"[{name} face_recognition] {len(base['frames'])} frames, {base['fps']:.2f} fps", file=sys.stderr
        )
        sides = {"face_recognition (HOG + dlib), per frame": base}
        for mode in ("full", "guided"):
            r = run_pipeline(clip, gallery, tmp, False, cfg_text(mode))
            r["frames"] = pipeline_frames(r["rows"])
            print(
                f"[{name} facestream {mode}] {len(r['frames'])} frames, {r['fps']:.1f} fps", file=sys.stderr
            )
            sides[f"facestream run, detect.mode {mode}"] = r
        load = max(load, os.getloadavg()[0])
        for side, r in sides.items():
            s = score(r["frames"], base["frames"], truth)
            table.append((name, side, len(r["frames"]), s, r["wall"], r["fps"], base, load))
    print(
        f"\nface_recognition: {FR}, {PINS[0]}, HOG face_locations (upsample 1) + face_encodings, "
        "distance <= 0.6; same enrolled photo both sides. wall: the whole command (start, model "
        "loading, every frame); frames/s: from the first frame to the last (loading excluded).\n"
    )
    print(
        "| clip | side | frames | faces found | face_recognition's faces paired (IoU >= 0.5) / covered "
        "(centre inside) | paired, named differently | names given | wrong names | wall s | frames/s "
        "| wall: face_recognition / this | frames/s: this / face_recognition | load avg |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, side, n, s, wall, fps, base, load in table:
        is_base = side.startswith("face_recognition")
        other = "-" if is_base else f"{s['matched']} / {s['covered']}"
        differ = "-" if is_base else s["disagree"]
        wrong = "-" if s["wrong"] is None else s["wrong"]
        ratio_w = "1" if is_base else f"{base['wall'] / wall:.2f}"
        ratio_f = "1" if is_base else f"{fps / base['fps']:.2f}"
        print(
            f"| {name} | {side} | {n} | {s['faces']} | {other} | {differ} | {s['names']} | {wrong} | {wall:.1f} "
            f"| {fps:.2f} | {ratio_w} | {ratio_f} | {load:.1f} |"
        )
