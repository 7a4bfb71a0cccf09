"""Finding built models under $FACESTREAM_HOME/models: one folder per model with model.json."""

from __future__ import annotations

import json
from pathlib import Path

from stream.errors import FacestreamError, ModelMissingError
from stream.home import models_dir

MANIFEST = "model.json"


def model_path(name: str, home: Path | None = None) -> Path:
    return models_dir(home) / name


def read_manifest(name: str, home: Path | None = None) -> dict:
    """The manifest of a published model; ModelMissingError (one line, says how to fix) if absent."""
    path = model_path(name, home) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelMissingError(
            f"model {name!r} is not built in {path.parent.parent}: run `facestream models pull {name}`"
        ) from None
    except (OSError, ValueError) as e:
        raise FacestreamError(
            f"{path}: unreadable model manifest ({e}); rebuild with `facestream models pull --force {name}`"
        ) from None
