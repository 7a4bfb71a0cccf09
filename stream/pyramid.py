"""Area resampling from integral images: MTCNN's image pyramid and its candidate crops.

facenet-pytorch resizes with `F.interpolate(mode="area")`, i.e. adaptive average pooling: output
pixel i along an axis of n_in -> n_out averages input pixels [floor(i * n_in / n_out),
ceil((i + 1) * n_in / n_out)). With an integral image (summed-area table) every such bin sum is
four lookups, so
- a whole pyramid level is two gathers (rows, then columns), for all frames of a batch at once;
- all R-Net / O-Net candidate crops (crop box, then area-resize to 24 x 24 or 48 x 48) are one
  gather over every candidate of every frame (frames may differ in size: their integral images
  share one flat buffer).
Sums of uint8 pixels are exact integers and the mean is taken as torch does (sum / kh / kw in
float32), so the resampled pixels equal facenet-pytorch's bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch


def bin_edges(n_in: torch.Tensor | int, n_out: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Start (inclusive) and end (exclusive) input index of each of the n_out adaptive-pooling
    bins. n_in may be a tensor of K lengths: the result is then K x n_out."""
    i = torch.arange(n_out, device=device)
    if isinstance(n_in, torch.Tensor):
        n_in = n_in[:, None]
    return torch.div(i * n_in, n_out, rounding_mode="floor"), torch.div(
        (i + 1) * n_in + n_out - 1, n_out, rounding_mode="floor"
    )


@dataclass
class IntegralImages:
    """Integral images of a list of RGB frames, flattened into one (sum of (H+1)(W+1)) x 3 buffer.
    Entry [y, x] of a frame's table is the sum of pixels [0, y) x [0, x)."""

    flat: torch.Tensor  # (P, 3) int32 (or int64 / float64 when a frame is too large for int32)
    base: torch.Tensor  # (F,) offset of each frame's table in `flat`
    stride: torch.Tensor  # (F,) W + 1 of each frame
    shapes: list[tuple[int, int]]  # (H, W) of each frame

    def frames(self, first: int, count: int) -> torch.Tensor:
        """The tables of frames first .. first+count-1, which must share one size: (count, H+1, W+1, 3)."""
        h, w = self.shapes[first]
        start = int(self.base[first])
        return self.flat[start : start + count * (h + 1) * (w + 1)].view(count, h + 1, w + 1, 3)


def integral_images(frames: Sequence[np.ndarray], device: torch.device) -> IntegralImages:
    shapes = [(int(f.shape[0]), int(f.shape[1])) for f in frames]
    sizes = [(h + 1) * (w + 1) for h, w in shapes]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    # int32 holds any bin sum while H * W * 255 < 2**31 (about 8.4 megapixels); beyond, 64-bit.
    wide = max(h * w for h, w in shapes) * 255 >= 2**31
    if device.type == "cpu":
        dtype, depth = (np.float64, cv2.CV_64F) if wide else (np.int32, cv2.CV_32S)
        flat = np.empty((int(offsets[-1]), 3), dtype)
        for f, (h, w), off in zip(frames, shapes, offsets[:-1], strict=False):
            view = flat[off : off + (h + 1) * (w + 1)].reshape(h + 1, w + 1, 3)
            view[...] = cv2.integral(np.ascontiguousarray(f), sdepth=depth)
        flat_t = torch.from_numpy(flat)
    else:
        dtype = torch.int64 if wide else torch.int32
        parts = []
        for f in frames:
            t = torch.from_numpy(np.ascontiguousarray(f)).to(device, non_blocking=True).to(dtype)
            t = torch.nn.functional.pad(t.cumsum(0).cumsum(1), (0, 0, 1, 0, 1, 0))
            parts.append(t.reshape(-1, 3))
        flat_t = torch.cat(parts)
    return IntegralImages(
        flat=flat_t,
        base=torch.as_tensor(offsets[:-1], device=device),
        stride=torch.as_tensor([w + 1 for _, w in shapes], device=device),
        shapes=shapes,
    )


def _mean(sums: torch.Tensor, kh: torch.Tensor, kw: torch.Tensor) -> torch.Tensor:
    # As torch's adaptive_avg_pool2d: float32 sum, divided by the bin height, then by the width.
    return sums.to(torch.float32).div_(kh.to(torch.float32)).div_(kw.to(torch.float32))


def normalize_(x: torch.Tensor) -> torch.Tensor:
    """MTCNN's input scaling, in place, in facenet-pytorch's order of operations."""
    return x.sub_(127.5).mul_(0.0078125)


def area_resize(tables: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """Whole frames (N, H+1, W+1, 3 integral tables) -> (N, out_h, out_w, 3) float32 area means,
    the same values as F.interpolate(frames, (out_h, out_w), mode="area")."""
    n, h1, w1, _ = tables.shape
    dev = tables.device
    r0, r1 = bin_edges(h1 - 1, out_h, dev)
    c0, c1 = bin_edges(w1 - 1, out_w, dev)
    rows = tables.index_select(1, r1) - tables.index_select(1, r0)  # (N, out_h, W+1, 3)
    rows = rows.view(n * out_h, w1, 3)
    sums = (rows.index_select(1, c1) - rows.index_select(1, c0)).view(n, out_h, out_w, 3)
    return _mean(sums, (r1 - r0)[None, :, None, None], (c1 - c0)[None, None, :, None])


def crop_resize(
    ii: IntegralImages,
    frame: torch.Tensor,
    y0: torch.Tensor,
    y1: torch.Tensor,
    x0: torch.Tensor,
    x1: torch.Tensor,
    size: int,
) -> torch.Tensor:
    """K crops, rows [y0, y1) x columns [x0, x1) of frame `frame[k]` (all int64 tensors, non-empty
    and inside the frame), each area-resized to size x size: (K, size, size, 3) float32. Equal to
    F.interpolate(img[:, :, y0:y1, x0:x1], (size, size), mode="area") per crop."""
    dev = ii.flat.device
    rs, re = bin_edges(y1 - y0, size, dev)  # (K, size), relative to y0
    cs, ce = bin_edges(x1 - x0, size, dev)
    base = ii.base[frame][:, None, None]
    stride = ii.stride[frame][:, None, None]
    top = (y0[:, None] + rs)[:, :, None] * stride + base  # (K, size, 1)
    bottom = (y0[:, None] + re)[:, :, None] * stride + base
    left = (x0[:, None] + cs)[:, None, :]  # (K, 1, size)
    right = (x0[:, None] + ce)[:, None, :]
    flat = ii.flat

    def at(r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return flat.index_select(0, (r + c).reshape(-1))

    sums = at(bottom, right) - at(top, right) - at(bottom, left) + at(top, left)
    k = y0.shape[0]
    sums = sums.view(k, size, size, 3)
    return _mean(sums, (re - rs)[:, :, None, None], (ce - cs)[:, None, :, None])
