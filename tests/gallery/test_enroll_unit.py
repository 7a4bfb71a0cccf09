"""Enrollment building blocks without models: face choice, folder layout, crops, quality."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from stream.errors import FacestreamError
from stream.gallery.crops import decode_crop, encode_crop, make_crop, to_crop_coords
from stream.gallery.enroll import collect_dir, pick_face
from stream.gallery.quality import eye_distance, sharpness


@dataclass
class FakeFace:
    box: np.ndarray
    landmarks: np.ndarray
    chip: np.ndarray
    score: float = 1.0
    embedding: np.ndarray | None = None


def face(x: float, size: float, sharp: bool = True) -> FakeFace:
    rng = np.random.default_rng(int(x))
    chip = (
        rng.integers(0, 255, (150, 150, 3), dtype=np.uint8) if sharp else np.full((150, 150, 3), 90, np.uint8)
    )
    eyes = [[x + 0.3 * size, 50], [x + 0.7 * size, 50]]
    lm = np.array(eyes + [[x + size / 2, 70], [x + 0.35 * size, 90], [x + 0.65 * size, 90]], np.float32)
    return FakeFace(np.array([x, 20, x + size, 20 + size], np.float32), lm, chip)


def test_pick_face_rules():
    p = Path("p.jpg")
    with pytest.raises(FacestreamError, match="p.jpg: no face found"):
        pick_face([], p, largest=False)
    big, other, tiny, blurred = face(0, 200), face(300, 150), face(600, 30), face(700, 180, sharp=False)
    assert pick_face([tiny, big], p, largest=False) is big  # a tiny face is not "another person"
    assert pick_face([blurred, big], p, largest=False) is big
    with pytest.raises(FacestreamError, match="2 faces found.*--largest"):
        pick_face([other, big], p, largest=False)
    assert pick_face([other, big], p, largest=True) is big
    with pytest.raises(FacestreamError, match="too small.*--force"):
        pick_face([tiny], p, largest=False)
    with pytest.raises(FacestreamError, match="too blurred"):
        pick_face([blurred], p, largest=False)
    assert pick_face([tiny], p, largest=False, force=True) is tiny
    with pytest.raises(FacestreamError, match="2 faces"):
        pick_face([tiny, big], p, largest=False, force=True)


def test_quality_measures():
    assert eye_distance(face(0, 100).landmarks) == pytest.approx(40)
    assert sharpness(face(0, 100).chip) > 1000 and sharpness(face(0, 100, sharp=False).chip) == 0


def test_collect_dir(tmp_path):
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "1.jpg").write_bytes(b"x")
    (tmp_path / "ann" / "notes.txt").write_text("x")
    (tmp_path / "ann.png").write_bytes(b"x")
    (tmp_path / "bob.JPEG").write_bytes(b"x")
    (tmp_path / ".hidden").mkdir()
    people = collect_dir(tmp_path)
    assert {k: [p.name for p in v] for k, v in people.items()} == {
        "ann": ["1.jpg", "ann.png"],
        "bob": ["bob.JPEG"],
    }
    (tmp_path / "empty").mkdir()
    with pytest.raises(FacestreamError, match="no photos"):
        collect_dir(tmp_path)
    with pytest.raises(FacestreamError, match="not a folder"):
        collect_dir(tmp_path / "ann.png")


def test_crop_geometry_and_codec():
    rng = np.random.default_rng(0)
    frame = cv2.GaussianBlur(rng.integers(0, 255, (600, 800, 3), dtype=np.uint8), (9, 9), 0)
    for box in ([300, 200, 500, 420], [-40, 500, 100, 640], [700, 10, 760, 70]):
        crop, origin = make_crop(frame, np.array(box, np.float32))
        assert crop.shape == (300, 300, 3)  # box 150 px + 75 px each side
        # A photo point maps to the crop pixel with the same content (away from the black border).
        pt = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
        cx, cy = to_crop_coords(pt, origin).round().astype(int)
        px, py = pt.round().astype(int)
        if 0 <= px < 800 and 0 <= py < 600:
            assert np.abs(crop[cy, cx].astype(int) - frame[py, px]).max() < 25
        decoded = decode_crop(encode_crop(crop))
        assert (
            decoded.shape == crop.shape and np.abs(decoded.astype(int) - crop).mean() < 6
        )  # JPEG q95 on noise
    with pytest.raises(FacestreamError):
        decode_crop(b"garbage")
