"""The built models under $FACESTREAM_HOME/models: one folder per model with its manifest (model.json).

The one place that reads a manifest (`read_manifest`) and the one answer to "is model M built and
valid?" (`check_model`, and `is_built` for a yes or no). The build (facestream_models.build) writes
what is read here: `ModelSpec.to_manifest(source)`, the builder's extras, and `build_format`,
`source_sha256`, `built_at`, `build_seconds`, `files` (name -> bytes) and `sha256` (name -> digest)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream.errors import FacestreamError, ModelMissingError
from stream.home import models_dir
from stream.pypi import sha256_file

MANIFEST = "model.json"
ONNX_FILE = "model.onnx"  # an embedder's exported model (manifest key "file")
INT8_FILE = "model.int8.onnx"  # its verified int8 version, when built (manifest key "int8")
# Bumped when what a build writes changes (2: int8 with U8U8 input layers, its CPU record and check
# chips): a model published by an older build is not built as far as `is_built` (and so the next
# `models pull`) is concerned.
BUILD_FORMAT = 2


def model_path(name: str, home: Path | None = None) -> Path:
    return models_dir(home) / name


def require_model(name: str, home: Path | None = None) -> Path:
    """The folder of a published model, for code about to load it: the one run-time check that it is
    there (ModelMissingError, one line that says how to build it, otherwise)."""
    read_manifest(name, home)
    return model_path(name, home)


def read_manifest(name: str, home: Path | None = None) -> dict[str, Any]:
    """The manifest of a published model; ModelMissingError (one line, says how to fix) if absent."""
    path = model_path(name, home) / MANIFEST
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
        return manifest
    except FileNotFoundError:
        raise ModelMissingError(
            f"model {name!r} is not built in {path.parent.parent}: run `facestream models pull {name}`"
        ) from None
    except (OSError, ValueError) as e:
        raise FacestreamError(
            f"{path}: unreadable model manifest ({e}); rebuild with `facestream models pull --force {name}`"
        ) from None


@dataclass
class ModelCheck:
    """What `check_model` found. state: "ok" | "outdated" (complete, but published by an older build:
    usable, and the next `models pull` rebuilds it) | "not built" | "damaged" (`problems` says why,
    the last one how to fix it)."""

    name: str
    state: str = "ok"
    files: int = 0  # files the manifest lists
    sha256_checked: int = 0
    problems: list[str] = field(default_factory=list)
    build_format: int | None = None  # of the build that published it

    @property
    def built(self) -> bool:
        """Complete, and published by this version's build."""
        return self.state == "ok"


def check_model(name: str, home: Path | None = None, verify_sha256: bool = False) -> ModelCheck:
    """Is model `name` built and valid: a readable manifest, and every file it lists present with
    its size (and, with verify_sha256, its recorded sha256)."""
    out = ModelCheck(name)
    try:
        manifest = read_manifest(name, home)
    except ModelMissingError:
        out.state = "not built"
        return out
    except FacestreamError as e:
        out.state, out.problems = "damaged", [str(e)]
        return out
    out.build_format = manifest.get("build_format")
    folder = model_path(name, home)
    sizes, digests = manifest.get("files") or {}, manifest.get("sha256") or {}
    for file in sorted({*sizes, *digests}):
        path = folder / file
        out.files += 1
        if not path.is_file():
            out.problems.append(f"{file} missing")
        elif file in sizes and path.stat().st_size != sizes[file]:
            out.problems.append(f"{file} has {path.stat().st_size} bytes, the manifest says {sizes[file]}")
        elif verify_sha256 and file in digests:
            out.sha256_checked += 1
            if sha256_file(path) != digests[file]:
                out.problems.append(f"{file} sha256 differs from the manifest")
    if not out.files:
        out.problems.append("the manifest lists no files")
    if out.problems:
        out.state = "damaged"
        out.problems.append(f"rebuild with `facestream models pull --force {name}`")
    elif out.build_format != BUILD_FORMAT:
        out.state = "outdated"
        out.problems.append(f"built by an older facestream: rebuild with `facestream models pull {name}`")
    return out


def is_built(name: str, home: Path | None = None) -> bool:
    """Built, complete (sizes, not hashes: cheap enough for every `models pull` and `models list`)
    and published by this version's build."""
    return check_model(name, home).built
