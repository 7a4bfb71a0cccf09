"""Reading images from users: any file OpenCV can decode, returned as RGB uint8 H x W x 3.

Grayscale, 4-channel (alpha dropped), 16-bit and float images are converted; missing, unreadable,
truncated or undecodable files raise a one-line FacestreamError naming the file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from stream.errors import FacestreamError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def load_image(path: str | Path) -> np.ndarray:
    return decode_image(read_file(path), name=str(path))


def read_file(path: str | Path) -> bytes:
    """A user's file's bytes, or one FacestreamError line saying why not."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FacestreamError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise FacestreamError(f"{path}: is a directory, not an image") from None
    except OSError as e:
        raise FacestreamError(f"{path}: cannot read ({e.strerror})") from None


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    if not data:
        raise FacestreamError(f"{name}: empty file")
    if data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-4096:]:
        # libjpeg decodes a cut-off JPEG into a grey-filled image with only a warning: refuse it.
        raise FacestreamError(f"{name}: truncated JPEG (no end-of-image marker)")
    buf = np.frombuffer(data, dtype=np.uint8)
    # COLOR|ANYDEPTH: applies EXIF orientation, keeps 16-bit depth, gives 3 channels for grey and drops alpha.
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    if img is None:
        raise FacestreamError(f"{name}: not an image or corrupt (cannot decode)")
    return to_rgb_uint8(img, bgr=True, name=name)


def to_rgb_uint8(img: np.ndarray, bgr: bool = False, name: str = "image") -> np.ndarray:
    """Convert an image array of any common layout/depth to contiguous RGB uint8 H x W x 3."""
    if not isinstance(img, np.ndarray):
        raise FacestreamError(f"{name}: expected a numpy array, got {type(img).__name__}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (3, 4)):
        raise FacestreamError(f"{name}: unsupported image shape {img.shape}")
    if img.size == 0:
        raise FacestreamError(f"{name}: empty image {img.shape}")
    img = _to_uint8(img, name)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB)
    if bgr:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(img)


def _to_uint8(img: np.ndarray, name: str) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return (img >> 8).astype(np.uint8)
    if img.dtype in (np.float32, np.float64):
        if not np.isfinite(img).all():
            raise FacestreamError(f"{name}: image has NaN or infinite values")
        scale = 255.0 if img.max(initial=0.0) <= 1.0 else 1.0
        return np.clip(img * scale + 0.5, 0, 255).astype(np.uint8)
    raise FacestreamError(f"{name}: unsupported pixel type {img.dtype}")
