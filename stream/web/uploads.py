"""Uploaded photos: limited in size, accepted only as the image types below (by their bytes, not by
what the client says), decoded by the CLI's own path (stream/imageio.py). Each refusal is an
HTTPException with a one-line reason: 413 too large, 415 not an accepted type, 400 undecodable."""

from __future__ import annotations

import re

import numpy as np
from fastapi import HTTPException, UploadFile

from stream.errors import FacestreamError
from stream.imageio import decode_image

# Magic bytes of the accepted types (what browsers and cameras produce).
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
ACCEPTED = "JPEG, PNG, WebP, BMP or TIFF"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def image_type(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((kind for magic, kind in _MAGIC if data.startswith(magic)), None)


def safe_name(upload: UploadFile, index: int) -> str:
    """The upload's file name without any path, for messages and the sample's source name."""
    base = _SAFE_NAME.sub("_", (upload.filename or "").replace("\\", "/").rsplit("/", 1)[-1]).strip("._")
    return base[:100] or f"upload-{index}"


async def read_image(upload: UploadFile, limit_bytes: int, index: int = 0) -> tuple[str, bytes, np.ndarray]:
    """(safe name, bytes, RGB uint8 pixels) of one uploaded photo, or a 4xx HTTPException."""
    name = safe_name(upload, index)
    data = await upload.read(limit_bytes + 1)
    if len(data) > limit_bytes:
        raise HTTPException(413, f"{name}: larger than {limit_bytes / 2**20:.1f} MB")
    if not data:
        raise HTTPException(400, f"{name}: empty file")
    if image_type(data) is None:
        raise HTTPException(415, f"{name}: not a {ACCEPTED} image")
    try:
        pixels = decode_image(data, name=name)
    except FacestreamError as e:
        raise HTTPException(400, str(e)) from None
    return name, data, pixels
