"""Batched MTCNN face detector: the same detections as facenet-pytorch 2.5.3's MTCNN (same pyramid,
thresholds, box regression, squaring, padding, NMS conventions and landmarks), computed in batches.

One `detect` call on F frames (sizes may differ):
1. integral images of all frames (one flat buffer);
2. P-Net, per pyramid scale, on all same-size frames at once; the pyramid levels come from the
   integral images (stream.pyramid), bit-identical to facenet-pytorch's area interpolation;
3. NMS per frame and scale, then per frame, all frames together (stream.nms);
4. R-Net, then O-Net, on the candidate crops of every frame, resampled in one gather each.
The networks run in torch (CPU or CUDA) or, on CPU, through ONNX Runtime (faster there: see
`backend`). Post-processing stays in torch on the chosen device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stream.errors import FacestreamError, ModelMissingError
from stream.nms import batched_nms
from stream.pyramid import area_resize, crop_resize, integral_images, normalize_

WEIGHT_FILES = ("pnet.pt", "rnet.pt", "onet.pt")
ONNX_FILES = ("pnet.onnx", "rnet.onnx", "onet.onnx")
BACKENDS = ("auto", "torch", "onnx")


@dataclass
class Detections:
    """One frame's faces, by descending score."""

    boxes: np.ndarray  # (N, 4) float32 x1, y1, x2, y2 in frame pixels
    scores: np.ndarray  # (N,) float32 face probability
    landmarks: np.ndarray  # (N, 5, 2) float32 (x, y): left eye, right eye, nose, mouth left, mouth right

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @staticmethod
    def empty() -> Detections:
        return Detections(
            np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32)
        )


def pyramid_scales(h: int, w: int, min_face_size: int, factor: float) -> list[tuple[float, int, int]]:
    """(scale, height, width) of each pyramid level, computed exactly as facenet-pytorch does."""
    m = 12.0 / min_face_size
    minl = min(h, w) * m
    scale = m
    out = []
    while minl >= 12:
        out.append((scale, int(h * scale + 1), int(w * scale + 1)))
        scale = scale * factor
        minl = minl * factor
    return out


def validate_frame(i: int, frame) -> None:
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


class _TorchNets:
    """The three nets in torch. Inputs are N x H x W x 3 float32 (NHWC; run as channels-last)."""

    def __init__(self, weights_dir: Path, device: torch.device) -> None:
        from facestream_models.mtcnn_nets import load_net

        self.pnet = load_net("pnet", weights_dir / "pnet.pt", device)
        self.rnet = load_net("rnet", weights_dir / "rnet.pt", device)
        self.onet = load_net("onet", weights_dir / "onet.pt", device)
        for net in (self.pnet, self.rnet, self.onet):
            net.to(memory_format=torch.channels_last)

    def run_pnet(self, x: torch.Tensor):
        return self.pnet(x.permute(0, 3, 1, 2))

    def run_rnet(self, x: torch.Tensor):
        return self.rnet(x.permute(0, 3, 1, 2))

    def run_onet(self, x: torch.Tensor):
        return self.onet(x.permute(0, 3, 1, 2))


class _OnnxNets:
    """The three nets through ONNX Runtime on CPU (same interface as _TorchNets)."""

    def __init__(self, weights_dir: Path) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        # Share the cores as torch is told to (other stages run beside us); no busy-waiting threads.
        opts.intra_op_num_threads = max(1, torch.get_num_threads())
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sessions = {
            name: ort.InferenceSession(
                str(weights_dir / f"{name}.onnx"), opts, providers=["CPUExecutionProvider"]
            )
            for name in ("pnet", "rnet", "onet")
        }

    def _run(self, name: str, x: torch.Tensor):
        inp = np.ascontiguousarray(x.permute(0, 3, 1, 2).numpy())
        return tuple(torch.from_numpy(o) for o in self.sessions[name].run(None, {"input": inp}))

    def run_pnet(self, x):
        return self._run("pnet", x)

    def run_rnet(self, x):
        return self._run("rnet", x)

    def run_onet(self, x):
        return self._run("onet", x)


