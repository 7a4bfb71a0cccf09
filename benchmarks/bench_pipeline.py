"""Benchmark `facestream run` on the shared clip (1080p) and a 640x360 copy made here: as fast as possible
and with --realtime, against a single-process loop with the same models. Prints markdown tables.

    python benchmarks/bench_pipeline.py [--clips 1080p 360p] [--min-face 20] [--threads 1] [--shm on off]
        [--mode full guided]
    python benchmarks/bench_pipeline.py --baseline face_recognition [--clips 360p 1080p demo]

--shm on off: each pipeline run with frames in the shared-memory rings and with pixels inline
(transport.shm), interleaved, --repeat times each; the tables give medians over the repeats. --mode: the
same for detect.mode (default: guided, the config's default).

Per-stage latencies come from the JSONL (`latency_ms`: each stage including the queue before it);
CPU per stage from /proc (user+system seconds of each stage process, sampled while it runs).

--baseline face_recognition: instead, the pipeline (detect.mode full and guided, as fast as possible)
against the face_recognition library's per-frame loop on the same clips (benchmarks/baseline_fr.py)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from stream import doctor

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO.parent / "shared" / "data" / "video" / "facenet-pytorch-video.mp4"
TICK = os.sysconf("SC_CLK_TCK")


def make_small(src: Path, dst: Path, size=(640, 360)) -> Path:
    cap = cv2.VideoCapture(str(src))
    out = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"mp4v"), cap.get(cv2.CAP_PROP_FPS) or 25.0, size)
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        out.write(cv2.resize(frame, size, interpolation=cv2.INTER_AREA))
    out.release()
    return dst


def make_gallery(tmp: Path) -> Path:
    """One person enrolled from a crop of the clip's first frame (the largest face)."""
    cap = cv2.VideoCapture(str(CLIP))
    ok, frame = cap.read()
    x1, y1, x2, y2 = 285, 722, 377, 834
    cv2.imwrite(str(tmp / "subject.png"), frame[y1 - 56 : y2 + 56, x1 - 46 : x2 + 46])
    gallery = tmp / "g.db"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "stream",
            "enroll",
            "--gallery",
            str(gallery),
            "--force",
            "--largest",
            "subject",
            str(tmp / "subject.png"),
        ],
        check=True,
        capture_output=True,
    )
    return gallery


def stage_processes(sup_pid: int) -> list[tuple[int, list[str], list[str]]]:
    """(pid, command line, /proc stat fields after the name) of each stage process of a supervisor."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[1]) != sup_pid:
                continue
            cmd = (p / "cmdline").read_bytes().decode().split("\0")
        except (OSError, IndexError, ValueError):
            continue
        if "stage" in cmd:
            out.append((int(p.name), cmd, stat))
    return out


def stage_cpu(sup_pid: int, seen: dict[int, tuple[str, float]]) -> None:
    """Record user+system CPU seconds of each stage process (children of the supervisor)."""
    for pid, cmd, stat in stage_processes(sup_pid):
        seen[pid] = (cmd[cmd.index("stage") + 1], (int(stat[11]) + int(stat[12])) / TICK)


def pct(values, qs=(50, 95, 99)) -> list[float]:
    if not len(values):
        return [float("nan")] * len(qs)
    return [float(np.percentile(values, q)) for q in qs]


def run_pipeline(clip: Path, gallery: Path, tmp: Path, realtime: bool, cfg_text: str) -> dict:
    out = tmp / "r.jsonl"
    cfg = tmp / "bench.yaml"
    cfg.write_text(cfg_text)
    args = [
        sys.executable,
        "-m",
        "stream",
        "run",
        "--config",
        str(cfg),
        "--source",
        str(clip),
        "--gallery",
        str(gallery),
        "--out",
        str(out),
    ]
    if realtime:
        args.append("--realtime")
    t0 = time.monotonic()
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    cpu: dict[int, tuple[str, float]] = {}
    while proc.poll() is None:
        stage_cpu(proc.pid, cpu)
        time.sleep(0.2)
    stderr = proc.stderr.read()
    if proc.returncode != 0:
        raise SystemExit(f"pipeline failed ({proc.returncode}):\n{stderr[-3000:]}")
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    out.unlink()
    per_role: dict[str, float] = {}
    for role, sec in cpu.values():
        per_role[role] = per_role.get(role, 0.0) + sec
    return {
        **row_stats(rows),
        "wall": time.monotonic() - t0,
        "cpu": per_role,
        "summary": stderr[stderr.find("facestream run summary") :],
    }


def row_stats(rows: list[dict]) -> dict:
    """Frames out, throughput and latency percentiles from a run's result lines (`run --out`)."""
    lat = {k: np.array([r["latency_ms"][k] for r in rows]) for k in ("detect", "embed", "match", "total")}
    first = min(r["t_capture"] for r in rows)
    capture_ns = sorted(r["t_capture"] for r in rows)
    span = capture_ns[-1] - first
    return {
        "frames": len(rows),
        # Throughput from the first capture to the last result (model loading excluded).
        "fps": len(rows) / max(span + lat["total"][-1] / 1000, 1e-9),
        "e2e": pct(lat["total"]),
        "stages": {k: pct(lat[k], (50, 95)) for k in ("detect", "embed", "match")},
        "rows": rows,
    }


