"""Guided detection vs the whole frame every frame: what it saves and what it costs in recall.

    python benchmarks/bench_guided.py [--frames N] [--full-every-s S]

Clips (frames in memory, RGB):
- walkway-1080p / walkway-360p: the shared clip (../shared/data/video) and a 640x360 copy: a moving
  crowd, the worst case for guided detection;
- entering: a fixed 640x360 camera (a blurred walkway frame as the scene, camera noise on every
  frame) in which a person (a shared photo) walks in from the left, stops, and stands still;
- still-face: the same scene with that person standing still from the first frame to the last;
- empty: the scene with nobody (what a quiet camera costs).
For each clip both modes run on the same frames, one after the other, in one process: the whole-frame
detections are the reference. Reported: faces found by guided among the whole-frame faces (IoU >= 0.8;
goal >= 0.98), extra faces guided found that the whole frame did not, frames until the entering face
is found (guided vs whole frame), detection milliseconds per frame (mean, each mode) and their ratio,
and what guided did per frame (whole / regions / nothing).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

# As the pipeline's stages run (`facestream stage`, stream/pipeline/commands.py): idle torch threads sleep. Spinning ones
# made detection ~20x slower on this shared 2-core machine under load (another engineer's work).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clips import read_clip  # noqa: E402

from stream import doctor  # noqa: E402
from stream.detections import Detections  # noqa: E402
from stream.detector import MTCNN  # noqa: E402
from stream.guided import DetectionPlan, GuidedSettings  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
CLIP = DATA / "video" / "facenet-pytorch-video.mp4"
PERSON = DATA / "faces" / "face_recognition" / "obama-480p.jpg"
FPS = 25.0


def scene() -> np.ndarray:
    """A fixed camera's view with nobody in it: a walkway frame blurred past any face."""
    (frame,) = read_clip(CLIP, 1, (640, 360))
    return cv2.GaussianBlur(frame, (0, 0), 12)


def person(height: int = 200) -> np.ndarray:
    bgr = cv2.imread(str(PERSON))
    h, w = bgr.shape[:2]
    img = cv2.resize(bgr, (round(w * height / h), height), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def composed(frames: int, path_x: list[int], seed: int = 0) -> list[np.ndarray]:
    """The scene with the person's photo at x = path_x[i] (None-like negative: not in view), plus
    camera noise (sigma 2 grey levels) on every frame, as a real sensor gives."""
    rng = np.random.default_rng(seed)
    bg, who = scene(), person()
    ph, pw = who.shape[:2]
    out = []
    for i in range(frames):
        img = bg.copy()
        x = path_x[i]
        if x > -pw:
            x0, x1 = max(0, x), min(640, x + pw)
            img[100 : 100 + ph, x0:x1] = who[:, x0 - x : x1 - x]
        noise = rng.normal(0, 2, img.shape)
        out.append(np.clip(img + noise, 0, 255).astype(np.uint8))
    return out


def clips(n: int) -> dict[str, list[np.ndarray]]:
    pw = person().shape[1]
    enter = 15  # frames before the person appears
    walk = [min(-pw + (i - enter) * 16, 220) if i >= enter else -pw - 1 for i in range(n)]
    return {
        "walkway-1080p": read_clip(CLIP, n),
        "walkway-360p": read_clip(CLIP, n, (640, 360)),
        "entering": composed(n, walk, 1),
        "still-face": composed(n, [220] * n, 2),
        "empty": composed(n, [-10_000] * n, 3),
    }


def iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def run(detector: MTCNN, frames: list[np.ndarray], settings: GuidedSettings) -> dict[str, object]:
    full: list[Detections] = []
    guided: list[Detections] = []
    t_full = t_guided = 0.0
    plans: Counter[str] = Counter()
    plan = DetectionPlan(settings)
    for i, frame in enumerate(frames):
        t0 = time.perf_counter()
        full.append(detector.detect([frame])[0])
        t1 = time.perf_counter()
        p = plan.plan(frame, i / FPS)
        got = detector.detect_regions([frame], [p.regions], [p.min_faces], [p.max_faces])[0]
        plan.observe(got.boxes)
        t2 = time.perf_counter()
        guided.append(got)
        plans[p.reason] += 1
        t_full += t1 - t0
        t_guided += t2 - t1
    faces = sum(len(d) for d in full)
    found = sum(
        sum(1 for b in f.boxes if any(iou(b, g) >= 0.8 for g in gd.boxes))
        for f, gd in zip(full, guided, strict=True)
    )
    extra = sum(
        sum(1 for g in gd.boxes if not any(iou(g, b) >= 0.8 for b in f.boxes))
        for f, gd in zip(full, guided, strict=True)
    )
    first_full = next((i for i, d in enumerate(full) if len(d)), None)
    first_guided = next((i for i, d in enumerate(guided) if len(d)), None)
    return {
        "frames": len(frames),
        "faces": faces,
        "recall": found / faces if faces else None,
        "extra": extra,
        "first": (first_full, first_guided),
        "ms_full": 1000 * t_full / len(frames),
        "ms_guided": 1000 * t_guided / len(frames),
        "plans": plans,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=75)
    ap.add_argument("--full-every-s", type=float, default=1.0)
    ap.add_argument("--clips", nargs="*", help="only these clips (default: all)")
    args = ap.parse_args()
    print(doctor.header())
    detector = MTCNN(device="cpu")
    settings = GuidedSettings(full_every_s=args.full_every_s)
    detector.detect([np.zeros((360, 640, 3), np.uint8)])  # warm-up
    print(f"\nfull_every_s {args.full_every_s}, {args.frames} frames per clip at {FPS:g} fps\n")
    print(
        "| clip | whole-frame faces | found by guided (IoU >= 0.8) | extra | first face: whole / guided "
        "| ms/frame whole | ms/frame guided | guided / whole | guided plans |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, frames in clips(args.frames).items():
        if args.clips and name not in args.clips:
            continue
        r = run(detector, frames, settings)
        recall = "-" if r["recall"] is None else f"{r['recall']:.3f}"
        first = r["first"]
        plans = ", ".join(f"{k} {v}" for k, v in sorted(r["plans"].items()))  # type: ignore[attr-defined]
        print(
            f"| {name} | {r['faces']} | {recall} | {r['extra']} | {first[0]} / {first[1]} "  # type: ignore[index]
            f"| {r['ms_full']:.1f} | {r['ms_guided']:.1f} | {r['ms_guided'] / r['ms_full']:.2f} | {plans} |"  # type: ignore[operator]
        )


if __name__ == "__main__":
    main()
