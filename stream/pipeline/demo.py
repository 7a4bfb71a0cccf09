"""`facestream demo`: the whole pipeline on the shared sample video (or a webcam) with a gallery made on
the spot: the largest face of the first frame is enrolled as "person-1", then the run names that
person wherever the tracker follows them, and writes an annotated video."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import cv2

from stream.errors import FacestreamError

log = logging.getLogger(__name__)
SAMPLE = Path(__file__).resolve().parents[3] / "shared" / "data" / "video" / "facenet-pytorch-video.mp4"


def enroll_first_face(source: str, gallery_path: Path, crop_path: Path) -> None:
    """Enroll the largest face of the source's first frame (saved with context around it) as
    "person-1", in this process, with the analyzer that found it."""
    from stream.faces import FaceAnalyzer
    from stream.gallery.enroll import EnrollOptions, enroll_person
    from stream.gallery.store import Gallery

    cap = cv2.VideoCapture(int(source) if source.isdigit() else source)
    ok, bgr = cap.read()
    cap.release()
    if not ok:
        raise FacestreamError(f"{source}: cannot read a first frame")
    analyzer = FaceAnalyzer()
    dets = analyzer.detect([cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)])[0]
    if not len(dets.boxes):
        raise FacestreamError(f"{source}: no face in the first frame to enroll")
    x1, y1, x2, y2 = max(dets.boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1])).astype(int)
    w, h = x2 - x1, y2 - y1
    cv2.imwrite(str(crop_path), bgr[max(0, y1 - h // 2) : y2 + h // 2, max(0, x1 - w // 2) : x2 + w // 2])
    # --force: a face from a moving video is blurrier than enrollment normally accepts.
    with Gallery.open(gallery_path, create=True) as gallery:
        enroll_person(gallery, analyzer, "person-1", [crop_path], EnrollOptions(largest=True, force=True))


def demo(source: str | None, record: Path) -> int:
    from stream.pipeline import config
    from stream.pipeline.supervisor import Supervisor, precheck

    source = source or (str(SAMPLE) if SAMPLE.is_file() else "0")
    with tempfile.TemporaryDirectory(prefix="facestream-demo-") as d:
        tmp = Path(d)
        gallery = tmp / "gallery.db"
        enroll_first_face(source, gallery, tmp / "person-1.png")
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
