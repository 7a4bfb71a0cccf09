"""Grouping face embeddings into identities, offline (`facestream unknowns cluster`) and live (the
match stage's unknown faces).

numpy is enough here: a gallery's unknown faces are hundreds to a few thousand vectors of 128-512
floats, so the full distance matrix fits in memory and one K-means step is one matrix product;
faiss or scikit-learn would add a large dependency for no measurable gain at this size.

- `threshold_clusters`: the number of people is not known. Average-linkage agglomerative
  clustering: the two groups whose faces are nearest on average merge while that average is under
  the threshold (the same threshold that names people, so a group is what the gallery would call one
  person).
- `kmeans`: the textbook method for a known number of people (k-means++ seeding, Lloyd steps), in
  the model's metric (cosine: on unit vectors)."""

from __future__ import annotations

import numpy as np

from stream.gallery.tracking import embedding_distances


def threshold_clusters(vecs: np.ndarray, threshold: float, metric: str) -> np.ndarray:
    """A group label (0..G-1, by first face) per row of vecs."""
    n = len(vecs)
    if n == 0:
        return np.zeros(0, np.int64)
    d = embedding_distances(vecs, vecs, metric)
    groups: list[list[int]] = [[i] for i in range(n)]
    # Sum of pairwise distances between groups; average = sum / (|a| |b|).
    sums = d.copy()
    np.fill_diagonal(sums, np.inf)
    sizes = np.ones(n)
    alive = np.ones(n, bool)
    while alive.sum() > 1:
        avg = sums / np.outer(sizes, sizes)
        avg[~alive] = np.inf
        avg[:, ~alive] = np.inf
        i, j = np.unravel_index(int(np.argmin(avg)), avg.shape)
        if avg[i, j] > threshold:
            break
        i, j = min(i, j), max(i, j)
        groups[i].extend(groups[j])
        sums[i] += sums[j]
        sums[:, i] += sums[:, j]
        sums[i, i] = np.inf
        sizes[i] += sizes[j]
        alive[j] = False
    labels = np.empty(n, np.int64)
    order = sorted((min(groups[g]), g) for g in np.nonzero(alive)[0])
    for k, (_, g) in enumerate(order):
        labels[groups[g]] = k
    return labels


def kmeans(vecs: np.ndarray, k: int, metric: str, seed: int = 0, iters: int = 50) -> np.ndarray:
    """A group label per row of vecs, k groups (fewer faces than k: one group each)."""
    x = np.asarray(vecs, np.float64)
    if metric == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n = len(x)
    k = min(k, n)
    if k <= 0:
        return np.zeros(n, np.int64)
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(n)]]
    for _ in range(1, k):  # k-means++: far faces are likelier seeds
        d2 = np.min(((x[:, None, :] - np.asarray(centres)[None]) ** 2).sum(axis=2), axis=1)
        total = d2.sum()
        centres.append(x[rng.choice(n, p=d2 / total)] if total > 0 else x[rng.integers(n)])
    c = np.asarray(centres)
    labels = np.zeros(n, np.int64)
    for step in range(iters):
        new = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(axis=2), axis=1)
        if step and np.array_equal(new, labels):
            break
        labels = new
        for g in range(k):
            if np.any(labels == g):
                c[g] = x[labels == g].mean(axis=0)
    # Renumber by first face so that the same grouping always gets the same labels.
    _, first = np.unique(labels, return_index=True)
    remap = {int(labels[f]): r for r, f in enumerate(sorted(first))}
    return np.array([remap[int(v)] for v in labels], np.int64)
