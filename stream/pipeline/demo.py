"""`facestream demo`: the whole pipeline on the shared sample video (or a webcam) with a gallery made on
the spot: the largest face of the first frame is enrolled as "person-1", then the run names that
person wherever the tracker follows them, and writes an annotated video."""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2

from stream.errors import FacestreamError

log = logging.getLogger(__name__)
SAMPLE = Path(__file__).resolve().parents[3] / "shared" / "data" / "video" / "facenet-pytorch-video.mp4"


def first_face_crop(source: str, dest: Path) -> None:
    """Save the largest face of the source's first frame, with context around it, as an image."""
    from stream.faces import FaceAnalyzer

    cap = cv2.VideoCapture(int(source) if source.isdigit() else source)
    ok, bgr = cap.read()
    cap.release()
    if not ok:
        raise FacestreamError(f"{source}: cannot read a first frame")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    dets = FaceAnalyzer().detect([rgb])[0]
    if not len(dets.boxes):
        raise FacestreamError(f"{source}: no face in the first frame to enroll")
    x1, y1, x2, y2 = max(dets.boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1])).astype(int)
    w, h = x2 - x1, y2 - y1
    crop = bgr[max(0, y1 - h // 2) : y2 + h // 2, max(0, x1 - w // 2) : x2 + w // 2]
    cv2.imwrite(str(dest), crop)


def demo(source: str | None, record: Path) -> int:
    from stream.pipeline import config
    from stream.pipeline.supervisor import Supervisor, precheck

    source = source or (str(SAMPLE) if SAMPLE.is_file() else "0")
    with tempfile.TemporaryDirectory(prefix="facestream-demo-") as d:
        tmp = Path(d)
        first_face_crop(source, tmp / "person-1.png")
        gallery = tmp / "gallery.db"
        enroll = subprocess.run(
            [
                sys.executable,
                "-m",
                "stream",
                "enroll",
                "--gallery",
                str(gallery),
                "--force",
                "--largest",
                "person-1",
                str(tmp / "person-1.png"),
            ],
            capture_output=True,
            text=True,
        )
        if enroll.returncode != 0:
            raise FacestreamError(f"demo enrollment failed: {enroll.stderr.strip().splitlines()[-1:]}")
        cfg = config.load(
            None,
            {
                "sources": [{"url": source}],
                "gallery": str(gallery),
                "outputs.record": str(record),
                # One blurred video sample: stricter than the model's default (see tests/test_pipeline_e2e.py).
                "match.threshold": 0.45,
            },
        )
        precheck(cfg)
        log.info("demo: %s, enrolled person-1 from its first frame; annotated video -> %s", source, record)
        return Supervisor(cfg).run()