def run_single(clip: Path, gallery: Path, min_face: int, threads: int | None) -> dict:
    """The same models in one process, one frame at a time: read, detect, align, embed, match."""
    from stream.detector import MTCNN
    from stream.embedder import Embedder
    from stream.gallery.matcher import Matcher
    from stream.modelstore import model_path

    if threads:
        import torch

        torch.set_num_threads(threads)
    det = MTCNN(weights_dir=model_path("mtcnn"), min_face_size=min_face)
    emb = Embedder(threads=threads)
    matcher = Matcher(gallery, emb.name)
    cap = cv2.VideoCapture(str(clip))
    lat = []
    t0 = time.monotonic()
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        t = time.monotonic()
        frame = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        d = det.detect([frame])[0]
        if len(d.boxes):
            matcher.match(emb.embed(emb.crop(frame, d)))
        lat.append((time.monotonic() - t) * 1000)
    wall = time.monotonic() - t0
    return {"frames": len(lat), "fps": len(lat) / wall, "e2e": pct(lat)}


def median_run(rs: list[dict]) -> dict:
    """Medians over repeated runs of one setting (frames: the fewest)."""
    med = lambda xs: float(np.median(xs))  # noqa: E731
    return {
        "frames": min(r["frames"] for r in rs),
        "fps": med([r["fps"] for r in rs]),
        "e2e": [med([r["e2e"][i] for r in rs]) for i in range(3)],
        "stages": {k: [med([r["stages"][k][i] for r in rs]) for i in range(2)] for k in rs[0]["stages"]},
        "cpu": {k: med([r["cpu"].get(k, 0.0) for r in rs]) for k in rs[0]["cpu"]},
        "repeats": len(rs),
    }


def fmt(x: float) -> str:
    return "-" if x != x else f"{x:.0f}" if x >= 100 else f"{x:.1f}"


