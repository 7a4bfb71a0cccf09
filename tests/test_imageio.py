"""Image loading: every odd input becomes RGB uint8 or one clear FacestreamError."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from stream.errors import FacestreamError
from stream.imageio import load_image, to_rgb_uint8


def _write(path: Path, img: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), img)
    return path


def test_colour_jpeg_comes_back_rgb(tmp_path):
    bgr = np.zeros((20, 30, 3), np.uint8)
    bgr[..., 0] = 255  # pure blue in OpenCV's BGR order
    img = load_image(_write(tmp_path / "blue.png", bgr))
    assert img.shape == (20, 30, 3) and img.dtype == np.uint8
    assert img[0, 0].tolist() == [0, 0, 255]


def test_grayscale_16bit_and_alpha_are_converted(tmp_path):
    gray16 = np.full((10, 12), 65535 // 2, np.uint16)
    img = load_image(_write(tmp_path / "g16.png", gray16))
    assert img.shape == (10, 12, 3) and img.dtype == np.uint8
    assert abs(int(img[0, 0, 0]) - 127) <= 1
    bgra = np.zeros((8, 8, 4), np.uint8)
    bgra[..., 2] = 200  # red
    bgra[..., 3] = 10  # nearly transparent: alpha is dropped, colour kept
    img = load_image(_write(tmp_path / "a.png", bgra))
    assert img.shape == (8, 8, 3) and img[0, 0].tolist() == [200, 0, 0]


def test_shared_32bit_png_loads(shared_data):
    img = load_image(shared_data / "faces/face_recognition/tests/32bit.png")
    assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        (b"", "empty file"),
        (b"this is not an image at all", "cannot decode"),
    ],
)
def test_bad_files_raise_one_line(tmp_path, content, message):
    path = tmp_path / "bad.jpg"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(FacestreamError, match=message) as e:
        load_image(path)
    assert "\n" not in str(e.value)


def test_truncated_jpeg_is_refused(tmp_path):
    ok, buf = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    assert ok
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.tobytes()[: len(buf) // 2])
    with pytest.raises(FacestreamError, match="truncated"):
        load_image(path)


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(FacestreamError, match="directory"):
        load_image(tmp_path)


def test_array_conversions():
    assert to_rgb_uint8(np.ones((4, 4), np.float32)).max() == 255
    assert to_rgb_uint8(np.zeros((4, 4, 1), np.uint8)).shape == (4, 4, 3)
    with pytest.raises(FacestreamError, match="shape"):
        to_rgb_uint8(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(FacestreamError, match="empty"):
        to_rgb_uint8(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(FacestreamError, match="NaN"):
        to_rgb_uint8(np.full((2, 2, 3), np.nan, np.float32))
