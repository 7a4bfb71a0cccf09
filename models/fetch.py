"""Model sources published outside PyPI (e.g. facenet-pytorch's GitHub release checkpoints): downloaded
once into $FACESTREAM_HOME/downloads, sha256-checked where the pin has one. PyPI packages are fetched
with stream.pypi, which the runtime shares (the demo's photos)."""

from __future__ import annotations

import shutil
import urllib.request
from pathlib import Path

from facestream_models.sources import UrlSource
from stream.errors import FacestreamError
from stream.pypi import check_sha256, sha256_file


def fetch_url(src: UrlSource, downloads: Path, name: str, from_file: Path | None = None) -> Path:
    """A file published outside PyPI; a local copy (--from) always wins."""
    if from_file is not None:
        if src.sha256:
            check_sha256(from_file, src.sha256, src.filename)
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
        check_sha256(part, src.sha256, src.filename)
    part.replace(target)
    return target
