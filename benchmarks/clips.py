"""Reading a video clip into memory for the benchmarks: RGB frames, optionally the first `limit`
only, optionally resized (INTER_AREA, as the 360p copies are made)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def read_clip(path: Path, limit: int | None = None, size: tuple[int, int] | None = None) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames: list[np.ndarray] = []
    while limit is None or len(frames) < limit:
        ok, bgr = cap.read()
        if not ok:
            break
        if size is not None:
            bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    return frames
