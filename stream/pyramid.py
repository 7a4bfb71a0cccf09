"""Area resampling from integral images: MTCNN's image pyramid and its candidate crops.

facenet-pytorch resizes with `F.interpolate(mode="area")`, i.e. adaptive average pooling: output
pixel i along an axis of n_in -> n_out averages input pixels [floor(i * n_in / n_out),
ceil((i + 1) * n_in / n_out)). With an integral image (summed-area table) every such bin sum is
four lookups, so
- a pyramid level (or a horizontal strip of one) is four row gathers from the flat table, one per
  bin corner, for all frames of a batch at once;
- all R-Net / O-Net candidate crops (crop box, then area-resize to 24 x 24 or 48 x 48) are one
  gather over every candidate of every frame (frames may differ in size: their integral images
  share one flat buffer).
Bin sums of uint8 pixels are exact integers and the mean is taken as torch does (sum / kh / kw in
float32; MTCNN's input scaling (x - 127.5) / 128 is folded in exactly), so the resampled pixels
equal facenet-pytorch's bit for bit.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

SCALE = 0.0078125  # MTCNN input scaling: (pixel - 127.5) * SCALE


def bin_edges(
    n_in: torch.Tensor | int, n_out: int, device: torch.device | str | None
) -> tuple[torch.Tensor, torch.Tensor]:
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
    """Integral images of a list of RGB frames in one flat buffer: entry [y, x] of a frame's table
    is the sum of pixels [0, y) x [0, x)."""

    flat: torch.Tensor  # (P, 3) int32 (int64 for frames over about 8.4 megapixels)
    base: torch.Tensor  # (F,) offset of each frame's table in `flat`
    stride: torch.Tensor  # (F,) W + 1 of each frame
    shapes: list[tuple[int, int]]  # (H, W) of each frame

    def frames(self, first: int, count: int) -> torch.Tensor:
        """The tables of frames first .. first+count-1, which must share one size: (count, H+1, W+1, 3)."""
        h, w = self.shapes[first]
        start = int(self.base[first])
        return self.flat[start : start + count * (h + 1) * (w + 1)].view(count, h + 1, w + 1, 3)


def integral_images(
    frames: Sequence[np.ndarray], device: torch.device, buffer: np.ndarray | None = None
) -> tuple[IntegralImages, np.ndarray | None]:
    """Integral images of `frames` (RGB uint8). On CPU `buffer` (the flat array of a previous call)
    is reused when large enough: no fresh 25 MB allocation, and no page faults, per 1080p frame.
    Returns (IntegralImages, buffer)."""
    shapes = [(int(f.shape[0]), int(f.shape[1])) for f in frames]
    sizes = [(h + 1) * (w + 1) for h, w in shapes]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    total = int(offsets[-1])
    # int32 holds any sum while H * W * 255 < 2**31
    wide = max(h * w for h, w in shapes) * 255 >= 2**31
    if device.type == "cpu":
        dtype, depth = (np.float64, cv2.CV_64F) if wide else (np.int32, cv2.CV_32S)
        if buffer is None or buffer.dtype != dtype or buffer.shape[0] < total:
            buffer = np.empty((total, 3), dtype)
        for f, (h, w), off in zip(frames, shapes, offsets[:-1], strict=False):
            table = buffer[off : off + (h + 1) * (w + 1)].reshape(h + 1, w + 1, 3)
            cv2.integral(np.ascontiguousarray(f), sum=table, sdepth=depth)
        flat = torch.from_numpy(buffer[:total])
        flat = flat.to(torch.int64) if wide else flat
    else:
        parts = []
        for f in frames:
            t = torch.from_numpy(np.ascontiguousarray(f)).to(device, non_blocking=True)
            t = t.to(torch.int64 if wide else torch.int32).cumsum(0).cumsum(1)
            parts.append(torch.nn.functional.pad(t, (0, 0, 1, 0, 1, 0)).reshape(-1, 3))
        flat = torch.cat(parts)
    ii = IntegralImages(
        flat=flat,
        base=torch.as_tensor(offsets[:-1], device=device),
        stride=torch.as_tensor([w + 1 for _, w in shapes], device=device),
        shapes=shapes,
    )
    return ii, buffer


@functools.lru_cache(maxsize=48)  # about three frame sizes
def _resize_plan(
    h: int, w: int, out_h: int, out_w: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Table offsets of the four corners of every output pixel's bin (rows x columns), and the
    divisors, of one pyramid level; cached: video frames keep their size, so a stream of frames
    reuses the same dozen plans (about 12 bytes of index per output pixel)."""
    r0, r1 = bin_edges(h, out_h, device)
    c0, c1 = bin_edges(w, out_w, device)
    # int32 offsets (half the memory) are enough below 2**31 table entries
    dtype = torch.int32 if (h + 1) * (w + 1) < 2**31 else torch.int64
    rows = torch.stack([r1, r0]) * (w + 1)
    corners = (rows[:, None, :, None] + torch.stack([c1, c0])[None, :, None, :]).to(dtype)
    kh = (r1 - r0).to(torch.float32)[None, :, None, None]
    kw = ((c1 - c0).to(torch.float32) / SCALE)[None, None, :, None]
    return corners, kh, kw  # corners: (2 (bottom, top), 2 (right, left), out_h, out_w)


