"""The liveness benchmark: presentation attacks made from the shared data (benchmarks/liveness_attacks.py)
and the real people of the shared walkway clip, through the pipeline's own code: MTCNN, the match
stage's tracker (geometry only), the face mesh's eye aspect ratio, and stream.liveness.judge in each
mode. Prints markdown tables.

    python benchmarks/bench_liveness.py [--attacks N] [--frames N]

- attack pass rate: attack clips whose main track (most faces) is ever marked live;
- real faces: the clip's tracks with at least --min-faces faces: marked live / not_live / undecided,
  and the time from a track's first face to its decision;
- cost per tracked face: the face mesh (crop + ONNX + eye ratio) and the judge, against the default
  embedder on the same faces, measured interleaved in this run.
Challenge mode is run with each direction asked (left, right) on every clip.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import liveness_attacks as la  # noqa: E402
from clips import read_clip  # noqa: E402

from stream.detections import Detections  # noqa: E402
from stream.gallery.matcher import Match  # noqa: E402
from stream.gallery.tracking import FaceTracker  # noqa: E402
from stream.imageio import load_image  # noqa: E402
from stream.liveness.judge import CHALLENGES, LIVE, NOT_LIVE, LivenessJudge, LivenessRules  # noqa: E402
from stream.liveness.mesh import FaceMesh  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CLIP = DATA / "video" / "facenet-pytorch-video.mp4"
FPS = 25.0
PHOTOS = [
    "faces/face_recognition/knn_examples/train/obama/obama.jpg",
    "faces/face_recognition/knn_examples/train/biden/biden.jpg",
    "faces/face_recognition/knn_examples/train/kit_harington/john1.jpeg",
    "faces/face_recognition/knn_examples/train/alex_lacamoire/img1.jpg",
    "faces/face_recognition/knn_examples/train/rose_leslie/img1.jpg",
    "faces/facenet-pytorch/test_images/angelina_jolie/1.jpg",
    "faces/facenet-pytorch/test_images/kate_siegel/1.jpg",
    "faces/facenet-pytorch/test_images/paul_rudd/1.jpg",
    "faces/facenet-pytorch/test_images/shea_whigham/1.jpg",
    "faces/face_recognition/obama-720p.jpg",
]


@dataclass
class Seq:
    """One clip's faces: per frame, the detections, track ids and eye ratios."""

    name: str
    kind: str  # print | print+glare+noise | screen | real
    dets: list[Detections] = field(default_factory=list)
    tracks: list[np.ndarray] = field(default_factory=list)
    eyes: list[np.ndarray] = field(default_factory=list)


def analyse(name: str, kind: str, frames: list[np.ndarray], detect: Callable, mesh: FaceMesh) -> Seq:
    seq = Seq(name, kind)
    tracker = FaceTracker(name, 0.6)
    for i in range(0, len(frames), 4):
        for frame, d in zip(frames[i : i + 4], detect(frames[i : i + 4]), strict=True):
            d = d[d.scores >= 0.95]
            tracked, _ = tracker.update(
                len(seq.dets) / FPS, d.boxes, [Match(None, float("inf"), None) for _ in range(len(d))]
            )
            seq.dets.append(d)
            seq.tracks.append(np.array([tf.track for tf in tracked], np.int32))
            seq.eyes.append(mesh.eyes(frame, d.boxes, d.landmarks))
    return seq


class Ask(random.Random):
    """The challenge the benchmark asks every track (instead of a random one)."""

    def __init__(self, challenge: tuple[str, ...] | None):
        super().__init__(0)
        self.challenge = challenge

    def choice(self, seq):  # type: ignore[no-untyped-def, override]
        return self.challenge if self.challenge is not None else super().choice(seq)


def judge(
    seq: Seq, mode: str, challenge: tuple[str, ...] | None = None
) -> dict[int, tuple[str, float | None, int]]:
    """track -> (verdict, seconds from first face to the decision, faces)."""
    j = LivenessJudge(seq.name, LivenessRules(mode=mode), Ask(challenge))
    faces: dict[int, int] = {}
    for i, (d, tr, ey) in enumerate(zip(seq.dets, seq.tracks, seq.eyes, strict=True)):
        for k in tr.tolist():
            faces[k] = faces.get(k, 0) + 1
        j.update(i / FPS, tr, d.landmarks, ey)
    out = {}
    for k, st in j.tracks.items():
        after = None if st.decided_at is None else st.decided_at - st.first_seen
        out[k] = (st.verdict, after, faces.get(k, 0))
    return out


