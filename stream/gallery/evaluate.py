"""Verification metrics from pair distances: accuracy, best threshold, ROC, AUC, VAL@FAR, EER.

Convention: a pair is declared "same" when distance <= threshold. Positives = same-person pairs.
TAR (VAL) = share of positives accepted; FAR = share of negatives accepted.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stream.errors import FacestreamError

_YES = {"1", "yes", "y", "true", "same"}
_NO = {"0", "no", "n", "false", "different"}


@dataclass
class Pair:
    file_x: str
    file_y: str
    same: bool


def read_pairs(path: Path) -> list[Pair]:
    """CSV with a header naming file_x, file_y, same (yes/no, 1/0, true/false)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = {(h or "").strip().lower() for h in reader.fieldnames or []}
            missing = {"file_x", "file_y", "same"} - fields
            if missing:
                raise FacestreamError(
                    f"{path}: missing column(s) {', '.join(sorted(missing))} (need file_x,file_y,same)"
                )
            pairs = []
            for lineno, row in enumerate(reader, start=2):
                row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
                same = row["same"].lower()
                if same not in _YES | _NO:
                    raise FacestreamError(
                        f"{path}:{lineno}: 'same' must be yes/no or 1/0, not {row['same']!r}"
                    )
                if not row["file_x"] or not row["file_y"]:
                    raise FacestreamError(f"{path}:{lineno}: empty file name")
                pairs.append(Pair(row["file_x"], row["file_y"], same in _YES))
    except FileNotFoundError:
        raise FacestreamError(f"pairs file {path} does not exist") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise FacestreamError(f"{path} is not a readable CSV file ({e})") from None
    if not pairs:
        raise FacestreamError(f"{path} has no pairs")
    return pairs


@dataclass
class Roc:
    thresholds: np.ndarray  # ascending; accept distance <= threshold
    tar: np.ndarray  # true accept rate at each threshold
    far: np.ndarray  # false accept rate at each threshold


def roc(distances: np.ndarray, same: np.ndarray) -> Roc:
    """ROC points at every distinct distance, plus the (0, 0) point below all of them."""
    d = np.asarray(distances, np.float64)
    y = np.asarray(same, bool)
    thr = np.unique(d)
    pos, neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    # searchsorted 'right' = number of items <= each threshold.
    tp = np.searchsorted(np.sort(d[y]), thr, side="right")
    fp = np.searchsorted(np.sort(d[~y]), thr, side="right")
    below = thr[0] - 1.0 if len(thr) else 0.0
    return Roc(
        thresholds=np.concatenate([[below], thr]),
        tar=np.concatenate([[0.0], tp / pos]),
        far=np.concatenate([[0.0], fp / neg]),
    )


def accuracy(distances: np.ndarray, same: np.ndarray, threshold: float) -> float:
    d = np.asarray(distances, np.float64)
    return float(np.mean((d <= threshold) == np.asarray(same, bool))) if len(d) else math.nan


