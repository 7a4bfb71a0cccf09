"""The int8 dlib-resnet-v1: close to fp32 on real faces, the same identity decisions, selectable at
runtime (Embedder precision), and a clear fallback / error where a build has no int8 model."""

from __future__ import annotations

import hashlib
import json
import shutil
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from test_dlib_resnet import PEOPLE

from facestream_models.dlib_resnet import (
    INT8_L2_MAX_LIMIT,
    INT8_L2_MEAN_LIMIT,
    aligned_chips,
    normalise_chips,
    reference_chips,
)
from facestream_models.onnx_export import BuildError
from facestream_models.quantize import quantize_and_verify, quantize_int8
from facestream_models.registry import MODELS
from stream.embedder import Embedder
from stream.errors import FacestreamError

NAME = "dlib-resnet-v1"
SPEC = MODELS[NAME]


@pytest.fixture(scope="module")
def chips(shared_data: Path) -> dict[str, np.ndarray]:
    ref_dir = shared_data / "reference" / "dlib" / "chips"
    return {
        "names": np.array(sorted(p.stem for p in ref_dir.glob("*.png"))),
        "reference": reference_chips(ref_dir),  # dlib's own chips: never used for calibration
        "aligned": aligned_chips(shared_data),  # ours: the calibration set
    }


@pytest.fixture(scope="module")
def embedders(models_home: Path) -> dict[str, Embedder]:
    return {p: Embedder(NAME, home=models_home, precision=p) for p in ("fp32", "int8")}


@pytest.fixture(scope="module")
def embeddings(embedders, chips) -> dict[str, dict[str, np.ndarray]]:
    return {p: {k: e.embed(chips[k]) for k in ("reference", "aligned")} for p, e in embedders.items()}


@pytest.mark.parametrize("which", ["reference", "aligned"])
def test_int8_close_to_fp32_on_real_faces(embeddings, which: str) -> None:
    l2 = np.linalg.norm(embeddings["int8"][which] - embeddings["fp32"][which], axis=1)
    assert len(l2) >= 40
    assert l2.mean() <= INT8_L2_MEAN_LIMIT, f"{which}: mean L2 {l2.mean():.4f}"
    assert l2.max() <= INT8_L2_MAX_LIMIT, f"{which}: max L2 {l2.max():.4f}"


def test_int8_keeps_every_decision_on_reference_pairs(embeddings) -> None:
    a, b = embeddings["fp32"]["reference"], embeddings["int8"]["reference"]
    pairs = list(combinations(range(len(a)), 2))
    assert len(pairs) >= 900
    for i, j in pairs:
        da, db = np.linalg.norm(a[i] - a[j]), np.linalg.norm(b[i] - b[j])
        assert (da <= SPEC.threshold) == (db <= SPEC.threshold), f"pair {i},{j}: fp32 {da:.3f}, int8 {db:.3f}"


def test_int8_separates_the_people(embeddings, chips) -> None:
    index = {n: i for i, n in enumerate(chips["names"])}
    e = embeddings["int8"]["reference"]
    who = {index[n]: person for person, names in PEOPLE.items() for n in names}
    for i, j in combinations(sorted(who), 2):
        d = float(np.linalg.norm(e[i] - e[j]))
        same = who[i] == who[j]
        assert (d <= SPEC.threshold) == same, f"{chips['names'][i]} vs {chips['names'][j]}: {d:.3f}"


def test_precisions_on_published_model(embedders, models_home: Path) -> None:
    manifest = json.loads((models_home / "models" / NAME / "model.json").read_text())
    assert manifest["int8"]["file"] == "model.int8.onnx"
    assert manifest["int8"]["strict_decisions_changed"] == 0
    for p, e in embedders.items():
        assert e.precision == p and e.provider == "CPUExecutionProvider"
        assert e.dim == 128 and e.threshold == pytest.approx(0.6) and e.crop_spec == SPEC.crop
        out = e.embed(np.zeros((0, 150, 150, 3), np.uint8))
        assert out.shape == (0, 128)
    assert Embedder(NAME, home=models_home, precision="auto").precision == "int8"  # auto on CPU
    assert Embedder(NAME, home=models_home).precision == "fp32"  # the default reproduces dlib


def _home_without_int8(src: Path, dst: Path, drop_key: bool) -> Path:
    model = dst / "models" / NAME
    model.mkdir(parents=True)
    shutil.copy(src / "models" / NAME / "model.onnx", model / "model.onnx")
    manifest = json.loads((src / "models" / NAME / "model.json").read_text())
    if drop_key:
        manifest.pop("int8")
    (model / "model.json").write_text(json.dumps(manifest))
    return dst


@pytest.mark.parametrize("drop_key", [True, False], ids=["no-int8-entry", "int8-file-missing"])
def test_model_without_int8(models_home: Path, tmp_path: Path, chips, drop_key: bool) -> None:
    home = _home_without_int8(models_home, tmp_path / "home", drop_key)
    auto = Embedder(NAME, home=home, precision="auto")
    assert auto.precision == "fp32"
    assert auto.embed(chips["reference"][:2]).shape == (2, 128)
    with pytest.raises(FacestreamError, match="no int8 version") as e:
        Embedder(NAME, home=home, precision="int8")
    assert "\n" not in str(e.value)


def test_unknown_precision_is_an_error(models_home: Path) -> None:
    with pytest.raises(FacestreamError, match="precision"):
        Embedder(NAME, home=models_home, precision="fp16")


def test_calibration_is_deterministic(models_home: Path, tmp_path: Path, chips) -> None:
    x = normalise_chips(chips["aligned"][:6], SPEC.mean, SPEC.std)
    fp32 = models_home / "models" / NAME / "model.onnx"
    digests = []
    for i in range(2):
        out = tmp_path / f"q{i}.onnx"
        quantize_int8(fp32, out, x)
        digests.append(hashlib.sha256(out.read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_failed_verification_is_a_build_error(models_home: Path, tmp_path: Path, chips) -> None:
    x = normalise_chips(chips["aligned"][:6], SPEC.mean, SPEC.std)
    out = tmp_path / "model.int8.onnx"
    fp32 = models_home / "models" / NAME / "model.onnx"
    with pytest.raises(BuildError, match="L2") as e:
        quantize_and_verify(fp32, out, x, x, SPEC.threshold, 1e-6, 1e-6, 0.04)
    assert "\n" not in str(e.value) and not out.exists()


def test_build_without_shared_data_skips_int8(models_home: Path, tmp_path: Path, monkeypatch) -> None:
    import facestream_models.dlib_resnet as dr

    shutil.copy(models_home / "models" / NAME / "model.onnx", tmp_path / "model.onnx")
    monkeypatch.setattr(dr, "aligned_chips", lambda *a, **k: None)
    entry = dr.build_int8(tmp_path, SPEC)
    assert "no real face chips" in entry["skipped"] and not (tmp_path / dr.INT8_FILE).exists()
