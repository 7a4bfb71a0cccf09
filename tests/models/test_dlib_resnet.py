"""dlib's face recognition ResNet rebuilt from its .dat: the torch network and the exported ONNX model
reproduce dlib's own descriptors on dlib's own chips (shared reference data), identities separate at
the 0.6 threshold, and bad files fail with a one-line BuildError."""

from __future__ import annotations

import dataclasses
import os
from itertools import combinations
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import SHARED_DATA

from facestream_models.dlib_dat import read_dat
from facestream_models.dlib_resnet import (
    DAT_NAME,
    build_dlib_resnet,
    input_means,
    load_dlib_resnet,
    normalise_chips,
    reference_chips,
)
from facestream_models.onnx_export import BuildError
from stream.registry import MODELS

SPEC = MODELS["dlib-resnet-v1"]
TOLERANCE = 1e-4  # vs dlib's descriptors, per component
DLIB_REFERENCE = SHARED_DATA / "reference" / "dlib"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Reference chips by person (keys of descriptors.npz); dlib's own descriptors separate them at 0.6.
_KNN = "faces__face_recognition__knn_examples__"
PEOPLE = {
    "obama": [
        f"{_KNN}train__obama__obama__0",
        f"{_KNN}train__obama__obama2__0",
        f"{_KNN}test__obama1__0",
        f"{_KNN}test__obama_and_biden__1",
        "faces__face_recognition__tests__obama3__0",
        "faces__face_recognition__obama-720p__0",
    ],
    "biden": [
        f"{_KNN}train__biden__biden__0",
        f"{_KNN}train__biden__biden2__0",
        f"{_KNN}test__obama_and_biden__0",
    ],
    "kit_harington": [
        f"{_KNN}train__kit_harington__john1__0",
        f"{_KNN}train__kit_harington__john2__0",
        f"{_KNN}test__johnsnow_test1__0",
        f"{_KNN}test__kit_with_rose__1",
    ],
    "rose_leslie": [
        f"{_KNN}train__rose_leslie__img1__0",
        f"{_KNN}train__rose_leslie__img2__0",
        f"{_KNN}test__kit_with_rose__0",
    ],
    "alex_lacamoire": [f"{_KNN}train__alex_lacamoire__img1__0", f"{_KNN}test__alex_lacamoire1__0"],
}


def _missing(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (required under CI=true)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def reference() -> tuple[list[str], np.ndarray, np.ndarray]:
    """(chip names, normalised chips N x 3 x 150 x 150, dlib's descriptors N x 128)."""
    if not (DLIB_REFERENCE / "descriptors.npz").is_file():
        _missing(f"dlib reference data not found at {DLIB_REFERENCE}")
    names = sorted(p.stem for p in (DLIB_REFERENCE / "chips").glob("*.png"))
    chips = reference_chips(DLIB_REFERENCE / "chips")
    descriptors = np.load(DLIB_REFERENCE / "descriptors.npz")
    assert chips is not None and len(chips) == len(names) >= 20
    return names, normalise_chips(chips, SPEC.mean, SPEC.std), np.stack([descriptors[n] for n in names])


@pytest.fixture(scope="module")
def torch_descriptors(dlib_dat_path: Path, reference) -> np.ndarray:
    model = load_dlib_resnet(dlib_dat_path)
    assert not model.training
    with torch.inference_mode():
        return model(torch.from_numpy(reference[1])).numpy()


def test_torch_matches_dlib(torch_descriptors: np.ndarray, reference) -> None:
    worst = float(np.abs(torch_descriptors - reference[2]).max())
    assert worst <= TOLERANCE, f"torch differs from dlib by {worst:.2e} on dlib's chips"


def test_onnx_matches_dlib_in_batches(dlib_dat_path: Path, reference, tmp_path: Path) -> None:
    extras = build_dlib_resnet({DAT_NAME: dlib_dat_path}, tmp_path, SPEC)
    assert extras["file"] == "model.onnx" and extras["parity_max_abs"] <= TOLERANCE
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"] and [o.name for o in sess.get_outputs()] == [
        "output"
    ]
    x = reference[1]
    got = np.concatenate([sess.run(None, {"input": x[i : i + 8]})[0] for i in range(0, len(x), 8)])
    assert got.shape == (len(x), 128) and got.dtype == np.float32
    worst = float(np.abs(got - reference[2]).max())
    assert worst <= TOLERANCE, f"ONNX differs from dlib by {worst:.2e} on dlib's chips"


def test_identities_separate_at_threshold(torch_descriptors: np.ndarray, reference) -> None:
    index = {name: i for i, name in enumerate(reference[0])}
    emb = {person: torch_descriptors[[index[n] for n in names]] for person, names in PEOPLE.items()}
    for person, e in emb.items():
        for a, b in combinations(range(len(e)), 2):
            d = float(np.linalg.norm(e[a] - e[b]))
            assert d <= SPEC.threshold, f"{person}: {PEOPLE[person][a]} vs {PEOPLE[person][b]} at {d:.3f}"
    for p, q in combinations(emb, 2):
        d = float(np.linalg.norm(emb[p][:, None] - emb[q][None], axis=-1).min())
        assert d > SPEC.threshold, f"{p} and {q} come within {d:.3f}"


def test_file_settings_match_registry(dlib_dat_path: Path) -> None:
    net = read_dat(dlib_dat_path)
    assert np.allclose(input_means(net), SPEC.mean, atol=1e-4)
    assert net.loss.kind == "loss_metric_2" and abs(net.loss.fields["dist_thresh"] - SPEC.threshold) < 1e-6


@pytest.mark.parametrize("keep", [0, 1, 300, 5_000_000, -1])
def test_truncated_dat_raises_build_error(dlib_dat_path: Path, tmp_path: Path, keep: int) -> None:
    data = dlib_dat_path.read_bytes()
    bad = tmp_path / DAT_NAME
    bad.write_bytes(data[:keep])  # -1: all but the last byte
    with pytest.raises(BuildError, match="truncated") as e:
        load_dlib_resnet(bad)
    assert "\n" not in str(e.value)
    with pytest.raises(BuildError):
        build_dlib_resnet({DAT_NAME: bad}, tmp_path, SPEC)


@pytest.mark.parametrize("content", [b"\x7fELF not a dlib file at all", b"\x01\x01\x05hello" + bytes(100)])
def test_wrong_file_raises_build_error(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / DAT_NAME
    bad.write_bytes(content)
    with pytest.raises(BuildError) as e:
        load_dlib_resnet(bad)
    assert "\n" not in str(e.value)


def test_corrupt_layer_raises_build_error(dlib_dat_path: Path, tmp_path: Path) -> None:
    data = bytearray(dlib_dat_path.read_bytes())
    at = data.index(b"relu_")
    data[at : at + 5] = b"tanh_"
    bad = tmp_path / DAT_NAME
    bad.write_bytes(bytes(data))
    with pytest.raises(BuildError, match="tanh_"):
        load_dlib_resnet(bad)


def test_mean_mismatch_fails_the_build(dlib_dat_path: Path, tmp_path: Path) -> None:
    wrong = dataclasses.replace(SPEC, mean=(127.5, 127.5, 127.5))
    with pytest.raises(BuildError, match="means"):
        build_dlib_resnet({DAT_NAME: dlib_dat_path}, tmp_path, wrong)
    assert not (tmp_path / "model.onnx").exists()
