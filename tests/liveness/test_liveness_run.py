"""A printed photo held up to a door camera with liveness on, through the whole pipeline (`facestream
run`): never live, a challenge is announced, the decision is not_live, in the JSONL and the events."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.e2e


def test_a_print_attack_is_not_live_end_to_end(
    mesh, shared_data: Path, models_home: Path, tmp_path: Path
) -> None:
    from stream.imageio import load_image

    spec = importlib.util.spec_from_file_location(
        "liveness_attacks", REPO / "benchmarks" / "liveness_attacks.py"
    )
    assert spec is not None and spec.loader is not None
    la = importlib.util.module_from_spec(spec)
    sys.modules["liveness_attacks"] = la
    spec.loader.exec_module(la)
    rel = "faces/face_recognition/knn_examples/train/obama/obama2.jpg"
    ref = json.loads((shared_data / "reference" / "mtcnn" / "detections.json").read_text())["images"][rel]
    face = (ref["faces"] if isinstance(ref, dict) else ref)[0]
    photo = la.portrait(load_image(shared_data / rel), face["box"], margin=0.6)
    bg = la.background(
        load_image(shared_data / "reference" / "mtcnn" / "frames" / "facenet-pytorch-video_052.png")
    )
    frames = la.print_attack(photo, bg, 40, glare=True, noise=True, seed=1)
    clip = tmp_path / "print.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, la.SIZE)
    for f in frames:
        writer.write(f[..., ::-1])
    writer.release()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        f"sources: [{{url: '{clip}', name: door, liveness: {{mode: challenge, window_s: 1.0}}}}]\n"
        "detect: {min_face_size: 40}\n"
    )
    out, events = tmp_path / "out.jsonl", tmp_path / "events.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "stream",
            "run",
            "--config",
            str(cfg),
            "--out",
            str(out),
            "--events",
            str(events),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    verdicts = [f["liveness"] for r in rows for f in r["faces"]]
    assert len(verdicts) >= 30 and "live" not in verdicts and set(verdicts) <= {"unknown", "not_live"}
    assert verdicts[-1] == "not_live"
    evs = [json.loads(line) for line in events.read_text().splitlines()]
    asked = [e for e in evs if e["type"] == "liveness_challenge"]
    decided = [e for e in evs if e["type"] == "liveness"]
    assert asked and decided and all(e["liveness"] == "not_live" for e in decided)
    assert all("liveness" in e for e in evs if e["type"] in ("track_left", "unknown_persists"))
