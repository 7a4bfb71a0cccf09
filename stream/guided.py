"""Guided detection: where in a frame the detector needs to look (detect.mode: guided).

Most of a fixed camera's frame does not change from one frame to the next, and a face found a frame
ago is near where it was. So per camera, a `DetectionPlan` decides for each frame:
- the whole frame: the first frame, every `full_every_s` of video time (so that nothing standing still
  is missed for long), at a scene cut (the capture's verdict, stream/pipeline/scenecut.py, carried
  on the frame), and whenever the regions would cover most of the frame anyway;
- otherwise the regions that changed (differencing of small grey copies of consecutive frames), where
  a face of any size may have appeared, plus a region around where each face found last time is
  predicted to be now (from where it was to where its last step repeated takes it), where only faces
  of about its size are looked for; a
  change inside such a region is that face moving and adds nothing;
- nothing at all when nothing moved and no face was there (a static empty scene costs one resize).
The detector runs the cascade on the frame's own pyramid, only on the windows of each level that
touch a region (MTCNN.detect_regions): a face in a region gets the box the whole frame would give it.
What it costs in recall is measured in benchmarks/bench_guided.py (results: benchmarks/RESULTS.md,
"Guided detection")."""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

Box = tuple[int, int, int, int]  # x1, y1, x2, y2 in frame pixels (x2, y2 exclusive)

SMALL_WIDTH = 160  # motion is measured on a copy this wide: enough for a face's worth of change


@dataclass(frozen=True)
class GuidedSettings:
    full_every_s: float = 1.0  # a whole-frame pass at least this often (video time)
    motion_threshold: int = 18  # grey-level change (0-255) of a small-copy pixel that counts as motion
    margin: float = 0.5  # a known face's region: its predicted box grown by this share on every side
    min_face_size: int = 20  # the detector's: a region of change grows by this on every side
    max_area: float = 0.6  # regions covering more than this share of the frame: run the whole frame
    face_shrink: float = 0.6  # around a known face, look for faces from this share of its size to its
    # size divided by this
    cut_change: float = 0.1  # the frame's scene-change score (scenecut.py) that makes it a new shot


@dataclass
class Plan:
    """What to detect in one frame: the whole frame (regions None) or these regions (maybe none)."""

    regions: list[Box] | None
    reason: str  # "first", "periodic", "cut", "guided", "still"
    min_faces: list[int] | None = None  # per region: the smallest face worth looking for there
    max_faces: list[int | None] | None = None  # per region: the largest (None: any)

    @property
    def full(self) -> bool:
        return self.regions is None


@dataclass
class DetectionPlan:
    """One camera's state: the last small grey frame, the last whole-frame pass, the last faces."""

    settings: GuidedSettings = field(default_factory=GuidedSettings)
    _small: np.ndarray | None = None
    _shape: tuple[int, ...] | None = None
    _last_full: float | None = None
    _faces: list[Box] = field(default_factory=list)
    _steps: list[tuple[float, float]] = field(default_factory=list)  # each face's last move (x, y)

    def plan(self, frame: np.ndarray, t: float, cut: bool = False) -> Plan:
        """Where to look in `frame` (RGB, H x W x 3) taken at `t` seconds (video or wall time); `cut`:
        the frame starts a new shot."""
        s = self.settings
        h, w = frame.shape[:2]
        small = _small_grey(frame)
        previous, self._small = self._small, small
        if previous is None or self._shape != frame.shape or self._last_full is None:
            self._shape = frame.shape
            return self._full(t, "first")
        if t - self._last_full >= s.full_every_s or t < self._last_full:
            return self._full(t, "periodic")
        if cut:
            return self._full(t, "cut")
        changed = cv2.absdiff(small, previous) > s.motion_threshold
        # Around a face found last time, look for that face where its last step takes it: it cannot
        # have changed size much in a frame (and the whole frame comes back every full_every_s).
        faces: list[tuple[Box, int, int | None]] = []
        for b, (dx, dy) in zip(self._faces, self._steps, strict=True):
            side = min(b[2] - b[0], b[3] - b[1])
            # From where it was to where its last step takes it: it may also have stopped.
            span = (
                round(b[0] + min(dx, 0)),
                round(b[1] + min(dy, 0)),
                round(b[2] + max(dx, 0)),
                round(b[3] + max(dy, 0)),
            )
            lo, hi = max(s.min_face_size, int(s.face_shrink * side)), int(np.ceil(side / s.face_shrink))
            faces.append((_grow(span, s.margin, 2 * s.min_face_size, w, h), lo, hi))
        # Where something else moved, any face may have appeared: look for faces of every size.
        moved: list[tuple[Box, int, int | None]] = [
            (_pad(b, s.min_face_size, w, h), s.min_face_size, None)
            for b in _motion_boxes(changed, w / small.shape[1], h / small.shape[0])
            if not any(_inside(b, f) for f, _, _ in faces)
        ]
        regions = moved + faces
        if not regions:
            return Plan([], "still")
        if _union_area([b for b, _, _ in regions], w, h) > s.max_area * w * h:
            return self._full(t, "periodic")
        return Plan(
            [b for b, _, _ in regions], "guided", [lo for _, lo, _ in regions], [hi for _, _, hi in regions]
        )

    def observe(self, boxes: np.ndarray) -> None:
        """The faces found in the frame just planned (N x 4 float boxes): looked for again next time,
        one step further (the step from the face last seen nearest, if that one overlaps it)."""
        faces = [(int(b[0]), int(b[1]), int(np.ceil(b[2])), int(np.ceil(b[3]))) for b in boxes]
        steps = []
        for f in faces:
            best = max(self._faces, key=lambda p: _overlap(p, f), default=None)
            if best is None or _overlap(best, f) <= 0:
                steps.append((0.0, 0.0))
            else:
                steps.append(((f[0] + f[2] - best[0] - best[2]) / 2, (f[1] + f[3] - best[1] - best[3]) / 2))
        self._faces, self._steps = faces, steps

    def _full(self, t: float, reason: str) -> Plan:
        self._last_full = t
        return Plan(None, reason)


