"""`facestream models pull`: sha256-checked sources, idempotent builds, atomic publication, clear errors."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from waiting import wait_until

from facestream_models import build
from facestream_models.sources import FACENET_PYTORCH
from stream.errors import FacestreamError
from stream.home import downloads_dir


@pytest.fixture
def home(tmp_path, models_home):
    """A fresh $FACESTREAM_HOME whose download cache already holds the facenet-pytorch wheel."""
    cached = downloads_dir(models_home) / FACENET_PYTORCH.filename
    if not cached.is_file():
        pytest.skip("facenet-pytorch wheel not in the download cache")
    (tmp_path / "downloads").mkdir()
    shutil.copy(cached, tmp_path / "downloads" / FACENET_PYTORCH.filename)
    return tmp_path


def test_pull_builds_then_is_idempotent(home):
    assert build.pull(["mtcnn"], home=home) == [("mtcnn", "built")]
    manifest = json.loads((home / "models/mtcnn/model.json").read_text())
    assert {"pnet.pt", "rnet.pt", "onet.pt"} <= set(manifest["files"])
    assert manifest["source_sha256"] == FACENET_PYTORCH.sha256
    stamp = (home / "models/mtcnn/model.json").stat().st_mtime_ns
    assert build.pull(["mtcnn"], home=home) == [("mtcnn", "up to date")]
    assert (home / "models/mtcnn/model.json").stat().st_mtime_ns == stamp
    # a damaged published file is noticed and rebuilt
    (home / "models/mtcnn/pnet.pt").write_bytes(b"x")
    assert build.pull(["mtcnn"], home=home) == [("mtcnn", "built")]


def test_wrong_sha256_is_refused_and_nothing_published(home, tmp_path):
    fake = tmp_path / "facenet_pytorch-2.5.3-py3-none-any.whl"
    fake.write_bytes(b"not the real wheel")
    with pytest.raises(FacestreamError, match="sha256"):
        build.pull(["mtcnn"], home=home, from_file=fake)
    assert not (home / "models/mtcnn").exists()


def test_failed_build_publishes_nothing_and_leaves_no_debris(home, monkeypatch):
    def broken(inputs, out_dir, spec):
        (out_dir / "pnet.onnx").write_bytes(b"half")
        raise FacestreamError("simulated failure mid-build")

    monkeypatch.setattr(build, "_builder", lambda name: broken)
    with pytest.raises(FacestreamError, match="simulated"):
        build.pull(["mtcnn"], home=home)
    assert not (home / "models/mtcnn").exists()
    assert not list((home / "models").glob(".build-*"))


def test_interrupted_build_folder_is_ignored_and_cleaned(home):
    stale = home / "models" / ".build-mtcnn-999999999"
    stale.mkdir(parents=True)
    (stale / "model.json").write_text("{}")
    assert not build.is_built("mtcnn", home)
    build.pull(["mtcnn"], home=home)
    assert not stale.exists() and build.is_built("mtcnn", home)


def test_offline_without_cache_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    with pytest.raises(FacestreamError) as e:
        build.pull(["mtcnn"], home=tmp_path)
    msg = str(e.value)
    assert "cannot download facenet_pytorch-2.5.3-py3-none-any.whl" in msg and "--from" in msg
    assert "\n" not in msg


def test_from_takes_one_name(tmp_path):
    f = tmp_path / "x"
    f.write_bytes(b"")
    with pytest.raises(FacestreamError, match="one model name"):
        build.pull(["mtcnn", "dlib-resnet-v1"], home=tmp_path, from_file=f)


@pytest.mark.e2e
def test_facenet_from_local_checkpoint_builds_a_working_embedder(tmp_path, shared_data):
    """`models pull facenet-vggface2 --from FILE` through the CLI, with a checkpoint in facenet-pytorch's
    format (random weights: the released file cannot be downloaded here), then used for embeddings."""
    from facestream_models.inception_resnet_v1 import InceptionResnetV1
    from stream.embedder import Embedder
    from stream.imageio import load_image

    torch.manual_seed(0)
    net = InceptionResnetV1()
    state = dict(net.state_dict())
    state["logits.weight"] = torch.zeros(8631, 512)
    state["logits.bias"] = torch.zeros(8631)
    ckpt = tmp_path / "20180402-114759-vggface2.pt"
    torch.save(state, ckpt)
    env = {**os.environ, "FACESTREAM_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, "-m", "stream", "models", "pull", "facenet-vggface2", "--from", str(ckpt)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    emb = Embedder("facenet-vggface2", home=tmp_path / "home")
    assert emb.dim == 512 and emb.crop_spec.mode == "box_margin"
    chip = load_image(next((shared_data / "faces/facenet-pytorch/test_images_aligned").glob("*/1.png")))
    vec = emb.embed(np.stack([chip, chip[:, ::-1].copy()]))
    assert vec.shape == (2, 512)
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-4)


@pytest.mark.e2e
def test_cli_error_is_one_line(tmp_path):
    env = {**os.environ, "FACESTREAM_HOME": str(tmp_path)}
    missing = Path(tmp_path) / "nope.pt"
    cmd = [sys.executable, "-m", "stream", "models", "pull", "facenet-casia", "--from", str(missing)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"facestream: error: {missing}: no such file"]
    proc = subprocess.run(
        [sys.executable, "-m", "stream", "models", "pull", "no-such-model"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "unknown model 'no-such-model'" in proc.stderr


@pytest.mark.e2e
def test_sigterm_mid_build_publishes_nothing_and_cleans_up(tmp_path, models_home):
    from facestream_models.sources import FACE_RECOGNITION_MODELS

    cached = downloads_dir(models_home) / FACE_RECOGNITION_MODELS.filename
    if not cached.is_file():
        pytest.skip("face_recognition_models sdist not in the download cache")
    (tmp_path / "downloads").mkdir()
    os.symlink(cached, tmp_path / "downloads" / cached.name)
    env = {**os.environ, "FACESTREAM_HOME": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream", "models", "pull", "dlib-resnet-v1"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    models = tmp_path / "models"
    wait_until(
        lambda: list(models.glob(".build-*/model")) or proc.poll() is not None, 60, "the build to start"
    )
    assert proc.poll() is None, "the build finished before it could be interrupted"
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "facestream: interrupted"
    assert not (models / "dlib-resnet-v1").exists() and not list(models.glob(".build-*"))


def test_unwritable_home_is_one_line(tmp_path):
    """A FACESTREAM_HOME the machine will not let us write (a read-only mount in a container, a folder
    of another user) is the user's setup: one line naming the folder and the variable, exit 2."""
    home = Path("/sys/facestream-home")  # /sys refuses new entries, even to root
    if home.exists():
        pytest.skip("/sys accepted a folder here")
    proc = subprocess.run(
        [sys.executable, "-m", "stream", "models", "pull"],
        env={**os.environ, "FACESTREAM_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"cannot write {home}" in proc.stderr and "FACESTREAM_HOME" in proc.stderr, proc.stderr
