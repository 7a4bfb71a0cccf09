"""The optional face landmark model, built once (needs the landmarks extra; under CI its absence fails)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import missing


@pytest.fixture(scope="session")
def mesh(models_home: Path):
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