def with_blinks(seq: Seq, frames: list[np.ndarray], at: int, mesh: FaceMesh, min_faces: int) -> Seq:
    """A copy of seq where every track with >= min_faces faces gets a SYNTHETIC blink (eyes painted
    shut, liveness_attacks.close_eyes) on its faces at..at+2 (counted from its first face); the eye
    ratios of those frames are measured again on the painted pixels. Detections and tracks are
    kept (painting the eyes does not move the face)."""
    first: dict[int, list[int]] = {}
    for f, tr in enumerate(seq.tracks):
        for k in tr.tolist():
            first.setdefault(k, []).append(f)
    paint: dict[int, set[int]] = {}
    for k, fs in first.items():
        if len(fs) >= min_faces:
            for f in fs[at : at + 3]:
                paint.setdefault(f, set()).add(k)
    out = Seq(seq.name + " + synthetic blink", seq.kind + "+blink", seq.dets, seq.tracks, list(seq.eyes))
    for f, tracks in paint.items():
        d, tr = seq.dets[f], seq.tracks[f]
        rows = [i for i, k in enumerate(tr.tolist()) if k in tracks]
        pts, _ = mesh.points(frames[f], d.boxes[rows], d.landmarks[rows])
        img = frames[f]
        for p in pts:
            img = la.close_eyes(img, p)
        out.eyes[f] = mesh.eyes(img, d.boxes, d.landmarks)
    return out


def main_track(seq: Seq) -> int | None:
    counts: dict[int, int] = {}
    for tr in seq.tracks:
        for k in tr.tolist():
            counts[k] = counts.get(k, 0) + 1
    return max(counts, key=lambda k: counts[k]) if counts else None


