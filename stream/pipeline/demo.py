"""`facestream demo`: the whole multi-process pipeline on a clip made on the spot, with a gallery made
on the spot, then a summary a newcomer can read.

Default: one person ("obama") is enrolled from ONE photo (obama.jpg), and the clip films three other
photos (stream.pipeline.demo_samples: pinned, cached, offline after set-up) with camera motion; the last
shot cuts to a person who is not enrolled (biden), who must come out as a stranger.
With --source (a webcam, file, URL or image folder): the largest face of its first frame is enrolled as "person-1"."""

from __future__ import annotations

import json
import logging
import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from stream.errors import FacestreamError
from stream.pipeline.demo_clip import Segment

if TYPE_CHECKING:
    from stream.faces import FaceAnalyzer

log = logging.getLogger(__name__)
ENROLL_PHOTO, ENROLL_NAME = "obama.jpg", "obama"


def _enroll(
    gallery_path: Path, name: str, photo: Path, analyzer: FaceAnalyzer | None = None, force: bool = False
) -> None:
    """One photo -> one person in a new gallery, in this process (no second process reloading models)."""
    from stream.faces import FaceAnalyzer
    from stream.gallery.enroll import EnrollOptions, enroll_person
    from stream.gallery.store import Gallery

    with Gallery.open(gallery_path, create=True) as gallery:
        # largest: obama.jpg has a small face-like patch low in the picture (MTCNN score 0.8).
        opts = EnrollOptions(largest=True, force=force)
        enroll_person(gallery, analyzer or FaceAnalyzer(), name, [photo], opts)


def enroll_first_face(source: str, gallery_path: Path, crop_path: Path) -> None:
    """Enroll the largest face of the source's first frame (saved with context around it) as
    "person-1", in this process, with the analyzer that found it."""
    from stream.faces import FaceAnalyzer
    from stream.pipeline.sources import open_source

    # The pipeline's own source reader: folders of images work too, and a camera or file that does
    # not open says why (SourceError, one line) before any model loads.
    src = open_source(source)
    src.open()
    try:
        rgb = src.read()
    finally:
        src.close()
    if rgb is None:
        raise FacestreamError(f"{source}: cannot read a first frame")
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    analyzer = FaceAnalyzer()
    dets = analyzer.detect([rgb])[0]
    if not len(dets.boxes):
        raise FacestreamError(f"{source}: no face in the first frame to enroll")
    x1, y1, x2, y2 = max(dets.boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1])).astype(int)
    w, h = x2 - x1, y2 - y1
    cv2.imwrite(str(crop_path), bgr[max(0, y1 - h // 2) : y2 + h // 2, max(0, x1 - w // 2) : x2 + w // 2])
    # force: a face from a moving video is blurrier than enrollment normally accepts.
    _enroll(gallery_path, "person-1", crop_path, analyzer, force=True)


def demo(
    source: str | None,
    record: Path,
    out: Path,
    from_file: Path | None = None,
    fetch_only: bool = False,
) -> int:
    from stream.pipeline import config
    from stream.pipeline.demo_clip import build_clip
    from stream.pipeline.demo_samples import fetch_samples
    from stream.pipeline.supervisor import Supervisor, precheck

    if fetch_only or source is None:
        photos = fetch_samples(from_file=from_file)
        if fetch_only:
            print(f"demo photos ready in {photos[ENROLL_PHOTO].parent}")
            return 0
    with tempfile.TemporaryDirectory(prefix="facestream-demo-") as d:
        tmp = Path(d)
        gallery = tmp / "gallery.db"
        overrides: dict[str, Any] = {
            "gallery": str(gallery),
            "outputs.record": str(record),
            "outputs.out": str(out),
        }
        segments: list[Segment] = []
        if source is None:
            _enroll(gallery, ENROLL_NAME, photos[ENROLL_PHOTO])
            source = str(tmp / "clip.mp4")
            segments = build_clip(photos, Path(source))
            enrolled = f"{ENROLL_NAME}, from one photo ({ENROLL_PHOTO})"
        else:
            enroll_first_face(source, gallery, tmp / "person-1.png")
            # One blurred video frame as the only sample: stricter than the model's default (see
            # tests/test_pipeline_e2e.py); sharp sample photos keep the model's own threshold.
            overrides["match.threshold"] = 0.45
            enrolled = "person-1, the largest face of the first frame"
        cfg = config.load(None, {"sources": [{"url": source}], **overrides})
        precheck(cfg)
        log.info("demo: %s; enrolled %s", source, enrolled)
        rc = Supervisor(cfg).run()
    print(summarize(out, segments, enrolled))
    print(f"  outputs: {record} (annotated video), {out} (one JSON line per frame)")
    return rc


def frame_ranges(seqs: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'."""
    runs: list[list[int]] = []
    for s in sorted(set(seqs)):
        if runs and s == runs[-1][1] + 1:
            runs[-1][1] = s
        else:
            runs.append([s, s])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def summarize(out: Path, segments: list[Segment], enrolled: str) -> str:
    """What the run said, read back from its JSONL: per shot, who was named in how many frames (next
    to what the shot shows); the frames each name and the unknown faces were in; latency per stage."""
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.is_file() else []
    faces = [(r["seq"], f["name"] or "unknown", f["track"]) for r in rows for f in r["faces"]]
    lines = ["facestream demo summary", f"  enrolled: {enrolled}"]
    for seg in segments:
        n = seg.last - seg.first + 1
        # frames in which each label appears (a frame with two faces of one label counts once)
        seen = Counter(label for label, _ in {(x, s) for s, x, _ in faces if seg.first <= s <= seg.last})
        processed = {r["seq"] for r in rows if seg.first <= r["seq"] <= seg.last}
        said = ", ".join(f"{k} {v}/{n}" for k, v in seen.most_common()) or (
            "no face" if processed else "not processed (the run stopped before this shot)"
        )
        who = seg.shot.person
        expect = who if who == ENROLL_NAME else f"unknown, {who} is not enrolled"
        lines.append(
            f"  frames {seg.first}-{seg.last} {seg.shot.photo}, {seg.shot.motion}: {said} (expected: {expect})"
        )
    lines.append(f"  in all: {len(rows)} frames, {len(faces)} faces")
    for label in sorted({x for _, x, _ in faces}, key=lambda x: (x == "unknown", x)):
        mine = [(s, t) for s, x, t in faces if x == label]
        where = frame_ranges([s for s, _ in mine])
        if label == "unknown":
            lines.append(
                f"  unknown: {len(mine)} faces on {len({t for _, t in mine})} track(s), in frames {where}"
            )
        else:
            lines.append(f"  {label}: named in frames {where}")
    lat = {k: [r["latency_ms"].get(k) for r in rows] for k in ("detect", "embed", "match", "total")}
    lines.append(
        "  latency p50/p95 (ms): "
        + ", ".join(
            f"{'end-to-end' if k == 'total' else k} {_pct(v, 50):.0f}/{_pct(v, 95):.0f}"
            for k, v in lat.items()
            if any(x is not None for x in v)
        )
    )
    return "\n".join(lines)


def _pct(values: list[float | None], q: int) -> float:
    return float(np.percentile([v for v in values if v is not None], q))
