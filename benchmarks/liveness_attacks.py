"""Presentation attacks made from the shared data, for the liveness benchmark and tests.

- print attack: a shared photo, cropped to a portrait, held up in front of the camera: a flat sheet in
  3D that the attacker tilts and turns (to fake a head turn) and moves, seen by a pinhole camera; the
  sheet's image in each frame is one homography of the photo. Optionally with a moving glare spot and
  sensor noise + JPEG compression.
- screen replay: the shared walkway clip, zoomed to one walking person, played on a phone/tablet
  screen (a flat picture with a dark bezel) that the attacker holds and moves the same way.

Every frame is RGB uint8 `SIZE`; the background is a blurred frame of the clip (no detectable faces)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

SIZE = (640, 480)  # width, height of the camera frames
FOCAL = 600.0  # pinhole focal length in pixels
DISTANCE = 600.0  # sheet's distance from the camera, same units as its width (the sheet is 300 wide)


@dataclass(frozen=True)
class Motion:
    """How the attacker moves the sheet: sinusoids (degrees, pixels) over the clip."""

    yaw_deg: float = 35.0  # turning the sheet about its vertical axis (a fake head turn)
    pitch_deg: float = 12.0
    roll_deg: float = 8.0
    shift: float = 40.0
    period_s: float = 2.0
    hand_jitter: float = 1.5  # pixels of shake on each corner

    def pose(self, t: float, phase: float) -> tuple[float, float, float, float, float]:
        w = 2 * math.pi * t / self.period_s + phase
        return (
            math.radians(self.yaw_deg) * math.sin(w),
            math.radians(self.pitch_deg) * math.sin(0.7 * w + 1.0),
            math.radians(self.roll_deg) * math.sin(0.5 * w + 2.0),
            self.shift * math.sin(0.3 * w),
            0.5 * self.shift * math.sin(0.4 * w + 0.5),
        )


def sheet_homography(src_w: int, src_h: int, pose: tuple[float, float, float, float, float]) -> np.ndarray:
    """The homography from a picture of src_w x src_h pixels to the camera frame, for a sheet 300 units
    wide at DISTANCE, rotated by (yaw, pitch, roll) and shifted in the image by (dx, dy)."""
    yaw, pitch, roll, dx, dy = pose
    width = 300.0
    height = width * src_h / src_w
    corners = np.array(
        [
            [-width / 2, -height / 2, 0],
            [width / 2, -height / 2, 0],
            [width / 2, height / 2, 0],
            [-width / 2, height / 2, 0],
        ]
    )
    ry = np.array([[math.cos(yaw), 0, math.sin(yaw)], [0, 1, 0], [-math.sin(yaw), 0, math.cos(yaw)]])
    rx = np.array([[1, 0, 0], [0, math.cos(pitch), -math.sin(pitch)], [0, math.sin(pitch), math.cos(pitch)]])
    rz = np.array([[math.cos(roll), -math.sin(roll), 0], [math.sin(roll), math.cos(roll), 0], [0, 0, 1]])
    pts = corners @ (rz @ rx @ ry).T + np.array([0, 0, DISTANCE])
    img = FOCAL * pts[:, :2] / pts[:, 2:3] + np.array([SIZE[0] / 2 + dx, SIZE[1] / 2 + dy])
    src = np.array([[0, 0], [src_w, 0], [src_w, src_h], [0, src_h]], np.float32)
    return cv2.getPerspectiveTransform(src, img.astype(np.float32))


def background(clip_frame: np.ndarray) -> np.ndarray:
    bg = cv2.resize(clip_frame, SIZE, interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(bg, (0, 0), 9)


def _composite(bg: np.ndarray, picture: np.ndarray, h: np.ndarray) -> np.ndarray:
    warped = cv2.warpPerspective(picture, h, SIZE, flags=cv2.INTER_LINEAR)
    mask = cv2.warpPerspective(np.full(picture.shape[:2], 255, np.uint8), h, SIZE)
    out = bg.copy()
    out[mask > 127] = warped[mask > 127]
    return out


def _glare(frame: np.ndarray, t: float, rng: np.random.Generator) -> np.ndarray:
    """A bright specular spot sliding across the picture (a lamp reflected by glossy paper)."""
    h, w = frame.shape[:2]
    cx = w * (0.5 + 0.25 * math.sin(1.3 * t)) + rng.normal(0, 2)
    cy = h * (0.45 + 0.1 * math.cos(0.9 * t))
    yy, xx = np.mgrid[0:h, 0:w]
    spot = np.exp(-(((xx - cx) / 45.0) ** 2 + ((yy - cy) / 30.0) ** 2))
    return np.clip(frame + 220.0 * spot[..., None], 0, 255).astype(np.uint8)


def _noise(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noisy = np.clip(frame + rng.normal(0, 8, frame.shape), 0, 255).astype(np.uint8)
    ok, jpg = cv2.imencode(".jpg", noisy[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 60])
    assert ok
    return np.ascontiguousarray(cv2.imdecode(jpg, cv2.IMREAD_COLOR)[..., ::-1])


def portrait(photo: np.ndarray, box: Sequence[float], margin: float = 1.0) -> np.ndarray:
    """The photo cut to a portrait around a face box (the box grown by `margin` of its size per side)."""
    x1, y1, x2, y2 = box
    bw, bh = x2 - x1, y2 - y1
    h, w = photo.shape[:2]
    a, b = max(int(x1 - margin * bw), 0), max(int(y1 - margin * bh), 0)
    c, d = min(int(x2 + margin * bw), w), min(int(y2 + margin * bh), h)
    return np.ascontiguousarray(photo[b:d, a:c])


def print_attack(
    photo: np.ndarray,
    bg: np.ndarray,
    n: int,
    fps: float = 25.0,
    glare: bool = False,
    noise: bool = False,
    motion: Motion | None = None,
    seed: int = 0,
) -> list[np.ndarray]:
    """n frames of `photo` (a portrait, RGB) held up as a printed sheet."""
    motion = motion or Motion()
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * math.pi)
    frames = []
    for i in range(n):
        t = i / fps
        h = sheet_homography(photo.shape[1], photo.shape[0], motion.pose(t, phase))
        f = _composite(bg, photo, h)
        if glare:
            f = _glare(f, t, rng)
        if noise:
            f = _noise(f, rng)
        frames.append(f)
    return frames


def screen_replay(
    clip: Sequence[np.ndarray],
    centres: Sequence[tuple[float, float]],
    window: int,
    bg: np.ndarray,
    fps: float = 25.0,
    noise: bool = True,
    motion: Motion | None = None,
    seed: int = 0,
) -> list[np.ndarray]:
    """The clip zoomed to a square `window` around `centres[i]` (one walking person), shown on a
    screen with a dark bezel that is held up and moved like a sheet; screens are a bit dim and noisy."""
    motion = motion or Motion(yaw_deg=20.0, pitch_deg=8.0, roll_deg=5.0, shift=25.0)
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * math.pi)
    frames = []
    for i, (frame, (cx, cy)) in enumerate(zip(clip, centres, strict=True)):
        hh, ww = frame.shape[:2]
        x = int(min(max(cx - window / 2, 0), ww - window))
        y = int(min(max(cy - window / 2, 0), hh - window))
        content = cv2.resize(frame[y : y + window, x : x + window], (360, 360), interpolation=cv2.INTER_AREA)
        screen = np.full((400, 400, 3), 12, np.uint8)  # bezel
        screen[20:380, 20:380] = (content * 0.85 + 10).astype(np.uint8)  # a screen's black level and gain
        h = sheet_homography(400, 400, motion.pose(i / fps, phase))
        f = _composite(bg, screen, h)
        frames.append(_noise(f, rng) if noise else f)
    return frames


# The eye model's view of the mesh's eye contours (stream.liveness.mesh): each eye's ring of 16 points.
_LEFT_RING = [33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246]
_RIGHT_RING = [263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466]


def close_eyes(frame: np.ndarray, mesh_points: np.ndarray) -> np.ndarray:
    """A SYNTHETIC closed-eye frame: each eye's opening (the mesh's eye ring) painted over with the
    skin just above it, and a dark lash line along the lower lid. Crude, but it looks like shut eyes
    and is what the benchmark's "synthetic blink" is made of; no real blink is claimed."""
    out = frame.astype(np.float32)
    for ring in (_LEFT_RING, _RIGHT_RING):
        poly = mesh_points[ring, :2]
        w = float(np.linalg.norm(poly[0] - poly[8]))
        above = poly + np.array([0, -0.35 * w])
        x1, y1 = np.floor(above.min(0)).astype(int)
        x2, y2 = np.ceil(above.max(0)).astype(int)
        patch = frame[max(y1, 0) : max(y2, 1), max(x1, 0) : max(x2, 1)].reshape(-1, 3)
        if not len(patch):
            continue
        colour = np.median(patch, axis=0)
        mask = np.zeros(frame.shape[:2], np.uint8)
        cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 255)
        mask = cv2.dilate(mask, np.ones((3, 3), np.uint8))
        soft = cv2.GaussianBlur(mask.astype(np.float32) / 255, (0, 0), max(w * 0.05, 1))[..., None]
        out = out * (1 - soft) + colour * soft
        lower = np.round(mesh_points[ring[:9], :2]).astype(np.int32)
        cv2.polylines(out, [lower], False, (40, 30, 30), max(int(w * 0.06), 1), cv2.LINE_AA)
    return np.clip(out, 0, 255).astype(np.uint8)
