"""MTCNN speed: stream.detector.MTCNN vs facenet-pytorch 2.5.3's MTCNN, same frames, same run.

    python benchmarks/bench_mtcnn.py [--facenet-src DIR] [--weights DIR] [--repeats N] [--batch B]

Frames: the shared reference video frames (data/reference/mtcnn/frames/*.png, 1920x1080), resized
with cv2.INTER_AREA to 640x480, 1280x720 and 1920x1080. For each size, ours and theirs run
interleaved (alternating who goes first) on one frame at a time and on batches of B frames; the
table gives median milliseconds per frame. Timings on a shared machine are noisy: look at the
speed-up column (both measured side by side) and the load average printed with the table.

facenet-pytorch comes from --facenet-src (a folder holding `facenet_pytorch/`) or else is fetched
with `pip download --no-deps facenet-pytorch==2.5.3` into --cache (see benchmarks/facenet_ref.py:
torchvision, PIL and requests are stood in for when missing). Our weights: --weights, else the
model cache ($FACESTREAM_HOME/models/mtcnn), else built into --cache from the wheel's state dicts.
The last columns check that both give the same detections on the benchmark frames.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from facenet_ref import fetch_facenet_pytorch, load_reference_mtcnn  # noqa: E402

from stream import doctor  # noqa: E402
from stream.detector import MTCNN  # noqa: E402
from stream.home import facestream_home, models_dir  # noqa: E402

SIZES = [(640, 480), (1280, 720), (1920, 1080)]
WEIGHTS = ("pnet.pt", "rnet.pt", "onet.pt")


def our_weights(args) -> Path:
    for d in (args.weights, models_dir() / "mtcnn"):
        if d and all((Path(d) / f).is_file() for f in WEIGHTS):
            return Path(d)
    from facestream_models.mtcnn import build_mtcnn

    out = args.cache / "mtcnn-weights"
    if not all((out / f).is_file() for f in WEIGHTS):
        src = (
            Path(args.facenet_src) if args.facenet_src else fetch_facenet_pytorch(args.cache)
        ) / "facenet_pytorch"
        build_mtcnn({f: src / "data" / f for f in WEIGHTS}, out, None)
    return out


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x1 = np.maximum(a[0], b[:, 0])
    y1 = np.maximum(a[1], b[:, 1])
    x2 = np.minimum(a[2], b[:, 2])
    y2 = np.minimum(a[3], b[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter)


def compare(ref_out, ours) -> tuple[int, int, int]:
    """(reference faces, of them matched by ours at IoU >= 0.9 / landmarks 3 px / prob 0.02, our extras)."""
    boxes, probs, points = ref_out
    n_ref = 0 if boxes is None else len(boxes)
    matched, used = 0, set()
    for i in range(n_ref):
        if not len(ours):
            break
        ious = iou(np.asarray(boxes[i], np.float64), ours.boxes.astype(np.float64))
        j = int(ious.argmax())
        if (
            ious[j] >= 0.9
            and np.abs(ours.landmarks[j] - points[i]).max() <= 3
            and abs(float(ours.scores[j]) - float(probs[i])) <= 0.02
        ):
            matched += 1
            used.add(j)
    return n_ref, matched, len(ours) - len(used)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--facenet-src", type=Path, help="folder holding facenet_pytorch/ (default: pip download)"
    )
    ap.add_argument("--weights", type=Path, help="our MTCNN weights folder (pnet.pt, rnet.pt, onet.pt)")
    ap.add_argument("--cache", type=Path, default=facestream_home() / "bench")
    ap.add_argument(
        "--frames", type=Path, default=ROOT.parent / "shared" / "data" / "reference" / "mtcnn" / "frames"
    )
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()
    print(doctor.header())  # the machine the figures below were measured on

    paths = sorted(args.frames.glob("*.png"))
    if not paths:
        sys.exit(f"no frames in {args.frames}")
    base = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]
    ours = MTCNN(our_weights(args), device="cpu")
    ref = load_reference_mtcnn(args.facenet_src, args.cache)

    load0 = os.getloadavg()[0]
    rows = []
    for w, h in SIZES:
        frames = [cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in base]
        batch = [
            frames[i % len(frames)] if i < len(frames) else frames[i % len(frames)][:, ::-1].copy()
            for i in range(args.batch)
        ]
        # warm-up, and detections for the parity columns
        n_ref = n_match = n_extra = 0
        for f in frames:
            a, b, c = compare(ref.detect(f, landmarks=True), ours.detect([f])[0])
            n_ref, n_match, n_extra = n_ref + a, n_match + b, n_extra + c
        stacked = np.stack(batch)
        ref.detect(stacked)
        ours.detect(batch)
        t = {k: [] for k in ("ref1", "our1", "refB", "ourB")}
        for rep in range(args.repeats):
            for f in frames:
                pair = [
                    ("ref1", partial(ref.detect, f, landmarks=True)),
                    ("our1", partial(ours.detect, [f])),
                ]
                for k, fn in pair if rep % 2 == 0 else pair[::-1]:
                    t[k].append(timed(fn))
            pair = [
                ("refB", partial(ref.detect, stacked, landmarks=True)),
                ("ourB", partial(ours.detect, batch)),
            ]
            for k, fn in pair if rep % 2 == 0 else pair[::-1]:
                t[k].append(timed(fn) / args.batch)
        med = {k: statistics.median(v) * 1000 for k, v in t.items()}
        rows.append((w, h, med, n_ref, n_match, n_extra))
        print(f"  {w}x{h} done", file=sys.stderr)
    load1 = os.getloadavg()[0]

    print(
        f"\nMTCNN, ms per frame (median of {args.repeats} x {len(base)} frames; batch = {args.batch} frames per call). "
        f"CPU: {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"load average {load0:.1f} -> {load1:.1f}\n"
    )
    b = args.batch
    print(
        f"| frame | facenet-pytorch 1 frame | ours 1 frame | speed-up | facenet-pytorch batch {b} | ours batch {b} "
        "| speed-up | reference faces matched | our extras |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for w, h, m, n_ref, n_match, n_extra in rows:
        print(
            f"| {w}x{h} | {m['ref1']:.1f} | {m['our1']:.1f} | {m['ref1'] / m['our1']:.1f}x "
            f"| {m['refB']:.1f} | {m['ourB']:.1f} | {m['refB'] / m['ourB']:.1f}x | {n_match}/{n_ref} | {n_extra} |"
        )


if __name__ == "__main__":
    main()
