"""The face crop kept with every gallery sample, so the gallery can be re-embedded by another model
(`gallery rebuild --model M`) without the original photos.

A square around the detector box, grown by `pad` box sizes on every side (room for any model's
alignment: dlib's landmark warp and facenet's box margin both fit inside), scaled so the box is
`box_px` wide, stored as JPEG (quality 95: ~25 KB; PNG would be ~6x larger for no identity gain).
Box and landmarks map into the crop with crop = (photo - origin) * scale."""

from __future__ import annotations

import cv2
import numpy as np

from stream.errors import FacestreamError

BOX_PX = 150  # the box's side in the stored crop: dlib's chips see faces at about this size
PAD = 0.5  # margin on each side, in box sizes: the crop is 2x the box
JPEG_QUALITY = 95


def make_crop(frame: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """(RGB crop, (x0, y0, scale)) for one face of an RGB frame; outside the frame is black, as the
    embedders' own warps see it."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1, 1.0) * (1 + 2 * PAD)
    out = int(round(BOX_PX * (1 + 2 * PAD)))
    x0 = int(np.floor((x1 + x2) / 2 - side / 2))
    y0 = int(np.floor((y1 + y2) / 2 - side / 2))
    s = int(np.ceil(side))
    h, w = frame.shape[:2]
    region = np.zeros((s, s, 3), np.uint8)
    # Copy the part of the square that lies inside the frame.
    fx1, fy1, fx2, fy2 = max(x0, 0), max(y0, 0), min(x0 + s, w), min(y0 + s, h)
    if fx2 > fx1 and fy2 > fy1:
        region[fy1 - y0 : fy2 - y0, fx1 - x0 : fx2 - x0] = frame[fy1:fy2, fx1:fx2]
    # INTER_AREA when shrinking avoids aliasing; linear when enlarging a small face.
    interp = cv2.INTER_AREA if s > out else cv2.INTER_LINEAR
    crop = cv2.resize(region, (out, out), interpolation=interp)
    return crop, (float(x0), float(y0), out / s)


def encode_crop(crop: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    )
    if not ok:
        raise FacestreamError("cannot encode face crop")
    return buf.tobytes()


def decode_crop(data: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise FacestreamError("corrupt face crop in gallery")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def to_crop_coords(points: np.ndarray, origin: tuple[float, float, float]) -> np.ndarray:
    """Photo pixel coordinates (..., 2) -> crop pixel coordinates."""
    x0, y0, scale = origin
    return (np.asarray(points, np.float64) - [x0, y0]) * scale