def attacks(
    n: int, frames: int, clip: list[np.ndarray], clip_seq: Seq
) -> list[tuple[str, str, list[np.ndarray]]]:
    ref = json.loads((DATA / "reference" / "mtcnn" / "detections.json").read_text())["images"]
    bg = la.background(clip[len(clip) // 2])
    out = []
    for i, rel in enumerate(PHOTOS[:n]):
        faces = ref[rel]["faces"] if isinstance(ref[rel], dict) else ref[rel]
        photo = la.portrait(load_image(DATA / rel), faces[0]["box"], margin=0.6)
        out.append(
            (
                f"print {Path(rel).parent.name}/{Path(rel).name}",
                "print",
                la.print_attack(photo, bg, frames, seed=i),
            )
        )
        out.append(
            (
                f"print+glare+noise {Path(rel).name}",
                "print+glare+noise",
                la.print_attack(photo, bg, frames, glare=True, noise=True, seed=100 + i),
            )
        )
    # Screen replays: the clip zoomed to each of its longest-lived people.
    counts: dict[int, list[tuple[int, np.ndarray]]] = {}
    for f, (d, tr) in enumerate(zip(clip_seq.dets, clip_seq.tracks, strict=True)):
        for k, box in zip(tr.tolist(), d.boxes, strict=True):
            counts.setdefault(k, []).append((f, box))
    people = sorted(counts.values(), key=len, reverse=True)[:n]
    for p, seen in enumerate(people):
        f0 = seen[0][0]
        f1 = min(f0 + frames, seen[-1][0] + 1)
        by_frame = dict(seen)
        centres, last = [], seen[0][1]
        for f in range(f0, f1):
            last = by_frame.get(f, last)
            centres.append(((last[0] + last[2]) / 2, (last[1] + last[3]) / 2))
        size = max(last[2] - last[0], last[3] - last[1])
        window = int(min(max(size * 3.0, 120), 1000))
        out.append(
            (
                f"screen replay of person {p}",
                "screen",
                la.screen_replay(clip[f0:f1], centres, window, bg, seed=200 + p),
            )
        )
    return out


def cost(
    mesh: FaceMesh, seqs: list[Seq], frames_of: dict[str, list[np.ndarray]], repeats: int
) -> dict[str, float]:
    """ms per face: the face mesh's eyes, the judge, and the default embedder (crop + embed), interleaved."""
    from stream.embedder import Embedder

    emb = Embedder()
    t_mesh = t_emb = t_judge = 0.0
    n = 0
    for _ in range(repeats):
        for seq in seqs:
            j = LivenessJudge(seq.name, LivenessRules(mode="blink"), random.Random(0))
            for i, (frame, d, tr) in enumerate(zip(frames_of[seq.name], seq.dets, seq.tracks, strict=True)):
                if not len(d):
                    continue
                a = time.perf_counter()
                ey = mesh.eyes(frame, d.boxes, d.landmarks)
                b = time.perf_counter()
                emb.embed(emb.crop(frame, d))
                c = time.perf_counter()
                j.update(i / FPS, tr, d.landmarks, ey)
                e = time.perf_counter()
                t_mesh, t_emb, t_judge, n = t_mesh + b - a, t_emb + c - b, t_judge + e - c, n + len(d)
    return {
        "faces": n,
        "mesh_ms": 1e3 * t_mesh / n,
        "embed_ms": 1e3 * t_emb / n,
        "judge_ms": 1e3 * t_judge / n,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--attacks", type=int, default=5, help="photos (and screen replays) to attack with")
    ap.add_argument("--frames", type=int, default=175, help="frames per attack clip (25 fps; > the window)")
    ap.add_argument(
        "--min-face", type=int, default=40, help="MTCNN's smallest face (a kiosk's faces are large)"
    )
    ap.add_argument("--min-faces", type=int, default=10, help="real tracks shorter than this are not counted")
    ap.add_argument("--repeats", type=int, default=1, help="passes of the cost measurement")
    args = ap.parse_args()

    from stream.detector import MTCNN
    from stream.modelstore import model_path

    mtcnn = MTCNN(model_path("mtcnn"), device="cpu", min_face_size=args.min_face)
    mesh = FaceMesh()
    clip = read_clip(CLIP)
    from stream import doctor

    print(doctor.header())
    print(f"load: {open('/proc/loadavg').read().split()[:3]}  cpus: {os.cpu_count()}")
    t0 = time.monotonic()
    real = analyse("walkway clip", "real", clip, mtcnn.detect, mesh)
    seqs = [real]
    frames_of = {real.name: clip}
    for name, kind, frames in attacks(args.attacks, args.frames, clip, real):
        seqs.append(analyse(name, kind, frames, mtcnn.detect, mesh))
        frames_of[name] = frames
    for s in [s for s in seqs if s.kind == "print"]:
        seqs.append(with_blinks(s, frames_of[s.name], 50, mesh, args.min_faces))
    real_blink = with_blinks(real, clip, 10, mesh, args.min_faces)
    print(
        f"detection + tracking + face mesh over {sum(len(s.dets) for s in seqs)} frames: {time.monotonic() - t0:.0f} s\n"
    )

    modes = [("blink", None), ("challenge", CHALLENGES[0]), ("challenge", CHALLENGES[1])]

    def label(m: str, c: tuple[str, ...] | None) -> str:
        return m + (" " + ",".join(x.removeprefix("turn_") for x in c) if c else "")

    print("Attacks: clips passed (main track marked live) [median s to not_live; reasons]\n")
    print("| attack | clips | " + " | ".join(label(m, c) for m, c in modes) + " |")
    print("|---|---|" + "---|" * len(modes))
    for kind in ("print", "print+glare+noise", "screen", "print+blink"):
        group = [s for s in seqs if s.kind == kind]
        cells = []
        for mode, ch in modes:
            passed, dead, reasons = 0, [], set()
            for s in group:
                k = main_track(s)
                if k is None:
                    continue
                j = LivenessJudge(s.name, LivenessRules(mode=mode), Ask(ch))
                for i, (d, tr, ey) in enumerate(zip(s.dets, s.tracks, s.eyes, strict=True)):
                    j.update(i / FPS, tr, d.landmarks, ey)
                st = j.tracks[k]
                passed += int(st.verdict == LIVE)
                if st.verdict == NOT_LIVE and st.decided_at is not None:
                    dead.append(st.decided_at - st.first_seen)
                    reasons.add(st.reason.split(" within")[0])
            med = f"{np.median(dead):.1f} s" if dead else "-"
            cells.append(f"{passed}/{len(group)} [{med}; {', '.join(sorted(reasons))}]")
        print(f"| {kind} | {len(group)} | " + " | ".join(cells) + " |")

    print(f"\nReal faces (walkway clip, nobody was asked anything; tracks with >= {args.min_faces} faces)\n")
    print("| mode | tracks | live | not_live | undecided | median s to live | median s to not_live |")
    print("|---|---|---|---|---|---|---|")
    for seq, mode, ch in [(real, m, c) for m, c in modes] + [(real_blink, "blink", None)]:
        res = [v for v in judge(seq, mode, ch).values() if v[2] >= args.min_faces]
        live = [v[1] for v in res if v[0] == LIVE]
        dead = [v[1] for v in res if v[0] == NOT_LIVE]

        def med(xs: list) -> str:
            return f"{np.median(xs):.2f}" if xs else "-"

        print(
            f"| {label(mode, ch)}{' (synthetic blink at face 10)' if seq is real_blink else ''} | {len(res)} | {len(live)} | {len(dead)} | "
            f"{len(res) - len(live) - len(dead)} | {med(live)} | {med(dead)} |"
        )
    c = cost(mesh, seqs[:3], frames_of, args.repeats)
    print(
        f"\nCost per tracked face ({c['faces']} faces, interleaved): face mesh {c['mesh_ms']:.2f} ms, judge "
        f"{c['judge_ms']:.3f} ms, default embedder (crop + embed) {c['embed_ms']:.2f} ms; mesh / embedder = "
        f"{c['mesh_ms'] / c['embed_ms']:.2f}"
    )
    print(f"load after: {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