def _small_grey(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    size = (SMALL_WIDTH, max(1, round(h * SMALL_WIDTH / w)))
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    # Area averaging: sensor noise averages out, real change does not.
    return cv2.resize(grey, size, interpolation=cv2.INTER_AREA)


def _motion_boxes(changed: np.ndarray, sx: float, sy: float) -> list[Box]:
    """Bounding boxes (frame pixels) of the connected areas of change."""
    mask = cv2.dilate(changed.astype(np.uint8), np.ones((3, 3), np.uint8))
    n, _labels, stats, _centroids = cv2.connectedComponentsWithStats(mask, connectivity=8)
    boxes = []
    for x, y, bw, bh, _area in stats[1:n]:  # label 0 is the background
        boxes.append((int(x * sx), int(y * sy), int(np.ceil((x + bw) * sx)), int(np.ceil((y + bh) * sy))))
    return boxes


def _pad(b: Box, by: int, w: int, h: int) -> Box:
    x1, y1, x2, y2 = b
    return (max(0, x1 - by), max(0, y1 - by), min(w, x2 + by), min(h, y2 + by))


def _inside(a: Box, b: Box) -> bool:
    return b[0] <= a[0] and b[1] <= a[1] and a[2] <= b[2] and a[3] <= b[3]


def _overlap(a: Box, b: Box) -> int:
    """Pixels two boxes share."""
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def _union_area(boxes: list[Box], w: int, h: int) -> int:
    """Pixels covered by any of the boxes (counted in 8 x 8 cells)."""
    cells = np.zeros((h // 8 + 1, w // 8 + 1), bool)
    for x1, y1, x2, y2 in boxes:
        cells[y1 // 8 : (y2 + 7) // 8, x1 // 8 : (x2 + 7) // 8] = True
    return int(cells.sum()) * 64


def _grow(b: Box, margin: float, min_side: int, w: int, h: int) -> Box:
    """`b` with `margin` of its size added on every side, at least `min_side` square, in the frame."""
    x1, y1, x2, y2 = b
    bw, bh = max(x2 - x1, 1), max(y2 - y1, 1)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half_w = max(bw * (0.5 + margin), min_side / 2)
    half_h = max(bh * (0.5 + margin), min_side / 2)
    return (
        max(0, int(cx - half_w)),
        max(0, int(cy - half_h)),
        min(w, int(np.ceil(cx + half_w))),
        min(h, int(np.ceil(cy + half_h))),
    )


def merge(boxes: list[Box]) -> list[Box]:
    """Overlapping boxes replaced by their bounding box, until none overlap (a face on the border of
    two regions is then inside one of them)."""
    return [b for b, _ in merge_sized([(b, 0) for b in boxes])]


def merge_sized(regions: list[tuple[Box, int]]) -> list[tuple[Box, int]]:
    """merge() for (box, smallest face size to look for): a merged box looks for the smallest."""
    out = list(regions)
    merged = True
    while merged:
        merged = False
        for i in range(len(out)):
            for j in range(i + 1, len(out)):
                (a, fa), (b, fb) = out[i], out[j]
                if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                    box = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
                    out[i] = (box, min(fa, fb))
                    del out[j]
                    merged = True
                    break
            if merged:
                break
    return sorted(out)


class Guide:
    """The detect stage's plans, one per camera."""

    def __init__(self, settings: GuidedSettings) -> None:
        self.settings = settings
        self.cameras: dict[str, DetectionPlan] = {}

    def plan(self, cam: str, frame: np.ndarray, t: float, cut: bool = False) -> Plan:
        if cam not in self.cameras:
            self.cameras[cam] = DetectionPlan(self.settings)
        return self.cameras[cam].plan(frame, t, cut)

    def observe(self, cam: str, boxes: np.ndarray) -> None:
        if cam in self.cameras:
            self.cameras[cam].observe(boxes)