def compare_baseline(args: argparse.Namespace, cfg_text) -> int:
    import baseline_fr

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        make_gallery(tmp)  # writes subject.png: the walkway clips' enrolled photo, both sides
        # HOG finds no face in that crop (a face turned a little): the baseline is given its box.
        walkway = {"subject": f"{tmp / 'subject.png'}@46,56,138,168"}
        clips = {}
        for name in args.clips:
            if name == "1080p":
                clips[name] = (CLIP, walkway, None)
            elif name == "360p":
                clips[name] = (make_small(CLIP, tmp / "clip360.mp4"), walkway, None)
            else:
                clips[name] = baseline_fr.demo_clip(tmp)
        venv_dir = args.baseline_venv or baseline_fr.default_venv()
        baseline_fr.compare(clips, venv_dir, tmp, run_pipeline, cfg_text)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", nargs="+", default=["360p", "1080p"], choices=["360p", "1080p", "demo"])
    ap.add_argument("--min-face", type=int, default=20, help="MTCNN min_face_size (pixels)")
    ap.add_argument("--threads", type=int, default=None, help="torch/ORT threads per stage process")
    ap.add_argument("--hwm", type=int, default=2)
    ap.add_argument("--no-single", action="store_true")
    ap.add_argument("--shm", nargs="+", default=["on"], choices=["on", "off"], help="transport.shm settings")
    ap.add_argument(
        "--mode", nargs="+", default=["guided"], choices=["full", "guided"], help="detect.mode settings"
    )
    ap.add_argument("--repeat", type=int, default=1, help="runs of each setting (medians reported)")
    ap.add_argument("--no-realtime", action="store_true", help="only the as-fast-as-possible runs")
    ap.add_argument(
        "--baseline", choices=["face_recognition"], help="compare with that library's per-frame loop"
    )
    ap.add_argument(
        "--baseline-venv", type=Path, help="the baseline's venv (default: under $FACESTREAM_HOME)"
    )
    args = ap.parse_args()
    print(doctor.header())  # the machine the figures below were measured on
    if not CLIP.is_file():
        raise SystemExit(f"{CLIP}: shared clip not found")
    threads = f"threads: {args.threads}, " if args.threads else ""

    def cfg_text(shm: str, mode: str) -> str:
        return (
            f"detect: {{{threads}min_face_size: {args.min_face}, max_batch: 4, max_wait_ms: 5, mode: {mode}}}\n"
            f"embed: {{{threads}max_batch: 32, max_wait_ms: 2}}\n"
            f"transport: {{hwm: {args.hwm}, shm: {'true' if shm == 'on' else 'false'}}}\n"
        )

    if args.baseline:
        return compare_baseline(args, lambda mode: cfg_text(args.shm[0], mode))

    results = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        gallery = make_gallery(tmp)
        clips = (
            {"1080p": CLIP, "360p": make_small(CLIP, tmp / "clip360.mp4")}
            if "360p" in args.clips
            else {"1080p": CLIP}
        )
        for name in args.clips:
            clip = clips[name]
            for realtime in (False,) if args.no_realtime else (False, True):
                settings = [(shm, mode) for shm in args.shm for mode in args.mode]
                runs: dict[tuple[str, str], list[dict]] = {k: [] for k in settings}
                for _ in range(args.repeat):  # interleaved: a noisy neighbour hits every setting alike
                    for shm, mode in settings:
                        r = run_pipeline(clip, gallery, tmp, realtime, cfg_text(shm, mode))
                        runs[(shm, mode)].append(r)
                        print(
                            f"[{name} shm {shm} {mode} rt {realtime}] {r['frames']} frames, {r['fps']:.1f} fps",
                            file=sys.stderr,
                        )
                for (shm, mode), rs in runs.items():
                    r = median_run(rs)
                    label = "pipeline --realtime" if realtime else "pipeline, as fast as possible"
                    label += f", detect.mode {mode}" if len(args.mode) > 1 else ""
                    label += f", shm {shm}" if len(args.shm) > 1 else ""  # last: the shm table pairs by it
                    r.update(clip=name, mode=label)
                    results.append(r)
            if not args.no_single:
                s = run_single(clip, gallery, args.min_face, args.threads)
                s.update(clip=name, mode="single process loop")
                results.append(s)
    total = cv2.VideoCapture(str(CLIP)).get(cv2.CAP_PROP_FRAME_COUNT)
    print(
        f"\nConfig: min_face_size {args.min_face}, threads per stage {args.threads or 'default'}, "
        f"hwm {args.hwm}; {os.cpu_count()} CPUs\n"
    )
    print("| clip | mode | frames out | dropped | frames/s | e2e p50 ms | e2e p95 ms | e2e p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['clip']} | {r['mode']} | {r['frames']} | {int(total - r['frames'])} | {r['fps']:.1f} | "
            + " | ".join(fmt(x) for x in r["e2e"])
            + " |"
        )
    print(
        "\n| clip | mode | detect p50/p95 ms | embed p50/p95 ms | match p50/p95 ms | CPU s: capture / detect / embed / match / sink |"
    )
    print("|---|---|---|---|---|---|")
    for r in results:
        if "stages" not in r:
            continue
        st = r["stages"]
        cpu = " / ".join(f"{r['cpu'].get(k, 0):.1f}" for k in ("capture", "detect", "embed", "match", "sink"))
        print(
            f"| {r['clip']} | {r['mode']} | "
            + " | ".join(f"{fmt(st[k][0])} / {fmt(st[k][1])}" for k in ("detect", "embed", "match"))
            + f" | {cpu} |"
        )
    # Throughput compares the as-fast-as-possible run (queues full by design); latency compares the
    # --realtime run, where queues are empty unless the pipeline falls behind the camera.
    print(
        "\n| clip | throughput: pipeline / single-process | e2e p50: realtime pipeline / single-process "
        "| e2e p95: realtime pipeline / single-process |"
    )
    print("|---|---|---|---|")
    for name in args.clips:
        fast = next((r for r in results if r["clip"] == name and "possible" in r["mode"]), None)
        rt = next((r for r in results if r["clip"] == name and "--realtime" in r["mode"]), None)
        single = next((r for r in results if r["clip"] == name and r["mode"] == "single process loop"), None)
        if fast and rt and single:
            print(
                f"| {name} | {fast['fps'] / single['fps']:.2f} | {rt['e2e'][0] / single['e2e'][0]:.2f} "
                f"| {rt['e2e'][1] / single['e2e'][1]:.2f} |"
            )
    if len(args.shm) > 1:
        print(
            "\n| clip | mode | frames/s shm on / off | e2e p50 on / off | e2e p95 on / off | CPU s on / off |"
        )
        print("|---|---|---|---|---|---|")
        for r in results:
            if not r["mode"].endswith(", shm on"):
                continue
            base = r["mode"][: -len(", shm on")]
            off = next(x for x in results if x["clip"] == r["clip"] and x["mode"] == base + ", shm off")
            print(
                f"| {r['clip']} | {base} | {r['fps'] / off['fps']:.2f} | {r['e2e'][0] / off['e2e'][0]:.2f} "
                f"| {r['e2e'][1] / off['e2e'][1]:.2f} | {sum(r['cpu'].values()) / sum(off['cpu'].values()):.2f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
