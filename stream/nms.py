"""Greedy non-maximum suppression, vectorised, for many independent groups at once (one group per
image, or per image and pyramid scale), on any torch device; no torchvision.

Greedy NMS keeps the best-scoring box, drops every box that overlaps it by more than the threshold,
and repeats. Here that is computed without a loop over boxes:
1. sort by (group, score descending); enumerate every ordered pair (i, j), i before j, within a
   group (chunked, so memory stays bounded) and keep the pairs that overlap by more than the
   threshold: the directed "i suppresses j if i is kept" graph, usually a few edges per box;
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
    if mode == "iou":
        area_i = (bi[:, 2] - bi[:, 0]) * (bi[:, 3] - bi[:, 1])
        area_j = (bj[:, 2] - bj[:, 0]) * (bj[:, 3] - bj[:, 1])
        w = (torch.minimum(bi[:, 2], bj[:, 2]) - torch.maximum(bi[:, 0], bj[:, 0])).clamp_(min=0)
        h = (torch.minimum(bi[:, 3], bj[:, 3]) - torch.maximum(bi[:, 1], bj[:, 1])).clamp_(min=0)
        inter = w * h
        return inter / (area_i + area_j - inter)
    if mode == "min":
        area_i = (bi[:, 2] - bi[:, 0] + 1) * (bi[:, 3] - bi[:, 1] + 1)
        area_j = (bj[:, 2] - bj[:, 0] + 1) * (bj[:, 3] - bj[:, 1] + 1)
        w = (torch.minimum(bi[:, 2], bj[:, 2]) - torch.maximum(bi[:, 0], bj[:, 0]) + 1).clamp_(min=0)
        h = (torch.minimum(bi[:, 3], bj[:, 3]) - torch.maximum(bi[:, 1], bj[:, 1]) + 1).clamp_(min=0)
        return (w * h) / torch.minimum(area_i, area_j)
    raise ValueError(f"unknown NMS mode {mode!r}")


def _suppression_edges(boxes: torch.Tensor, groups: torch.Tensor, threshold: float, mode: str):
    """Pairs (i, j), i < j in the sorted order and in the same group, overlapping > threshold."""
    k = boxes.shape[0]
    dev = boxes.device
    _, counts = torch.unique_consecutive(groups, return_counts=True)
    ends = torch.repeat_interleave(torch.cumsum(counts, 0), counts)  # exclusive end of each box's group
    idx = torch.arange(k, device=dev)
    n_after = ends - idx - 1  # later boxes in the same group
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
            i = torch.repeat_interleave(idx[start_box:stop_box], counts_c)
            first = torch.cumsum(counts_c, 0) - counts_c  # pair index where each box's run starts
            j = i + 1 + torch.arange(n_pairs, device=dev) - torch.repeat_interleave(first, counts_c)
            hit = _overlap(boxes[i], boxes[j], mode) > threshold
            src.append(i[hit])
            dst.append(j[hit])
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