def best_threshold(distances: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """(threshold, accuracy): the most accurate threshold; among equally accurate ones, the middle
    of the widest gap between neighbouring distances (the safest cut)."""
    d = np.sort(np.unique(np.asarray(distances, np.float64)))
    if len(d) == 0:
        return math.nan, math.nan
    # Candidate cuts: midpoints between neighbours, and just outside both ends.
    mids = (d[:-1] + d[1:]) / 2
    gaps = d[1:] - d[:-1]
    cands = np.concatenate([[d[0] - 1e-6], mids, [d[-1] + 1e-6]])
    widths = np.concatenate([[0.0], gaps, [0.0]])
    y = np.asarray(same, bool)
    dd = np.asarray(distances, np.float64)
    tp = np.searchsorted(np.sort(dd[y]), cands, side="right")
    tn = (~y).sum() - np.searchsorted(np.sort(dd[~y]), cands, side="right")
    accs = (tp + tn) / len(dd)
    best = accs.max()
    ok = np.flatnonzero(np.isclose(accs, best))
    i = ok[np.argmax(widths[ok])]
    return float(cands[i]), float(best)


def auc(distances: np.ndarray, same: np.ndarray) -> float:
    """P(a same pair is closer than a different pair), ties counted half (Mann-Whitney U)."""
    d = np.asarray(distances, np.float64)
    y = np.asarray(same, bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    # Average ranks of -distance (higher = more "same"); ties get mean ranks.
    s = -d
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def val_at_far(distances: np.ndarray, same: np.ndarray, far: float = 1e-3) -> float:
    """The highest TAR at a threshold whose FAR is <= `far`. With fewer than 1/far negatives this
    means no false accept at all: the share of positives strictly closer than every negative."""
    d = np.asarray(distances, np.float64)
    y = np.asarray(same, bool)
    pos, neg = np.sort(d[y]), np.sort(d[~y])
    if len(pos) == 0:
        return math.nan
    allowed = int(math.floor(far * len(neg) + 1e-9))  # false accepts we may take
    if allowed >= len(neg):
        return 1.0
    cut = neg[allowed]  # accepting anything >= this would exceed the FAR budget
    return float(np.searchsorted(pos, cut, side="left") / len(pos))


def eer(distances: np.ndarray, same: np.ndarray) -> float:
    """Equal error rate: where FAR = FRR (1 - TAR), linearly interpolated between ROC points."""
    y = np.asarray(same, bool)
    if y.all() or (~y).all():
        return math.nan
    r = roc(distances, same)
    frr = 1.0 - r.tar
    diff = r.far - frr  # rises from -1 (accept nothing) to >= 0 (accept everything)
    k = int(np.argmax(diff >= 0))
    if k == 0 or diff[k] == 0:
        return float((r.far[k] + frr[k]) / 2)
    # Interpolate between points k-1 (diff < 0) and k (diff > 0).
    a = -diff[k - 1] / (diff[k] - diff[k - 1])
    far_x = r.far[k - 1] + a * (r.far[k] - r.far[k - 1])
    frr_x = frr[k - 1] + a * (frr[k] - frr[k - 1])
    return float((far_x + frr_x) / 2)


def summarize(distances: np.ndarray, same: np.ndarray, threshold: float) -> dict[str, float]:
    t_best, acc_best = best_threshold(distances, same)
    return {
        "accuracy": accuracy(distances, same, threshold),
        "threshold": float(threshold),
        "best_accuracy": acc_best,
        "best_threshold": t_best,
        "auc": auc(distances, same),
        "val_at_far_1e-3": val_at_far(distances, same, 1e-3),
        "eer": eer(distances, same),
    }


def plot_roc(r: Roc, path: Path, title: str = "", size: int = 480) -> None:
    """Draws the ROC curve (FAR on x, TAR on y) with OpenCV: no plotting library needed."""
    import cv2

    img = np.full((size, size, 3), 255, np.uint8)
    left, top, right, bottom = 60, 40, size - 20, size - 50
    w, h = right - left, bottom - top

    def px(far: float, tar: float) -> tuple[int, int]:
        return int(round(left + far * w)), int(round(bottom - tar * h))

    grey, black, blue = (200, 200, 200), (0, 0, 0), (200, 80, 0)
    for i in range(11):
        x, y = left + i * w // 10, bottom - i * h // 10
        cv2.line(img, (x, top), (x, bottom), grey, 1)
        cv2.line(img, (left, y), (right, y), grey, 1)
        if i % 2 == 0:
            cv2.putText(img, f"{i / 10:.1f}", (x - 12, bottom + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4, black, 1)
            cv2.putText(img, f"{i / 10:.1f}", (left - 32, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, black, 1)
    cv2.line(img, px(0, 0), px(1, 1), grey, 1, cv2.LINE_AA)  # chance
    cv2.rectangle(img, (left, top), (right, bottom), black, 1)
    # Close the curve at (1, 1): accepting everything.
    far = np.concatenate([r.far, [1.0]])
    tar = np.concatenate([r.tar, [1.0]])
    pts = np.array([px(f, t) for f, t in zip(far, tar, strict=True)], np.int32)
    cv2.polylines(img, [pts], False, blue, 2, cv2.LINE_AA)
    cv2.putText(
        img, "false accept rate", (left + w // 2 - 60, size - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.45, black, 1
    )
    cv2.putText(img, "TAR", (8, top + h // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.45, black, 1)
    cv2.putText(img, title or "ROC", (left, top - 14), cv2.FONT_HERSHEY_SIMPLEX, 0.5, black, 1, cv2.LINE_AA)
    if not cv2.imwrite(str(path), img):  # colours above are BGR
        raise FacestreamError(f"cannot write plot {path}")
