"""Batched MTCNN face detector: the same detections as facenet-pytorch 2.5.3's MTCNN (same pyramid,
thresholds, box regression, squaring, padding, NMS conventions and landmarks), computed in batches.

One `detect` call on F frames (sizes may differ):
1. integral images of all frames (one flat buffer);
2. P-Net over every pyramid level; the levels come from the integral images (stream.pyramid),
   bit-identical to facenet-pytorch's area interpolation. Small levels run on all same-size frames
   in one call; large ones in horizontal strips (about 200k pixels per call: the intermediate
   tensors then stay in cache and off the page-fault path; the gain: benchmarks/RESULTS.md, MTCNN);
   box regression is computed only where the face probability passes the threshold;
3. NMS per frame and level, then per frame, all frames together (stream.nms);
4. R-Net, then O-Net, on the candidate crops of every frame, resampled by one gather per chunk of
   candidates (chunks of 64 on CPU for the same cache reason; one chunk on GPU).
Everything runs in torch on the chosen device (CPU or CUDA).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from stream.detections import Detections
from stream.errors import FacestreamError, ModelMissingError
from stream.guided import Box, merge
from stream.mtcnn_nets import WEIGHT_FILES, ONet, PNet, RNet, load_net
from stream.nms import batched_nms
from stream.pyramid import IntegralImages, area_resize, crop_resize, integral_images

BACKENDS = ("auto", "torch")
PNET_PIXELS_PER_CALL = 200_000  # input pixels per P-Net call on CPU (frames x strip rows x width)
CPU_CHUNK = 64  # R-Net / O-Net candidates per call on CPU

# One P-Net call: (first frame, frame count, level index, (scale, h, w), (row0, row1), (col0, col1) of
# P-Net output)
PNetCall = tuple[int, int, int, tuple[float, int, int], tuple[int, int], tuple[int, int]]
# A part of one pyramid level to run P-Net on: (level index, row0, row1, col0, col1) of P-Net output
Window = tuple[int, int, int, int, int]


def pyramid_scales(h: int, w: int, min_face_size: int, factor: float) -> list[tuple[float, int, int]]:
    """(scale, height, width) of each pyramid level, computed exactly as facenet-pytorch does."""
    m = 12.0 / min_face_size
    minl = min(h, w) * m
    scale = m
    out: list[tuple[float, int, int]] = []
    while minl >= 12:
        out.append((scale, int(h * scale + 1), int(w * scale + 1)))
        scale = scale * factor
        minl = minl * factor
    return out


def validate_frame(i: int, frame: object) -> None:
    if not isinstance(frame, np.ndarray):
        raise FacestreamError(
            f"frame {i}: expected a numpy array (H x W x 3 uint8 RGB), got {type(frame).__name__}"
        )
    if (
        frame.ndim != 3
        or frame.shape[2] != 3
        or frame.dtype != np.uint8
        or frame.shape[0] < 1
        or frame.shape[1] < 1
    ):
        raise FacestreamError(
            f"frame {i}: expected an H x W x 3 uint8 RGB image, got shape {tuple(frame.shape)} dtype {frame.dtype}"
        )


def _rerec(b: torch.Tensor) -> torch.Tensor:
    """Square boxes around their centres (facenet-pytorch's rerec, same float32 operations)."""
    wh = b[:, 2:] - b[:, :2]
    side = wh.amax(1, keepdim=True)
    xy = b[:, :2] + wh * 0.5 - side * 0.5
    return torch.cat([xy, xy + side], 1)


def _bbreg(b: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    """Apply R-Net / O-Net box regression (widths with the +1 convention)."""
    return b + reg * (b[:, 2:] - b[:, :2] + 1).repeat(1, 2)


def _crop_windows(
    boxes: torch.Tensor, frame: torch.Tensor, shapes: list[tuple[int, int]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """facenet-pytorch's `pad`: truncate, clamp to the frame; crop rows [y - 1, ey), cols [x - 1, ex).
    Returns (y0, y1, x0, x1, valid): invalid windows (box entirely outside the frame) are empty."""
    t = boxes.trunc().to(torch.int64)
    hw = torch.as_tensor(shapes, dtype=torch.int64, device=boxes.device)[frame]
    x = t[:, 0].clamp(min=1)
    y = t[:, 1].clamp(min=1)
    ex = torch.minimum(t[:, 2], hw[:, 1])
    ey = torch.minimum(t[:, 3], hw[:, 0])
    valid = (ey > y - 1) & (ex > x - 1)
    return y - 1, ey, x - 1, ex, valid


class MTCNN:
    """MTCNN face detector, batched. `backend` is kept for configuration compatibility: "auto" and
    "torch" both run the nets in torch (faster than ONNX Runtime on CPU: benchmarks/RESULTS.md,
    MTCNN)."""

    def __init__(
        self,
        weights_dir: Path | None = None,
        device: str | None = None,
        min_face_size: int = 20,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
        backend: str = "auto",
    ) -> None:
        if weights_dir is None:
            from stream.home import models_dir

            weights_dir = models_dir() / "mtcnn"
        self.weights_dir = Path(weights_dir)
        missing = [f for f in WEIGHT_FILES if not (self.weights_dir / f).is_file()]
        if missing:
            raise ModelMissingError(
                f"MTCNN weights not found in {self.weights_dir} ({', '.join(missing)} missing): "
                "run `facestream models pull mtcnn`"
            )
        if backend not in BACKENDS:
            raise FacestreamError(f"unknown MTCNN backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if min_face_size < 1 or not 0 < factor < 1 or len(thresholds) != 3:
            raise FacestreamError("MTCNN: min_face_size must be >= 1, factor in (0, 1), and three thresholds")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.min_face_size = int(min_face_size)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = float(factor)
        self.backend = "torch"
        try:
            self.pnet: PNet = load_net("pnet", self.weights_dir / "pnet.pt", self.device)
            self.rnet: RNet = load_net("rnet", self.weights_dir / "rnet.pt", self.device)
            self.onet: ONet = load_net("onet", self.weights_dir / "onet.pt", self.device)
        except Exception as e:  # noqa: BLE001 - a corrupt or foreign file: one clear line
            raise FacestreamError(
                f"MTCNN weights in {self.weights_dir} do not load ({str(e).splitlines()[0]}): "
                "run `facestream models pull mtcnn`"
            ) from e
        cpu = self.device.type == "cpu"
        self._pnet_pixels = PNET_PIXELS_PER_CALL if cpu else 1 << 62
        self._chunk = CPU_CHUNK if cpu else 4096
        self._crops_per_net = 4 if cpu else 1  # crops are cut for this many net chunks at once
        self._buffer: np.ndarray | None = None  # integral images, reused between calls (CPU)
        self._lock = threading.Lock()  # detect() reuses that buffer: one call at a time

    # -- public API ------------------------------------------------------------------------------
    def detect(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        """Faces in each frame (RGB uint8 H x W x 3; sizes may differ): one Detections per frame."""
        frames = list(frames)
        for i, f in enumerate(frames):
            validate_frame(i, f)
        if not frames:
            return []
        with self._lock, torch.inference_mode():
            return self._detect(frames)

    def detect_regions(
        self,
        frames: Sequence[np.ndarray],
        regions: Sequence[Sequence[Box] | None],
        min_faces: Sequence[Sequence[int] | None] | None = None,
        max_faces: Sequence[Sequence[int | None] | None] | None = None,
    ) -> list[Detections]:
        """Faces in each frame, looking only inside its regions (x1, y1, x2, y2 pixel boxes; None: the
        whole frame; empty: nowhere), in frame coordinates. The frame's own pyramid is used, on the
        same grid as the whole frame: P-Net runs on windows of each level that hold every P-Net window
        touching a region, R-Net and O-Net on the frame itself. A face inside a region thus gets the
        candidates, and the box, that the whole frame would give it (crops of their own would resample
        on another grid, at another scale, and box some faces differently). Per region (optional):
        min_faces, the smallest face worth looking for there, and max_faces, the largest (None: any);
        only the pyramid levels for faces in that range run (a region around a face found a frame ago
        needs the levels of that face's size). All windows of all frames go through one cascade."""
        frames = list(frames)
        if len(regions) != len(frames):
            raise FacestreamError(f"detect_regions: {len(regions)} region lists for {len(frames)} frames")
        inputs: list[np.ndarray] = []
        plans: list[list[Window] | None] = []
        owner: list[int] = []
        for i, (frame, where) in enumerate(zip(frames, regions, strict=True)):
            validate_frame(i, frame)
            if where is None:
                windows = None
            else:
                lo = (min_faces[i] if min_faces is not None else None) or [self.min_face_size] * len(where)
                hi = (max_faces[i] if max_faces is not None else None) or [None] * len(where)
                windows = self._windows(frame.shape[0], frame.shape[1], where, lo, hi)
                if not windows:
                    continue
            inputs.append(frame)
            plans.append(windows)
            owner.append(i)
        out = [Detections.empty() for _ in frames]
        if inputs:
            with self._lock, torch.inference_mode():
                for i, d in zip(owner, self._detect(inputs, plans), strict=True):
                    out[i] = d
        return out

    def _windows(
        self, h: int, w: int, where: Sequence[Box], lo: Sequence[int], hi: Sequence[int | None]
    ) -> list[Window]:
        """P-Net output windows (level, row0, row1, col0, col1) that hold every P-Net window (12 x 12,
        stride 2) overlapping a region, at the levels for that region's face sizes; windows of one
        level that overlap become one (each P-Net position is looked at once)."""
        levels = pyramid_scales(h, w, self.min_face_size, self.factor)
        per_level: dict[int, list[Box]] = {}
        for (x1, y1, x2, y2), small, large in zip(where, lo, hi, strict=True):
            x1, y1, x2, y2 = max(0, x1), max(0, y1), min(w, x2), min(h, y2)
            if x2 <= x1 or y2 <= y1:
                continue
            first = self._levels_below(small)
            last = len(levels) - 1 if large is None else min(len(levels) - 1, self._levels_upto(large))
            for k in range(first, last + 1):
                _, oh, ow = levels[k]
                out_h, out_w = PNet.output_size(oh), PNet.output_size(ow)
                if out_h < 1 or out_w < 1:
                    continue
                # level pixel = frame pixel * (oh / h); a P-Net position j covers level pixels [2j, 2j+12)
                sy, sx = oh / h, ow / w
                r0, r1 = max(0, math.floor((y1 * sy - 12) / 2)), min(out_h, math.ceil(y2 * sy / 2) + 1)
                c0, c1 = max(0, math.floor((x1 * sx - 12) / 2)), min(out_w, math.ceil(x2 * sx / 2) + 1)
                if r1 > r0 and c1 > c0:
                    per_level.setdefault(k, []).append((c0, r0, c1, r1))
        return [
            (k, r0, r1, c0, c1) for k, boxes in sorted(per_level.items()) for c0, r0, c1, r1 in merge(boxes)
        ]

    def _levels_below(self, min_face: int) -> int:
        """Pyramid levels that only find faces smaller than min_face (level k finds faces from
        min_face_size / factor**k pixels)."""
        if min_face <= self.min_face_size:
            return 0
        return int(math.log(min_face / self.min_face_size) / math.log(1 / self.factor))

    def _levels_upto(self, max_face: int) -> int:
        """The last pyramid level that finds faces of max_face pixels or smaller (and one more: a
        face is often also a candidate one level coarser)."""
        if max_face <= self.min_face_size:
            return 1
        return int(math.log(max_face / self.min_face_size) / math.log(1 / self.factor)) + 1

    # -- pipeline --------------------------------------------------------------------------------
    def _detect(
        self, frames: list[np.ndarray], windows: list[list[Window] | None] | None = None
    ) -> list[Detections]:
        """windows[i]: None for the whole of frame i, else the P-Net windows to look at (_windows)."""
        plan = windows or [None] * len(frames)
        # Frames sorted by size so that each size's integral tables are one contiguous block (whole
        # frames of one size first: they batch).
        order = sorted(range(len(frames)), key=lambda i: (*frames[i].shape[:2], plan[i] is not None))
        ii, self._buffer = integral_images([frames[i] for i in order], self.device, self._buffer)
        boxes, scores, frame_ids = self._stage1(ii, [plan[i] for i in order])
        boxes, frame_ids = self._stage2(ii, boxes, frame_ids)
        boxes, scores, points, frame_ids = self._stage3(ii, boxes, frame_ids)

        out = [Detections.empty() for _ in frames]
        boxes_np = boxes.cpu().numpy().astype(np.float32)
        scores_np = scores.cpu().numpy().astype(np.float32)
        points_np = points.cpu().numpy().astype(np.float32)
        fid = frame_ids.cpu().numpy()
        for k, orig in enumerate(order):
            sel = np.flatnonzero(fid == k)  # already by descending score (NMS order)
            if sel.size:
                out[orig] = Detections(boxes_np[sel], scores_np[sel], points_np[sel])
        return out

    def _pnet_calls(self, ii: IntegralImages, windows: list[list[Window] | None]) -> Iterator[PNetCall]:
        """(first frame, frame count, level index, (scale, h, w), (row0, row1), (col0, col1) of P-Net
        output) for every P-Net call: small levels batch all same-size whole frames, large ones and
        large windows go in strips."""
        budget = self._pnet_pixels
        k = 0
        while k < len(ii.shapes):
            hw = ii.shapes[k]
            levels = pyramid_scales(*hw, self.min_face_size, self.factor)
            if windows[k] is not None:
                for lvl, r0, r1, c0, c1 in windows[k] or []:
                    scale, oh, ow = levels[lvl]
                    in_w = min(2 * (c1 - c0) + 10, ow)
                    rows = max(4, (budget // in_w - 10) // 2)
                    for r in range(r0, r1, rows):
                        yield k, 1, lvl, (scale, oh, ow), (r, min(r1, r + rows)), (c0, c1)
                k += 1
                continue
            count = 1
            while k + count < len(ii.shapes) and ii.shapes[k + count] == hw and windows[k + count] is None:
                count += 1
            for level, (scale, oh, ow) in enumerate(levels):
                out_h, out_w = PNet.output_size(oh), PNet.output_size(ow)
                per_frame = max(1, budget // (oh * ow))
                if per_frame > 1 or oh * ow <= budget:
                    for f0 in range(k, k + count, per_frame):
                        yield (
                            f0,
                            min(per_frame, k + count - f0),
                            level,
                            (scale, oh, ow),
                            (0, out_h),
                            (0, out_w),
                        )
                    continue
                rows = max(4, (budget // ow - 10) // 2)  # output rows per strip
                for f0 in range(k, k + count):
                    for r0 in range(0, out_h, rows):
                        yield f0, 1, level, (scale, oh, ow), (r0, min(out_h, r0 + rows)), (0, out_w)
            k += count

    def _stage1(
        self, ii: IntegralImages, windows: list[list[Window] | None]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """P-Net over the pyramid of every frame; NMS per frame and level (IoU 0.5), then per frame
        (IoU 0.7); box regression; squaring. Returns boxes (K, 4), scores (K,), frame ids (K,)."""
        dev = self.device
        thr = self.thresholds[0]
        found: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        calls: list[tuple[int, int, int, int, int]] = []  # (positions found, first frame, row0, col0, level)
        scales: dict[int, float] = {}
        for f0, count, lvl, (s, oh, ow), (r0, r1), (c0, c1) in self._pnet_calls(ii, windows):
            in_rows = (2 * r0, min(2 * r1 + 10, oh))  # P-Net: 12-pixel window, stride 2
            in_cols = (2 * c0, min(2 * c1 + 10, ow))
            level_px = area_resize(ii.frames(f0, count), oh, ow, in_rows, in_cols)
            feat = self.pnet.trunk(level_px.permute(0, 3, 1, 2))
            prob = self.pnet.face_prob(feat)
            mask = prob >= thr
            nz = mask.nonzero()
            if nz.shape[0]:
                found.append((nz, prob[mask], feat.permute(0, 2, 3, 1)[mask]))
                calls.append((nz.shape[0], f0, r0, c0, lvl))
                scales[lvl] = s
        if not found:
            z = torch.zeros(0, device=dev)
            return z.view(0, 4), z, torch.zeros(0, dtype=torch.long, device=dev)
        nz, scores, feat = (torch.cat(p) for p in zip(*found, strict=True))
        counts = torch.tensor([c[0] for c in calls], device=dev)
        first, o0, c0s, level = (
            torch.repeat_interleave(torch.tensor(c, device=dev), counts)
            for c in list(zip(*calls, strict=True))[1:]
        )
        frame = nz[:, 0] + first
        # facenet-pytorch's generateBoundingBox (stride 2, 12 x 12 cells), same float32 operations
        scale = torch.tensor([scales.get(i, 1.0) for i in range(max(scales) + 1)], device=dev)[level]
        bb = torch.stack([nz[:, 2] + c0s, nz[:, 1] + o0], 1).to(torch.float32)
        q1 = ((2 * bb + 1) / scale[:, None]).floor()
        q2 = ((2 * bb + 12) / scale[:, None]).floor()
        boxes = torch.cat([q1, q2], 1)
        frame_level = frame * (int(level.max()) + 1) + level
        keep = batched_nms(boxes, scores, frame_level, 0.5, "iou")
        keep = keep[batched_nms(boxes[keep], scores[keep], frame[keep], 0.7, "iou")]
        boxes, scores, frame = boxes[keep], scores[keep], frame[keep]
        reg = self.pnet.regression(feat[keep])
        wh = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
        return _rerec(boxes + reg * wh), scores, frame

    def _run_on_crops(
        self, net: RNet | ONet, ii: IntegralImages, boxes: torch.Tensor, frame: torch.Tensor, size: int
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor] | None]:
        """Crop every box (facenet-pytorch's `pad` conventions), area-resize to size x size, run
        `net` in chunks. Returns (boxes, frame ids, net outputs) for the boxes with a non-empty crop."""
        y0, y1, x0, x1, valid = _crop_windows(boxes, frame, ii.shapes)
        if not bool(valid.all()):
            boxes, frame, y0, y1, x0, x1 = (
                boxes[valid],
                frame[valid],
                y0[valid],
                y1[valid],
                x0[valid],
                x1[valid],
            )
        outs: list[tuple[torch.Tensor, ...]] = []
        crop_chunk = self._chunk * self._crops_per_net
        for i in range(0, boxes.shape[0], crop_chunk):
            s = slice(i, i + crop_chunk)
            crops = crop_resize(ii, frame[s], y0[s], y1[s], x0[s], x1[s], size).permute(0, 3, 1, 2)
            outs += [net(c) for c in torch.split(crops, self._chunk)]
        if not outs:
            return boxes, frame, None
        return boxes, frame, [torch.cat(o) for o in zip(*outs, strict=True)]

    def _stage2(
        self, ii: IntegralImages, boxes: torch.Tensor, frame: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """R-Net on 24 x 24 crops; threshold; NMS per frame (IoU 0.7); regression; squaring."""
        boxes, frame, out = self._run_on_crops(self.rnet, ii, boxes, frame, 24)
        if out is None:
            return boxes, frame
        reg, prob = out
        ok = prob > self.thresholds[1]
        boxes, prob, reg, frame = boxes[ok], prob[ok], reg[ok], frame[ok]
        keep = batched_nms(boxes, prob, frame, 0.7, "iou")
        return _rerec(_bbreg(boxes[keep], reg[keep])), frame[keep]

    def _stage3(
        self, ii: IntegralImages, boxes: torch.Tensor, frame: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """O-Net on 48 x 48 crops; threshold; landmarks; regression; NMS per frame ("min", 0.7)."""
        dev = self.device
        boxes, frame, out = self._run_on_crops(self.onet, ii, boxes, frame, 48)
        if out is None:
            return (
                torch.zeros(0, 4, device=dev),
                torch.zeros(0, device=dev),
                torch.zeros(0, 5, 2, device=dev),
                torch.zeros(0, dtype=torch.long, device=dev),
            )
        reg, pts, prob = out
        ok = prob > self.thresholds[2]
        boxes, prob, reg, pts, frame = boxes[ok], prob[ok], reg[ok], pts[ok], frame[ok]
        w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        px = w * pts[:, :5] + boxes[:, 0:1] - 1
        py = h * pts[:, 5:] + boxes[:, 1:2] - 1
        points = torch.stack([px, py], 2)
        boxes = _bbreg(boxes, reg)
        keep = batched_nms(boxes, prob, frame, 0.7, "min", ties="last")
        return boxes[keep], prob[keep], points[keep], frame[keep]
