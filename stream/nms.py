"""Greedy non-maximum suppression, vectorised, for many independent groups at once (one group per
image, or per image and pyramid scale), on any torch device; no torchvision.

Greedy NMS keeps the best-scoring box, drops every box that overlaps it by more than the threshold,
and repeats. Here that is computed without a loop over boxes:
1. sort by (group, score descending); enumerate the pairs within a group whose x-ranges intersect
   (sorted by x, one searchsorted; chunked, so memory stays bounded) and keep those that overlap
   by more than the threshold: the directed "better suppresses worse if kept" graph, usually a
   few edges per box;
2. solve keep[j] = not any(keep[i] for edges i -> j) by fixed-point iteration from "all kept".
   keep[j] only depends on boxes before j, so the fixed point is unique and is exactly the greedy
   answer; the iteration count is the longest suppression chain (a handful in practice).

Two overlap conventions, matching the two that facenet-pytorch's MTCNN uses:
- "iou" (torchvision.ops.nms): areas (x2 - x1) * (y2 - y1), suppress when IoU > threshold;
- "min" (MTCNN's own numpy NMS): areas (x2 - x1 + 1) * (y2 - y1 + 1), intersection widths + 1,
  overlap = intersection / min(area_i, area_j), suppress when > threshold.
"""

from __future__ import annotations

import torch

_PAIR_CHUNK = 1 << 22  # pairs evaluated at a time


def _overlap(bi: torch.Tensor, bj: torch.Tensor, mode: str) -> torch.Tensor:
    """Overlap of box pairs (P, 4) x (P, 4), float32 operations as torchvision / MTCNN order them."""
    one = 1.0 if mode == "min" else 0.0
    wh = (torch.minimum(bi[:, 2:], bj[:, 2:]) - torch.maximum(bi[:, :2], bj[:, :2]) + one).clamp_(min=0)
    inter = wh[:, 0] * wh[:, 1]
    area_i = (bi[:, 2:] - bi[:, :2] + one).prod(1)
    area_j = (bj[:, 2:] - bj[:, :2] + one).prod(1)
    if mode == "iou":
        return inter / (area_i + area_j - inter)
    if mode == "min":
        return inter / torch.minimum(area_i, area_j)
    raise ValueError(f"unknown NMS mode {mode!r}")


def _suppression_edges(
    boxes: torch.Tensor, groups: torch.Tensor, threshold: float, mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs (i, j), i < j (rank order), in the same group, overlapping by more than threshold.

    Only pairs whose x-ranges intersect can overlap: sort by (group, x1); box a's partners are the
    boxes after it in that order whose x1 lies before a's x2 (one searchsorted). That is a few
    dozen partners per box instead of every box of its group."""
    k = boxes.shape[0]
    dev = boxes.device
    x1 = boxes[:, 0].double()
    x2 = torch.maximum(boxes[:, 2].double(), x1) + (1.0 if mode == "min" else 0.0)
    lo = float(x1.min())
    span = float(x2.max()) - lo + 2.0
    g = groups.double() * span
    key = g + (x1 - lo)
    by_x = torch.argsort(key)
    sorted_key = key[by_x]
    end = torch.searchsorted(sorted_key, (g + (x2 - lo))[by_x], side="left")
    idx = torch.arange(k, device=dev)
    n_after = (end - idx - 1).clamp_(min=0)  # partners of the box at each x-sorted position
    cum = torch.cumsum(n_after, 0)
    total = int(cum[-1]) if k else 0
    src, dst = [], []
    start_box = 0
    while start_box < k and total > 0:
        done = int(cum[start_box - 1]) if start_box else 0
        # the boxes whose pairs fit in this chunk (at least one box)
        stop_box = int(torch.searchsorted(cum, done + _PAIR_CHUNK, right=True))
        stop_box = min(max(stop_box, start_box + 1), k)
        counts_c = n_after[start_box:stop_box]
        n_pairs = int(counts_c.sum())
        if n_pairs:
            a = torch.repeat_interleave(idx[start_box:stop_box], counts_c)
            first = torch.cumsum(counts_c, 0) - counts_c  # pair index where each box's run starts
            b = a + 1 + torch.arange(n_pairs, device=dev) - torch.repeat_interleave(first, counts_c)
            a, b = by_x[a], by_x[b]
            hit = _overlap(boxes[a], boxes[b], mode) > threshold
            a, b = a[hit], b[hit]
            src.append(torch.minimum(a, b))
            dst.append(torch.maximum(a, b))
        start_box = stop_box
    if not src:
        empty = torch.empty(0, dtype=torch.long, device=dev)
        return empty, empty
    return torch.cat(src), torch.cat(dst)


def batched_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    groups: torch.Tensor,
    threshold: float,
    mode: str = "iou",
    ties: str = "first",
) -> torch.Tensor:
    """Indices of the boxes greedy NMS keeps, independently within each group; ordered by group,
    then by descending score. boxes (K, 4) x1 y1 x2 y2, scores (K,), groups (K,) integers.

    Equal scores (common for boxes whose crops, clamped to the frame, are identical) are visited
    lower index first with ties="first" (torchvision's stable sort) or higher index first with
    ties="last" (MTCNN's numpy NMS: ascending argsort, best taken from the end)."""
    k = boxes.shape[0]
    if k == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    if ties == "first":
        order = torch.argsort(scores, descending=True, stable=True)
    elif ties == "last":
        rev = torch.arange(k - 1, -1, -1, device=boxes.device)
        order = rev[torch.argsort(scores[rev], descending=True, stable=True)]
    else:
        raise ValueError(f"unknown ties rule {ties!r}")
    order = order[torch.argsort(groups[order], stable=True)]
    src, dst = _suppression_edges(boxes[order], groups[order], threshold, mode)
    keep = torch.ones(k, dtype=torch.bool, device=boxes.device)
    if src.numel():
        for _ in range(k):
            suppressed = torch.zeros_like(keep)
            suppressed[dst[keep[src]]] = True
            new_keep = ~suppressed
            if torch.equal(new_keep, keep):
                break
            keep = new_keep
    return order[keep]
