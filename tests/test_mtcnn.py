"""MTCNN detector: parity with facenet-pytorch 2.5.3 (reference detections in shared data), batching,
bad input, and the building blocks (NMS, area resampling) against their plain definitions."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SHARED_DATA

from stream.detections import Detections
from stream.detector import MTCNN
from stream.errors import FacestreamError, ModelMissingError
from stream.nms import batched_nms
from stream.pyramid import crop_resize, integral_images

DATA = SHARED_DATA
REFERENCE = DATA / "reference" / "mtcnn" / "detections.json"
IOU_MIN, LANDMARK_PX, PROB_TOL = 0.9, 3.0, 0.02


def _need(path: Path) -> None:
    if not path.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"test data missing: {path}")
        pytest.skip(f"test data missing: {path} (shared data not checked out next to the repo)")


@pytest.fixture(scope="session")
def detector(mtcnn_weights_dir) -> MTCNN:
    return MTCNN(mtcnn_weights_dir, device="cpu")


@pytest.fixture(scope="session")
def reference() -> dict:
    _need(REFERENCE)
    return json.loads(REFERENCE.read_text())["images"]


def load_rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path))  # BGR; drops the alpha of the 32-bit PNG
    assert img is not None, path
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    return inter / (area + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter)


def test_reference_parity(detector, reference):
    """Every face facenet-pytorch finds, we find: IoU >= 0.9, landmarks within 3 px, probability
    within 0.02. Our detections that match no reference face are listed (there are none today)."""
    problems, extras, n_faces = [], [], 0
    for rel, faces in sorted(reference.items()):
        _need(DATA / rel)
        det = detector.detect([load_rgb(DATA / rel)])[0]
        used = set()
        for face in faces:
            n_faces += 1
            box = np.asarray(face["box"], np.float64)
            if not len(det):
                problems.append(f"{rel}: missed face at {box.round(1).tolist()}")
                continue
            overlaps = iou(box, det.boxes.astype(np.float64))
            j = int(overlaps.argmax())
            lm_err = float(np.abs(det.landmarks[j] - np.asarray(face["landmarks"])).max())
            p_err = abs(float(det.scores[j]) - face["prob"])
            if overlaps[j] < IOU_MIN or lm_err > LANDMARK_PX or p_err > PROB_TOL or j in used:
                problems.append(
                    f"{rel}: face {box.round(1).tolist()}: IoU {overlaps[j]:.3f}, landmarks {lm_err:.2f} px, prob {p_err:.4f}"
                )
            used.add(j)
        extras += [
            f"{rel}: extra {det.boxes[j].round(1).tolist()} p={det.scores[j]:.3f}"
            for j in range(len(det))
            if j not in used
        ]
    print(f"\n{n_faces} reference faces; extra detections of ours: {len(extras)}")
    for line in extras:
        print("  " + line)
    assert n_faces > 50
    assert not problems, "\n".join(problems)


def test_output_types(detector, reference):
    rel = "faces/facenet-pytorch/multiface.jpg"
    _need(DATA / rel)
    det = detector.detect([load_rgb(DATA / rel)])[0]
    assert isinstance(det, Detections) and len(det) == len(reference[rel]) == 6
    assert det.boxes.dtype == det.scores.dtype == det.landmarks.dtype == np.float32
    assert det.boxes.shape == (6, 4) and det.scores.shape == (6,) and det.landmarks.shape == (6, 5, 2)
    assert np.all(np.diff(det.scores) <= 0)  # by descending score
    # landmark order: left eye, right eye (to its right in the image), nose, mouth left, mouth right
    lm = det.landmarks
    assert np.all(lm[:, 0, 0] < lm[:, 1, 0]) and np.all(lm[:, 3, 0] < lm[:, 4, 0])
    assert np.all(lm[:, 2, 1] > lm[:, 0, 1]) and np.all(lm[:, 3, 1] > lm[:, 2, 1])


def test_batch_equals_single(detector):
    """A batch of frames of several sizes (two sharing one size) gives what each frame gives alone."""
    paths = [
        DATA / "reference/mtcnn/frames/facenet-pytorch-video_000.png",
        DATA / "faces/facenet-pytorch/multiface.jpg",
        DATA / "faces/face_recognition/two_people.jpg",
        DATA / "reference/mtcnn/frames/facenet-pytorch-video_104.png",
    ]
    for p in paths:
        _need(p)
    frames = [load_rgb(p) for p in paths]
    frames.append(cv2.resize(frames[1], (320, 168)))
    frames.append(np.zeros((8, 8, 3), np.uint8))  # smaller than the smallest pyramid level
    batch = detector.detect(frames)
    assert len(batch) == len(frames)
    for frame, got in zip(frames, batch, strict=True):
        alone = detector.detect([frame])[0]
        assert len(got) == len(alone)
        np.testing.assert_allclose(got.boxes, alone.boxes, atol=1e-3)
        np.testing.assert_allclose(got.scores, alone.scores, atol=1e-5)
        np.testing.assert_allclose(got.landmarks, alone.landmarks, atol=1e-3)
    assert sum(len(d) for d in batch) >= 20


def test_small_and_blank_frames(detector):
    assert detector.detect([]) == []
    for shape in [(1, 1, 3), (11, 200, 3), (24, 24, 3), (200, 300, 3)]:
        (det,) = detector.detect([np.zeros(shape, np.uint8)])
        assert len(det) == 0
        assert det.boxes.shape == (0, 4) and det.landmarks.shape == (0, 5, 2) and det.scores.shape == (0,)


@pytest.mark.parametrize(
    "frame",
    [
        np.zeros((40, 40), np.uint8),  # grayscale
        np.zeros((40, 40, 4), np.uint8),  # RGBA
        np.zeros((40, 40, 3), np.uint16),  # 16-bit
        np.zeros((40, 40, 3), np.float32),  # float
        np.zeros((0, 40, 3), np.uint8),  # empty
        np.zeros((40, 0, 3), np.uint8),
        "not an image",
    ],
    ids=["gray", "rgba", "uint16", "float", "empty-rows", "empty-cols", "str"],
)
def test_bad_frames(detector, frame):
    ok = np.zeros((40, 40, 3), np.uint8)
    with pytest.raises(FacestreamError) as err:
        detector.detect([ok, frame])
    msg = str(err.value)
    assert "frame 1" in msg and "\n" not in msg


def test_missing_weights(tmp_path):
    with pytest.raises(ModelMissingError, match="facestream models pull mtcnn"):
        MTCNN(tmp_path)


def test_corrupt_weights(tmp_path, mtcnn_weights_dir):
    for name in ("pnet.pt", "rnet.pt", "onet.pt"):
        (tmp_path / name).write_bytes((mtcnn_weights_dir / name).read_bytes())
    (tmp_path / "onet.pt").write_bytes(b"not a state dict")
    with pytest.raises(FacestreamError, match="do not load"):
        MTCNN(tmp_path)


def test_nets_match_reference_layout(mtcnn_weights_dir):
    """Our fast forward passes equal plain conv / PReLU / max-pool (NCHW, as facenet-pytorch runs)."""
    from stream.mtcnn_nets import load_net

    torch.manual_seed(0)
    with torch.inference_mode():
        for name, shape in [("pnet", (2, 3, 31, 47)), ("rnet", (5, 3, 24, 24)), ("onet", (5, 3, 48, 48))]:
            net = load_net(name, mtcnn_weights_dir / f"{name}.pt")
            x = torch.rand(shape) * 2 - 1
            ours = net(x)
            y = x
            for mod in net.children():  # facenet-pytorch's sequence, NCHW
                if isinstance(mod, torch.nn.Linear):
                    if y.dim() == 4:
                        y = y.permute(0, 3, 2, 1).reshape(y.shape[0], -1)
                    if mod.out_features <= 10:
                        break
                if isinstance(mod, torch.nn.Conv2d) and mod.kernel_size == (1, 1):
                    break
                y = mod(y.contiguous())
            feat = y
            if name == "pnet":
                prob = torch.softmax(net.conv4_1(feat), 1)[:, 1]
                torch.testing.assert_close(ours[0], net.conv4_2(feat), atol=1e-5, rtol=1e-5)
            else:
                prob = torch.softmax(getattr(net, "dense5_1" if name == "rnet" else "dense6_1")(feat), 1)[
                    :, 1
                ]
            torch.testing.assert_close(ours[-1], prob, atol=1e-5, rtol=1e-5)


def _reference_nms(boxes, scores, thr, mode):
    order = list(np.argsort(-scores, kind="stable"))
    keep = []
    plus = 1.0 if mode == "min" else 0.0
    area = (boxes[:, 2] - boxes[:, 0] + plus) * (boxes[:, 3] - boxes[:, 1] + plus)
    while order:
        i = order.pop(0)
        keep.append(i)
        rest = []
        for j in order:
            w = max(0.0, min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]) + plus)
            h = max(0.0, min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]) + plus)
            inter = w * h
            o = inter / min(area[i], area[j]) if mode == "min" else inter / (area[i] + area[j] - inter)
            if o <= thr:
                rest.append(j)
        order = rest
    return keep


@pytest.mark.parametrize("mode", ["iou", "min"])
def test_batched_nms_is_greedy_nms(mode):
    rng = np.random.default_rng(0)
    for _ in range(30):
        k = int(rng.integers(1, 120))
        groups = rng.integers(0, 3, k)
        xy = rng.uniform(0, 100, (k, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(3, 40, (k, 2))], 1).astype(np.float32)
        scores = rng.uniform(0, 1, k).astype(np.float32)
        thr = float(rng.choice([0.3, 0.5, 0.7]))
        got = batched_nms(
            torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(groups), thr, mode
        )
        want = []
        for g in range(3):
            idx = np.flatnonzero(groups == g)
            want += [int(idx[i]) for i in _reference_nms(boxes[idx], scores[idx], thr, mode)]
        assert got.tolist() == want


def test_nms_ties():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.9, 0.5])
    groups = torch.zeros(3, dtype=torch.long)
    assert batched_nms(boxes, scores, groups, 0.5, "iou").tolist() == [0, 2]
    assert batched_nms(boxes, scores, groups, 0.5, "min", ties="last").tolist() == [1, 2]


def test_area_resampling_is_torch_area_interpolation():
    from stream.pyramid import area_resize

    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(90, 70), (90, 70), (33, 51)]]
    ii, _ = integral_images(frames, torch.device("cpu"))

    def ref(img, size):
        t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
        return ((F.interpolate(t, size=size, mode="area") - 127.5) * 0.0078125)[0].permute(1, 2, 0)

    for oh, ow in [(54, 42), (12, 13), (120, 100)]:
        got = area_resize(ii.frames(0, 2), oh, ow)
        for k in range(2):
            assert torch.equal(got[k], ref(frames[k], (oh, ow)))
        assert torch.equal(area_resize(ii.frames(0, 2), oh, ow, (2, 7)), got[:, 2:7])
    frame = torch.tensor([0, 2, 1, 0])
    y0, y1 = torch.tensor([0, 5, 0, 20]), torch.tensor([90, 17, 33, 21])
    x0, x1 = torch.tensor([0, 3, 10, 60]), torch.tensor([70, 50, 51, 70])
    crops = crop_resize(ii, frame, y0, y1, x0, x1, 24)
    for k in range(4):
        img = frames[int(frame[k])][int(y0[k]) : int(y1[k]), int(x0[k]) : int(x1[k])]
        assert torch.equal(crops[k], ref(img, (24, 24)))


def test_build_mtcnn(tmp_path, mtcnn_weights_dir):
    from facestream_models.mtcnn import build_mtcnn
    from facestream_models.onnx_export import BuildError

    inputs = {name: mtcnn_weights_dir / name for name in ("pnet.pt", "rnet.pt", "onet.pt")}
    extras = build_mtcnn(inputs, tmp_path / "mtcnn", None)
    assert extras["weights"] == ["pnet.pt", "rnet.pt", "onet.pt"] and extras["runtime"] == "torch"
    assert MTCNN(tmp_path / "mtcnn", device="cpu").detect([np.zeros((60, 60, 3), np.uint8)])[
        0
    ].boxes.shape == (0, 4)
    with pytest.raises(BuildError, match="onet.pt"):
        build_mtcnn({k: v for k, v in inputs.items() if k != "onet.pt"}, tmp_path / "x", None)
    (tmp_path / "bad.pt").write_bytes(b"junk")
    with pytest.raises(BuildError, match="does not load"):
        build_mtcnn({**inputs, "rnet.pt": tmp_path / "bad.pt"}, tmp_path / "y", None)
