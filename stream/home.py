"""Where built models and downloads live: $FACESTREAM_HOME (default ~/.cache/facestream)."""

from __future__ import annotations

import os
from pathlib import Path


def facestream_home() -> Path:
    return Path(os.environ.get("FACESTREAM_HOME") or Path.home() / ".cache" / "facestream").expanduser()


def models_dir(home: Path | None = None) -> Path:
    """Published models: one folder per model name, each with model.json (+ ONNX/weights)."""
    return (home or facestream_home()) / "models"


def downloads_dir(home: Path | None = None) -> Path:
    """Downloaded source packages (wheels, sdists), kept so that a rebuild needs no network."""
    return (home or facestream_home()) / "downloads"