def _rerec(b: torch.Tensor) -> torch.Tensor:
    """Square boxes around their centres (facenet-pytorch's rerec, same float32 operations)."""
    h = b[:, 3] - b[:, 1]
    w = b[:, 2] - b[:, 0]
    side = torch.maximum(w, h)
    x1 = b[:, 0] + w * 0.5 - side * 0.5
    y1 = b[:, 1] + h * 0.5 - side * 0.5
    return torch.stack([x1, y1, x1 + side, y1 + side], 1)


def _bbreg(b: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    """Apply R-Net / O-Net box regression (widths with the +1 convention)."""
    w = b[:, 2] - b[:, 0] + 1
    h = b[:, 3] - b[:, 1] + 1
    return torch.stack(
        [b[:, 0] + reg[:, 0] * w, b[:, 1] + reg[:, 1] * h, b[:, 2] + reg[:, 2] * w, b[:, 3] + reg[:, 3] * h],
        1,
    )


def _crop_windows(boxes: torch.Tensor, frame: torch.Tensor, shapes: list[tuple[int, int]]):
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
    """MTCNN face detector, batched. `backend`: "torch", "onnx" (ONNX Runtime, CPU only) or "auto"
    (ONNX Runtime on CPU when the ONNX files are present, torch otherwise)."""

    def __init__(
        self,
        weights_dir: Path | None = None,
        device: str | None = None,
        min_face_size: int = 20,
        thresholds=(0.6, 0.7, 0.7),
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
        have_onnx = all((self.weights_dir / f).is_file() for f in ONNX_FILES)
        if backend == "auto":
            backend = "onnx" if self.device.type == "cpu" and have_onnx else "torch"
        if backend == "onnx":
            if self.device.type != "cpu":
                raise FacestreamError("MTCNN: the onnx backend runs on CPU only; use backend='torch' on GPU")
            if not have_onnx:
                raise ModelMissingError(
                    f"MTCNN ONNX files not found in {self.weights_dir}: run `facestream models pull mtcnn`"
                )
            self.nets = _OnnxNets(self.weights_dir)
        else:
            self.nets = _TorchNets(self.weights_dir, self.device)
        self.backend = backend

    # -- public API ------------------------------------------------------------------------------
    def detect(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        """Faces in each frame (RGB uint8 H x W x 3; sizes may differ): one Detections per frame."""
        frames = list(frames)
        for i, f in enumerate(frames):
            validate_frame(i, f)
        if not frames:
            return []
        with torch.inference_mode():
            return self._detect(frames)

    # -- pipeline --------------------------------------------------------------------------------
    def _detect(self, frames: list[np.ndarray]) -> list[Detections]:
        dev = self.device
        # Frames sorted by size so that each size's integral tables are one contiguous block.
        order = sorted(range(len(frames)), key=lambda i: (frames[i].shape[0], frames[i].shape[1]))
        ii = integral_images([frames[i] for i in order], dev)
        shapes = ii.shapes
        boxes, scores, frame_ids = self._stage1(ii)
        boxes, frame_ids = self._stage2(ii, boxes, scores, frame_ids)
        boxes, scores, points, frame_ids = self._stage3(ii, boxes, frame_ids, shapes)

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

    def _stage1(self, ii):
        """P-Net over the pyramid of every frame; NMS per frame and scale (IoU 0.5), then per frame
        (IoU 0.7); box regression; squaring. Returns boxes (K, 4), scores (K,), frame ids (K,)."""
        dev = self.device
        thr = self.thresholds[0]
        # runs of same-size frames
        groups: list[tuple[int, int]] = []
        for k, hw in enumerate(ii.shapes):
            if groups and ii.shapes[groups[-1][0]] == hw:
                groups[-1] = (groups[-1][0], groups[-1][1] + 1)
            else:
                groups.append((k, 1))
        pyramids = {hw: pyramid_scales(*hw, self.min_face_size, self.factor) for hw in set(ii.shapes)}
        n_levels = max(len(p) for p in pyramids.values()) or 1
        parts = []
        for first, count in groups:
            tables = ii.frames(first, count)
            for level, (scale, oh, ow) in enumerate(pyramids[ii.shapes[first]]):
                x = normalize_(area_resize(tables, oh, ow))
                reg, prob = self.nets.run_pnet(x)
                reg, prob = reg.to(dev), prob.to(dev)
                mask = prob >= thr
                nz = mask.nonzero()
                if nz.shape[0] == 0:
                    continue
                # facenet-pytorch's generateBoundingBox (stride 2, 12 x 12 cells), same float32 ops
                bb = nz[:, 1:].to(torch.float32).flip(1)
                q1 = ((2 * bb + 1) / scale).floor()
                q2 = ((2 * bb + 12) / scale).floor()
                frame = nz[:, 0] + first
                parts.append(
                    (
                        torch.cat([q1, q2], 1),
                        prob[mask],
                        reg.permute(0, 2, 3, 1)[mask],
                        frame,
                        frame * n_levels + level,
                    )
                )
        if not parts:
            z = torch.zeros(0, device=dev)
            return z.view(0, 4), z, torch.zeros(0, dtype=torch.long, device=dev)
        boxes, scores, reg, frame, group = (torch.cat(p) for p in zip(*parts, strict=True))
        keep = batched_nms(boxes, scores, group, 0.5, "iou")
        boxes, scores, reg, frame = boxes[keep], scores[keep], reg[keep], frame[keep]
        keep = batched_nms(boxes, scores, frame, 0.7, "iou")
        boxes, scores, reg, frame = boxes[keep], scores[keep], reg[keep], frame[keep]
        w = boxes[:, 2] - boxes[:, 0]
        h = boxes[:, 3] - boxes[:, 1]
        boxes = torch.stack(
            [
                boxes[:, 0] + reg[:, 0] * w,
                boxes[:, 1] + reg[:, 1] * h,
                boxes[:, 2] + reg[:, 2] * w,
                boxes[:, 3] + reg[:, 3] * h,
            ],
            1,
        )
        return _rerec(boxes), scores, frame

    def _crops(self, ii, boxes, frame, size):
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
        return boxes, frame, normalize_(crop_resize(ii, frame, y0, y1, x0, x1, size))

    def _stage2(self, ii, boxes, scores, frame):
        """R-Net on 24 x 24 crops; threshold; NMS per frame (IoU 0.7); regression; squaring."""
        if boxes.shape[0] == 0:
            return boxes, frame
        boxes, frame, crops = self._crops(ii, boxes, frame, 24)
        if boxes.shape[0] == 0:
            return boxes, frame
        reg, prob = (t.to(self.device) for t in self.nets.run_rnet(crops))
        ok = prob > self.thresholds[1]
        boxes, prob, reg, frame = boxes[ok], prob[ok], reg[ok], frame[ok]
        keep = batched_nms(boxes, prob, frame, 0.7, "iou")
        return _rerec(_bbreg(boxes[keep], reg[keep])), frame[keep]

    def _stage3(self, ii, boxes, frame, shapes):
        """O-Net on 48 x 48 crops; threshold; landmarks; regression; NMS per frame ("min", 0.7)."""
        dev = self.device
        empty = (
            torch.zeros(0, 4, device=dev),
            torch.zeros(0, device=dev),
            torch.zeros(0, 5, 2, device=dev),
            torch.zeros(0, dtype=torch.long, device=dev),
        )
        if boxes.shape[0] == 0:
            return empty
        boxes, frame, crops = self._crops(ii, boxes, frame, 48)
        if boxes.shape[0] == 0:
            return empty
        reg, pts, prob = (t.to(dev) for t in self.nets.run_onet(crops))
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
