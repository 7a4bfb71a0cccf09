"""1:N matching against the gallery: exact nearest neighbour over a float32 matrix.

One pass over the matrix serves every face of a batch: squared Euclidean distances come from
|a|^2 + |b|^2 - 2 a.b with a single matmul, in blocks of gallery rows so that the (faces x block)
product stays in cache. The pass is memory-bound, so its cost is the matrix size: 1M samples of
128-d float32 is 512 MB read per batch (see benchmarks/bench_search.py).

Big galleries (search.FAST_MIN_ROWS samples and up) answer nearest() with a coarse pass over a compact copy
of the matrix, then an exact float64 re-rank of every candidate the coarse error bound cannot rule
out: search.Int8Search (int8 codes, ONNX Runtime's integer GEMM) on every CPU, search.Bf16Search
where ONNX Runtime is missing and the CPU has native bf16; search.choose_kernel is the policy. Same
sample, same decision as an exhaustive search (the proofs are in search.py); distances agree within
~1e-7. The k-NN vote (match k>1) and top_k keep the exact float32 pass.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stream.errors import FacestreamError
from stream.gallery import rejections
from stream.gallery.search import KERNELS, Bf16Search, Int8Search, choose_kernel
from stream.gallery.store import Gallery

if TYPE_CHECKING:
    from threadpoolctl import ThreadpoolController

# Gallery rows per matmul block: 10 faces x 16k rows x 4 B = 640 KB of products, L2-sized.
BLOCK_ROWS = 16384


@lru_cache(maxsize=1)
def _blas_controller() -> ThreadpoolController | None:
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


def _one_blas_thread() -> contextlib.AbstractContextManager[object]:
    """numpy's BLAS on one thread for the float32 pass: its worker threads spin-wait, so when the
    pipeline's other stages hold the cores a 10-face matmul waits for descheduled workers (tail
    latency up to a hundredfold, RESULTS.md); the coarse kernels bring their own parallelism."""
    controller = _blas_controller()
    return controller.limit(limits=1, user_api="blas") if controller else contextlib.nullcontext()


@dataclass
class Match:
    name: str | None  # None = unknown (over the threshold, or an empty gallery)
    distance: float  # to the nearest enrolled sample of that person (inf if the gallery is empty)
    person_id: int | None
    # The nearest person whether or not within the threshold (None: empty gallery): what the face
    # itself says, which the tracker checks a track's name against.
    candidate: str | None = None
    # Distance to the nearest OTHER person (inf: unknown or nobody else): a tie says nothing.
    runner_up: float = float("inf")


class SampleIndex:
    """Exact NN over a matrix of samples grouped by person (rows of one person are contiguous)."""

    def __init__(
        self,
        vectors: np.ndarray,
        person_ids: np.ndarray,
        metric: str = "euclidean",
        kernel: str | None = None,
    ):
        """kernel: what answers nearest(), one of search.KERNELS; None lets search.choose_kernel
        pick for this gallery size and CPU (forcing one is for benchmarks and tests)."""
        if metric not in ("euclidean", "cosine"):
            raise FacestreamError(f"unsupported metric {metric!r}")
        self.metric = metric
        vectors = np.ascontiguousarray(vectors, np.float32)
        if metric == "cosine":
            vectors = _unit_rows(vectors)
        self.vectors = vectors
        self.person_ids = np.asarray(person_ids, np.int64)
        self.sq_norms = np.einsum("ij,ij->i", vectors, vectors) if len(vectors) else np.zeros(0, np.float32)
        # Start of each person's run of rows, for per-person minima (np.minimum.reduceat).
        if len(self.person_ids):
            change = np.flatnonzero(np.diff(self.person_ids)) + 1
            self.group_starts = np.concatenate([[0], change]).astype(np.intp)
        else:
            self.group_starts = np.zeros(0, np.intp)
        self.group_person = self.person_ids[self.group_starts]
        kernel = kernel or choose_kernel(len(vectors))
        if kernel not in KERNELS:
            raise FacestreamError(f"unknown search kernel {kernel!r} (one of {', '.join(KERNELS)})")
        self.kernel = kernel if len(vectors) and vectors.shape[1] else "float32"
        self.fast: Bf16Search | Int8Search | None = None
        if self.kernel == "bf16":
            self.fast = Bf16Search(vectors, metric)
        elif self.kernel == "int8":
            self.fast = Int8Search(vectors, metric)

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1] if self.vectors.ndim == 2 and len(self.vectors) else 0

    def _prepare(self, queries: np.ndarray) -> np.ndarray:
        q = np.ascontiguousarray(np.atleast_2d(queries), np.float32)
        if len(self) and q.shape[1] != self.dim:
            raise FacestreamError(f"embedding size {q.shape[1]} does not match the gallery's {self.dim}")
        return _unit_rows(q) if self.metric == "cosine" else q

    def _finish(self, q: np.ndarray, part: np.ndarray) -> np.ndarray:
        """Distances from `part` = |b|^2 - 2ab (euclidean) or -ab (cosine)."""
        d: np.ndarray
        if self.metric == "cosine":
            d = np.maximum(1.0 + part, 0.0)
            return d
        qn = np.einsum("ij,ij->i", q, q)
        d = np.sqrt(np.maximum(part + qn.reshape(-1, *([1] * (part.ndim - 1))), 0.0))
        return d

    def _partial(self, q: np.ndarray, lo: int, hi: int) -> np.ndarray:
        block: np.ndarray = q @ self.vectors[lo:hi].T  # (N, hi-lo)
        if self.metric == "cosine":
            np.negative(block, out=block)
            return block
        block *= -2.0
        block += self.sq_norms[lo:hi]
        return block

    @property
    def nbytes(self) -> int:
        """Memory of the search representations: float32 matrix + norms (+ the coarse copy)."""
        return self.vectors.nbytes + self.sq_norms.nbytes + (self.fast.nbytes if self.fast else 0)

    def nearest(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest sample per query: (sample index (N,), distance (N,)); -1 / inf if empty."""
        q = self._prepare(queries)
        if self.fast is None or len(q) == 0:
            return self._nearest_f32(q)
        idx, dist, fallback = self.fast.nearest(q)
        if fallback.any():  # non-finite queries or scores: whatever the float32 pass makes of them
            idx[fallback], dist[fallback] = self._nearest_f32(q[fallback])
        return idx, dist

    def nearest_exact(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """nearest() by the float32 pass over the whole matrix, whatever the gallery size."""
        return self._nearest_f32(self._prepare(queries))

    def _nearest_f32(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with _one_blas_thread():
            return self._nearest_f32_blocks(q)

    def _nearest_f32_blocks(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(q)
        best = np.full(n, np.inf, np.float32)
        arg = np.full(n, -1, np.int64)
        rows = np.arange(n)
        for lo in range(0, len(self), BLOCK_ROWS):
            part = self._partial(q, lo, min(lo + BLOCK_ROWS, len(self)))
            j = np.argmin(part, axis=1)
            v = part[rows, j]
            better = v < best
            best[better] = v[better]
            arg[better] = j[better] + lo
        if len(self) == 0:
            return arg, best.astype(np.float64)
        return arg, self._finish(q, best).astype(np.float64)

    def distances(self, queries: np.ndarray) -> np.ndarray:
        """All query-sample distances (N, S); for small galleries and k-NN."""
        q = self._prepare(queries)
        if len(self) == 0:
            return np.zeros((len(q), 0), np.float64)
        with _one_blas_thread():
            part = np.concatenate(
                [
                    self._partial(q, lo, min(lo + BLOCK_ROWS, len(self)))
                    for lo in range(0, len(self), BLOCK_ROWS)
                ],
                axis=1,
            )
        return self._finish(q, part).astype(np.float64)

    def per_person(self, queries: np.ndarray) -> np.ndarray:
        """(N, P) distance from each query to each person's nearest sample, P in group order."""
        d = self.distances(queries)
        if d.shape[1] == 0:
            return d
        per: np.ndarray = np.minimum.reduceat(d, self.group_starts, axis=1)
        return per


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit: np.ndarray = (x / np.maximum(norms, 1e-12)).astype(np.float32)
    return unit


class Matcher:
    """Names faces from one model's samples in a gallery file.

    threshold None: the gallery's calibrated threshold for the model if there is one
    (`facestream eval --set-threshold`), else the model's default. `refresh()` is cheap (reads one
    counter row) and reloads the matrix only when the gallery changed, so a running pipeline picks
    up enrollments without a restart. Use from one thread at a time."""

    def __init__(self, gallery_path: Path, model: str, threshold: float | None = None):
        from stream.registry import get_spec

        self.spec = get_spec(model)
        self.model = model
        self.metric = self.spec.metric
        self._explicit_threshold = threshold
        self.gallery = Gallery.open(gallery_path, create=False)
        self.threshold: float = self._pick_threshold()
        self._generation = -1
        self.index = SampleIndex(np.zeros((0, max(self.spec.dim, 1)), np.float32), np.zeros(0), self.metric)
        self.names: dict[int, str] = {}
        self.rejected: dict[int, np.ndarray] = {}  # person id -> faces that are not them
        self.refresh()
        self._check_model()

    def _pick_threshold(self) -> float:
        if self._explicit_threshold is not None:
            return float(self._explicit_threshold)
        calibrated = self.gallery.threshold(self.model)
        return calibrated if calibrated is not None else float(self.spec.threshold)

    def _check_model(self) -> None:
        # An empty gallery is fine (everyone is unknown); one enrolled only with other models is a
        # mistake the user must hear about, since nothing could ever match.
        if len(self.index) == 0:
            others = self.gallery.models()
            if others:
                raise FacestreamError(
                    f"gallery {self.gallery.path} has no samples made with model {self.model} "
                    f"(it has: {', '.join(others)}); run `facestream gallery --gallery "
                    f"{self.gallery.path} rebuild --model {self.model}`"
                )

    def close(self) -> None:
        self.gallery.close()

    @property
    def size(self) -> int:
        return len(self.index)

    def refresh(self) -> bool:
        gen = self.gallery.generation()
        if gen == self._generation:
            return False
        vectors, person_ids, names = self.gallery.embeddings(self.model)
        if len(vectors) and self.spec.dim and vectors.shape[1] != self.spec.dim:
            raise FacestreamError(
                f"gallery {self.gallery.path} holds {vectors.shape[1]}-d embeddings for {self.model}, "
                f"which makes {self.spec.dim}-d ones"
            )
        if len(vectors) == 0:
            vectors = np.zeros((0, max(self.spec.dim, 1)), np.float32)
        self.index = SampleIndex(vectors, person_ids, self.metric)
        self.names = names
        self.rejected = rejections.vectors(self.gallery.conn, self.model)
        self.threshold = self._pick_threshold()
        self._generation = gen
        return True

    def match(self, embeddings: np.ndarray, k: int = 1) -> list[Match]:
        """One Match per row. k=1: the nearest sample decides. k>1: the k nearest samples vote
        (those within the threshold; most samples wins, the nearer person on a tie)."""
        emb = np.atleast_2d(np.asarray(embeddings, np.float32))
        if len(emb) == 0:
            return []
        if len(self.index) == 0:
            return [Match(None, float("inf"), None) for _ in range(len(emb))]
        if k <= 1:
            idx, dist = self.index.nearest(emb)
            out = [
                self._decide(int(self.index.person_ids[i]), float(d)) for i, d in zip(idx, dist, strict=True)
            ]
        else:
            out = [self._knn_vote(row, k) for row in self.index.distances(emb)]
        return self._veto(emb, out)

    def _veto(self, emb: np.ndarray, matches: list[Match]) -> list[Match]:
        """A face nearer to one of its candidate's rejected faces (`gallery reject`) than to any of
        the candidate's own samples is nobody: no name and no candidate, so that neither this face
        nor the tracker's agreement over frames names it that person."""
        if not self.rejected:
            return matches
        from stream.gallery.tracking import embedding_distances

        ids = {name: pid for pid, name in self.names.items()}
        out = []
        for row, m in zip(emb, matches, strict=True):
            cand = m.candidate if m.candidate is not None else m.name
            neg = self.rejected.get(ids[cand]) if cand is not None and cand in ids else None
            if neg is not None and neg.shape[1] == row.shape[0]:
                if float(embedding_distances(row.reshape(1, -1), neg, self.metric).min()) < m.distance:
                    m = Match(None, float("inf"), None)
            out.append(m)
        return out

    def _decide(self, pid: int, distance: float) -> Match:
        if distance <= self.threshold:
            return Match(self.names[pid], distance, pid, self.names[pid])
        return Match(None, distance, None, self.names[pid])

    def _knn_vote(self, d: np.ndarray, k: int) -> Match:
        order = np.argsort(d, kind="stable")[:k]
        nearest = float(d[order[0]])
        counts: dict[int, list[float]] = {}
        for i in order:
            if d[i] <= self.threshold:
                counts.setdefault(int(self.index.person_ids[i]), []).append(float(d[i]))
        nearest_name = self.names[int(self.index.person_ids[order[0]])]
        if not counts:
            return Match(None, nearest, None, nearest_name)
        pid = max(counts, key=lambda p: (len(counts[p]), -min(counts[p])))
        return Match(self.names[pid], min(counts[pid]), pid, self.names[pid])

    def evidence(self, embeddings: np.ndarray) -> list[Match]:
        """match() (k=1) plus each face's runner-up (the nearest other person) where that is cheap:
        galleries under search.FAST_MIN_ROWS samples, whose match is one full pass anyway. The tracker
        treats a face about as near two people as a tie (unknown)."""
        from stream.gallery.search import FAST_MIN_ROWS

        emb = np.atleast_2d(np.asarray(embeddings, np.float32))
        if len(emb) == 0 or len(self.index) == 0 or len(self.index) >= FAST_MIN_ROWS:
            return self.match(emb)
        out = []
        for row in self.top_k(emb, 2):
            pid = row[0].person_id
            assert pid is not None  # top_k names every candidate
            best = self._decide(pid, row[0].distance)
            best.runner_up = row[1].distance if len(row) > 1 else float("inf")
            out.append(best)
        return self._veto(emb, out)

    def top_k(self, embeddings: np.ndarray, k: int) -> list[list[Match]]:
        """The k nearest enrolled people per row, nearest first (a candidate list): named whether or
        not they are within the threshold, unlike match(); compare .distance with .threshold."""
        emb = np.atleast_2d(np.asarray(embeddings, np.float32))
        if len(self.index) == 0 or k <= 0:
            return [[] for _ in range(len(emb))]
        per_person = self.index.per_person(emb)  # (N, P)
        k = min(k, per_person.shape[1])
        out = []
        for row in per_person:
            order = np.argsort(row, kind="stable")[:k]
            out.append(
                [
                    Match(
                        self.names[int(self.index.group_person[j])],
                        float(row[j]),
                        int(self.index.group_person[j]),
                    )
                    for j in order
                ]
            )
        return out
