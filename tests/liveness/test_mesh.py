"""The face mesh and eye model on real photos: open eyes measure as open, and the same faces with their
eyes painted shut (a SYNTHETIC closure: benchmarks/liveness_attacks.close_eyes) fall under the blink
rule's closed level; points land on the face the detector found."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

from stream.liveness.blink import BlinkRules
from tests.conftest import REPO

PHOTOS = [
    "faces/face_recognition/knn_examples/train/kit_harington/john1.jpeg",
    "faces/face_recognition/obama-480p.jpg",
    "faces/facenet-pytorch/test_images/angelina_jolie/1.jpg",
    "faces/facenet-pytorch/test_images/paul_rudd/1.jpg",
]


def attacks_module():
    spec = importlib.util.spec_from_file_location(
        "liveness_attacks", REPO / "benchmarks" / "liveness_attacks.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["liveness_attacks"] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_open_and_painted_shut_eyes(mesh, shared_data: Path) -> None:
    from stream.imageio import load_image

    la = attacks_module()
    ref = json.loads((shared_data / "reference" / "mtcnn" / "detections.json").read_text())["images"]
    for rel in PHOTOS:
        faces = ref[rel]["faces"] if isinstance(ref[rel], dict) else ref[rel]
        img = load_image(shared_data / rel)
        boxes = np.array([faces[0]["box"]], np.float32)
        lm = np.array([faces[0]["landmarks"]], np.float32)
        pts, presence = mesh.points(img, boxes, lm)
        assert presence[0] > 0
        # The mesh's eye corners sit near the detector's eyes (within a fifth of their distance).
        iod = np.linalg.norm(lm[0, 0] - lm[0, 1])
        left = pts[0, [33, 133], :2].mean(0)
        assert np.linalg.norm(left - lm[0, 0]) < 0.2 * iod, rel
        open_ = float(mesh.eyes(img, boxes, lm)[0])
        shut = float(mesh.eyes(la.close_eyes(img, pts[0]), boxes, lm)[0])
        assert 0.15 < open_ < 0.4, (rel, open_)
        assert shut < BlinkRules().closed * open_, (rel, open_, shut)
    # No face in the crop: NaN, not a number that could be read as a blink.
    blank = np.full((300, 300, 3), 128, np.uint8)
    assert np.isnan(mesh.eyes(blank, np.array([[100, 100, 200, 200]], np.float32), lm * 0 + 150)).all()


def test_the_embed_stage_measures_eyes_only_for_cameras_that_ask(
    mesh, shared_data: Path, models_home
) -> None:
    from stream.detections import Detections
    from stream.imageio import load_image
    from stream.liveness.stage import EyeReader
    from stream.pipeline import wire
    from stream.pipeline.config import PipelineConfig

    cfg = PipelineConfig(
        sources=[{"url": "a", "name": "door", "liveness": {"mode": "blink"}}, {"url": "b", "name": "hall"}]
    )
    reader = EyeReader(cfg, home=models_home)
    rel = PHOTOS[0]
    ref = json.loads((shared_data / "reference" / "mtcnn" / "detections.json").read_text())["images"][rel]
    face = (ref["faces"] if isinstance(ref, dict) else ref)[0]
    img = load_image(shared_data / rel)
    dets = Detections.of([face["box"]], [face["prob"]], [face["landmarks"]])
    door = wire.frame_message("door", 0, img).to(wire.Dets, dets=dets)
    hall = wire.frame_message("hall", 0, img).to(wire.Dets, dets=dets)
    reader.measure(door)
    reader.measure(hall)
    assert door.dets.eyes is not None and 0.15 < float(door.dets.eyes[0]) < 0.4
    assert hall.dets.eyes is None
    assert EyeReader(PipelineConfig(sources=[{"url": "b"}])).mesh is None  # nobody asks: no model loaded