def area_resize(
    tables: torch.Tensor,
    out_h: int,
    out_w: int,
    rows: tuple[int, int] | None = None,
    cols: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Whole frames (N, H+1, W+1, 3 integral tables) -> (N, out_h, out_w, 3) float32, the values of
    (F.interpolate(frames, (out_h, out_w), mode="area") - 127.5) * SCALE. `rows` = (r0, r1): only
    output rows r0 .. r1-1 (a horizontal strip); `cols` = (c0, c1): only those output columns (a
    window of the resized frame, on the same grid as the whole of it).

    Each bin sum is four table lookups, one flat row gather per corner over just the output
    pixels (gathering whole table rows first, then columns, reads the full frame width at every
    level: twice the time)."""
    n, h1, w1, _ = tables.shape
    corners, kh, kw = _resize_plan(h1 - 1, w1 - 1, out_h, out_w, tables.device)
    r0, r1 = rows or (0, out_h)
    c0, c1 = cols or (0, out_w)
    idx = corners[:, :, r0:r1, c0:c1].reshape(2, 2, -1)
    if n > 1:  # the frames' tables follow one another in `flat`
        step = torch.arange(n, dtype=idx.dtype, device=idx.device) * (h1 * w1)
        idx = (idx[:, :, None, :] + step[:, None]).view(2, 2, -1)
    flat = tables.reshape(-1, 3)  # a view: the tables are one contiguous block
    sums = flat.index_select(0, idx[0, 0]).sub_(flat.index_select(0, idx[0, 1]))
    sums.sub_(flat.index_select(0, idx[1, 0])).add_(flat.index_select(0, idx[1, 1]))
    sums = sums.view(n, r1 - r0, c1 - c0, 3)
    # ((sum / kh) / kw - 127.5) * SCALE, as torch's adaptive_avg_pool2d and MTCNN's scaling round it
    return torch.div(sums, kh[:, r0:r1]).div_(kw[:, :, c0:c1]).sub_(127.5 * SCALE)


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
    and inside the frame), each area-resized to size x size and scaled: (K, size, size, 3) float32,
    the values of (F.interpolate(img[:, :, y0:y1, x0:x1], (size, size), mode="area") - 127.5) * SCALE."""
    k = y0.shape[0]
    start = torch.stack([y0, x0], 1)
    lo, hi = bin_edges((torch.stack([y1, x1], 1) - start).view(-1), size, ii.flat.device)
    lo = lo.view(k, 2, size) + start[:, :, None]  # bin starts: rows, columns (absolute)
    hi = hi.view(k, 2, size) + start[:, :, None]  # bin ends
    count = (hi - lo).to(torch.float32)
    # table offsets of the bins' corners: rows (bottom, top) x columns (right, left)
    rows = (
        torch.stack([hi[:, 0], lo[:, 0]], 1) * ii.stride[frame][:, None, None] + ii.base[frame][:, None, None]
    )
    cols = torch.stack([hi[:, 1], lo[:, 1]], 1)
    idx = rows[:, :, None, :, None] + cols[:, None, :, None, :]  # (K, 2, 2, size, size)
    v = ii.flat.index_select(0, idx.view(-1)).view(k, 2, 2, size, size, 3)
    sums = v[:, 0, 0] - v[:, 1, 0] - v[:, 0, 1] + v[:, 1, 1]
    # ((sum / kh) / kw - 127.5) * SCALE, rounded as torch's adaptive_avg_pool2d and MTCNN's scaling
    kh = count[:, 0, :, None, None]
    kw = count[:, 1, None, :, None] / SCALE
    return torch.div(sums, kh).div_(kw).sub_(127.5 * SCALE)
