"""The demo's video, made from still photos: a virtual camera films each photo (hung on a dark wall)
with the motions a real camera makes (pan with motion blur, zoom, focus pulls) and hard cuts
between shots, the last of which cuts to another person. Pure OpenCV: no model is loaded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from stream.errors import FacestreamError

SIZE = (640, 480)  # width, height: a common webcam mode
FPS = 20.0
WALL = (40, 40, 40)  # BGR around the photo; plain, so that no false faces appear at the edges

# Face centre x, y and face height (pixels) in each pinned photo (stream.pipeline.demo_samples), measured
# once with MTCNN. The photos are pinned by sha256, so these numbers hold; the clip then places the
# face where each shot wants it without loading a detector.
FACES = {
    "obama2.jpg": (331.0, 426.0, 426.0),
    "obama3.jpg": (774.0, 430.0, 363.0),
    "biden.jpg": (570.0, 363.0, 393.0),
}


@dataclass(frozen=True)
class Shot:
    photo: str
    person: str  # who the photo shows: what the demo summary expects the run to say
    motion: str  # in words, for the summary
    frames: int
    start: tuple[float, float, float]  # face centre x, y and face height in the output frame
    end: tuple[float, float, float]
    defocus: float = 0.0  # Gaussian sigma at the shot's first frame, sharp by its middle


@dataclass(frozen=True)
class Segment:
    first: int  # frame numbers in the clip (= JSONL seq), inclusive
    last: int
    shot: Shot


# The cut to biden puts his face exactly where obama's was: the hard case for a tracker. Boxes alone
# would continue obama's track onto him (a tracker that did so showed obama's name on him at 0.85);
# the scene cut and the track's appearance each end it, and no face is named against its own match.
SHOTS = (
    Shot("obama2.jpg", "obama", "pan left to right", 30, (170, 250, 150), (470, 230, 175)),
    Shot("obama3.jpg", "obama", "zoom in, out of focus at first", 30, (330, 260, 110), (300, 230, 250), 4.0),
    Shot(
        "biden.jpg",
        "biden",
        "cut to another person at the same place, zoom out",
        30,
        (300, 230, 250),
        (330, 230, 200),
    ),
)


def _ease(t: float) -> float:
    """Smoothstep: a camera operator starts and stops a move gently (speed peaks mid-move)."""
    return t * t * (3.0 - 2.0 * t)


def _pose(shot: Shot, t: float) -> np.ndarray:
    a, b = np.asarray(shot.start, np.float64), np.asarray(shot.end, np.float64)
    return a + (b - a) * _ease(min(max(t, 0.0), 1.0))


def _motion_kernel(dx: float, dy: float) -> np.ndarray | None:
    """Line kernel for a move of (dx, dy) pixels during one exposure; None when under 2 px."""
    length = int(round(np.hypot(dx, dy)))
    if length < 2:
        return None
    size = length | 1  # odd, so the line is centred
    k = np.zeros((size, size), np.float32)
    c = size // 2
    ux, uy = dx / np.hypot(dx, dy), dy / np.hypot(dx, dy)
    p0 = (int(round(c - ux * length / 2)), int(round(c - uy * length / 2)))
    p1 = (int(round(c + ux * length / 2)), int(round(c + uy * length / 2)))
    cv2.line(k, p0, p1, 1.0, 1)
    return k / float(k.sum())


def render(photo: np.ndarray, face: tuple[float, float, float], shot: Shot, i: int) -> np.ndarray:
    """Frame i of a shot: the photo scaled and placed so that its face sits at the shot's pose."""
    n = max(shot.frames - 1, 1)
    fx, fy, fh = _pose(shot, i / n)
    cx, cy, ch = face
    # Resize with INTER_AREA first (warpAffine alone aliases when it shrinks a photo 3-4x), then a
    # sub-pixel translation puts the face in place.
    small = cv2.resize(photo, None, fx=fh / ch, fy=fh / ch, interpolation=cv2.INTER_AREA)
    sx, sy = small.shape[1] / photo.shape[1], small.shape[0] / photo.shape[0]
    m = np.array([[1, 0, fx - cx * sx], [0, 1, fy - cy * sy]], np.float32)
    frame = cv2.warpAffine(small, m, SIZE, flags=cv2.INTER_LINEAR, borderValue=WALL)
    # Motion blur: the image moves by the pose change of one frame interval while the shutter is open.
    dx, dy, _ = _pose(shot, (i + 0.5) / n) - _pose(shot, (i - 0.5) / n)
    k = _motion_kernel(dx, dy)
    if k is not None:
        frame = cv2.filter2D(frame, -1, k)
    sigma = shot.defocus * max(0.0, 1.0 - 2.0 * i / n)
    if sigma > 0.3:
        frame = cv2.GaussianBlur(frame, (0, 0), sigma)
    return frame


def build_clip(photos: dict[str, Path], path: Path, shots: tuple[Shot, ...] = SHOTS) -> list[Segment]:
    """Write the clip (mp4) and return where each shot lies in it."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), FPS, SIZE)
    if not writer.isOpened():
        raise FacestreamError(f"{path}: cannot write an mp4 video here")
    segments, first = [], 0
    try:
        for shot in shots:
            photo = cv2.imread(str(photos[shot.photo]), cv2.IMREAD_COLOR)
            if photo is None:
                raise FacestreamError(f"{photos[shot.photo]}: cannot decode the sample photo")
            for i in range(shot.frames):
                writer.write(render(photo, FACES[shot.photo], shot, i))
            segments.append(Segment(first, first + shot.frames - 1, shot))
            first += shot.frames
    finally:
        writer.release()
    return segments
