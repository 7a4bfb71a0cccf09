"""Exact 1:N nearest neighbour for big galleries: a coarse pass over a compact copy of the matrix,
then an exact float64 re-rank of every sample the coarse pass's error bound cannot rule out.

The float32 pass of SampleIndex reads 512 MB per batch at 1M samples of 128-d, and with 10 faces it
is bound by its 1.3 G multiply-adds more than by memory. Two coarse kernels cut both; which one a
gallery gets is choose_kernel's decision, ranked by benchmarks/bench_search.py:
  Int8Search  int8 codes scored by ONNX Runtime's exact integer GEMM (a public, well-kept kernel
              library with SIMD code for every x86 level and ARM): the default on every CPU.
  Bf16Search  bfloat16 matmul through torch's oneDNN ops: as fast on a CPU with native bf16, slower
              than float32 without it; kept for machines without ONNX Runtime.
Both return the sample an exhaustive float64 search returns (lowest index among exact ties): the
coarse scores only pick candidates, the answer comes from `rerank`. Int8Search's bound is in its
docstring; Bf16Search's follows.

Bf16Search. It keeps a second, bfloat16 copy of the matrix (half the bytes, twice the multiply
rate with AVX512-BF16) in blocks pre-packed for oneDNN and scores every sample with one matmul per
block. It is exact by construction, not by luck:

Coarse score. Each row of the bf16 matrix is augmented so that the matmul directly yields
    out_j = bf16( fp32sum( -a q~.b~_j + hb_j + lb_j + hq + lq ) )  ~=  t_j + c
where t_j is the true distance-like score (euclidean: |q - b_j|^2; cosine: 1 - q.b_j; a = 2 or 1),
x~ is x rounded to bf16, hb + lb a bf16 hi/lo split of |b_j|^2 and hq + lq one of |q|^2 + c (or
1 + c). The small offset c > 0 keeps every out_j positive, so the bf16 bit patterns viewed as int16
sort like the values and numpy's SIMD int16 min/compare do the selection.

Error bound. With e_q = |q~ - q|, Nb = max_j |b~_j|, Eb = max_j |b~_j - b_j| (measured at build),
|q~.b~ - q.b| <= e_q Nb + |q| Eb (Cauchy-Schwarz, twice). bf16 x bf16 products are exact in fp32;
the fp32 sum of K terms errs by at most K 2^-24 times the sum of their magnitudes (we take twice
that); the hi/lo splits' residuals are measured; the final rounding to bf16 errs by at most 2^-8
of the value (true for round-to-nearest and for truncation). So, per query,
    |out_j - (t_j + c)| <= D + rho out_j          (D per query, rho = 2^-8 / (1 - 2^-8)).
If j* is the true nearest and m = min_j out_j the coarse best, then
    out_j* (1 - rho) <= t_j* + c + D <= t_best + c + D <= m (1 + rho) + 2 D,
so j* is among the candidates {j : out_j <= L(m) = (m (1 + rho) + 2 D) / (1 - rho)}: every sample
within twice the coarse error of the coarse best is re-checked. The candidate set is adaptive (no
fixed shortlist size): a gallery with many near-identical samples of one person just yields more
candidates. For unit vectors D is small next to the distances that decide identity (its measured
size, and how many candidates it leaves: benchmarks/RESULTS.md, 1:N search, "bf16 coarse pass").
tests/test_matcher_fast.py checks the bound's premises (fp32 accumulation, one
rounding) against the scores torch computes on the machine. The re-rank computes float64 distances from the float32 rows, so the chosen
sample is the one an exhaustive float64 search picks (lowest index among exact ties).

Memory: the bf16 copy is n x 136 x 2 B (128 + 4 augmentation columns, padded to 8), which
oneDNN's packed layout pads to 160 columns: 320 MB at 1M (272 MB unpacked). It comes on top of the
float32 matrix (512 MB), which stays: the re-rank reads its candidate rows from it (and could not
from the bf16 copy), and the k-NN vote and per-person top-k still run exact float32 passes over it.

Threads: SEARCH_THREADS worker threads take blocks from one queue, each running torch single-
threaded (torch releases the GIL in the matmul, numpy in its reductions): no OpenMP barrier per
block (a barrier costs a scheduler tick when other processes hold the cores), and a worker kept off
its core delays the answer by one block at most. The workers' torch thread count is set in those
threads only (OpenMP/MKL thread counts are per thread); the caller's torch setting is untouched.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from stream.cpu import CpuInfo, cpu_info

if TYPE_CHECKING:  # both load late: a small gallery needs neither
    import onnxruntime as ort
    import torch

# Worker threads for the coarse pass (the deployment target has 2 cores shared by the stages).
SEARCH_THREADS = max(1, min(2, os.cpu_count() or 1))
# Augmented width: 128-d embeddings + |b|^2 (hi, lo) + query constant (hi, lo), padded to 8.
_EXTRA = 4
_RHO = 2.0**-8 / (1.0 - 2.0**-8)  # bf16 output rounding, relative to the rounded value
_U32 = 2.0**-24  # float32 unit roundoff
_RERANK_CHUNK = 65536  # candidate rows per float64 copy in the re-rank (32 MB)
# Rows per block, one matmul each (at least one block per worker; bigger blocks: fewer calls, and
# 131072 rows x 10 faces of bf16 scores = 2.6 MB stay in L3 for the selection that follows).
MIN_BLOCK_ROWS = 16384
MAX_BLOCK_ROWS = 131072
MAX_INT8_BLOCK_ROWS = 65536  # 8 MB of int8 codes, 2.6 MB of int32 scores for 10 faces
_TINY = 1e-30  # flush-to-zero of bf16/fp32 denormals (|x| < 2^-126) in the dot product unit

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def bf16_supported() -> bool:
    """torch's oneDNN bf16 ops can run here at native speed: the CPU computes bf16 dot products in
    hardware (AVX512-BF16, AMX or ARM BF16); elsewhere torch emulates bf16 and is slower than
    float32."""
    return cpu_info().native_bf16 and _torch_has_mkldnn()


@lru_cache(maxsize=1)
def _torch_has_mkldnn() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.backends.mkldnn.is_available())


# From this many samples up nearest() uses a coarse kernel + exact re-rank (below it the float32
# pass is already fast, and a second copy of the gallery is not worth its memory).
FAST_MIN_ROWS = 65536
KERNELS = ("float32", "int8", "bf16")


def choose_kernel(n_rows: int, cpu: CpuInfo | None = None) -> str:
    """The nearest() kernel for a gallery of n_rows samples on `cpu` (default: this machine), ranked
    by benchmarks/bench_search.py (RESULTS.md, measured side by side): int8 wherever ONNX Runtime
    runs (on a CPU with native bf16 it matched or beat bf16; elsewhere bf16 is emulated and slower
    than float32), bf16 where ONNX Runtime is missing and the CPU multiplies bf16 in hardware, else
    the float32 pass. All three give the same answers; only their speed depends on the CPU."""
    cpu = cpu or cpu_info()
    if n_rows < FAST_MIN_ROWS:
        return "float32"
    if onnxruntime_available():
        return "int8"
    if cpu.native_bf16 and _torch_has_mkldnn():
        return "bf16"
    return "float32"


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # this worker thread's OpenMP/MKL setting only


def _search_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            import torch

            caller_threads = torch.get_num_threads()
            barrier = threading.Barrier(SEARCH_THREADS)
            pool = ThreadPoolExecutor(SEARCH_THREADS, "facestream-search", initializer=_worker_init)
            # Start every worker now (the barrier makes the pool spawn all of them) ...
            for f in [pool.submit(barrier.wait, 10) for _ in range(SEARCH_THREADS)]:
                f.result()
            # ... then undo the one side effect of torch.set_num_threads(1) in a worker: it also sets
            # the default that threads which never touched torch will start with.
            torch.set_num_threads(caller_threads)
            _pool = pool
        return _pool


class _Packed:
    """A block of the bf16 matrix in oneDNN's blocked weight layout (torch's inductor uses the
    same two ops for frozen linear layers): the skinny (faces x rows) product then streams the
    block without re-laying it out on every call, faster than torch.mm (by how much:
    benchmarks/RESULTS.md, 1:N search, "bf16 coarse pass")."""

    def __init__(self, rows: torch.Tensor):
        import torch

        self.rows = len(rows)
        self.weight: torch.Tensor = torch.ops.mkldnn._reorder_linear_weight(rows, 10)

    def scores(self, qa: torch.Tensor) -> torch.Tensor:
        import torch

        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(qa, self.weight, None, "none", [], "")
        return out


class _Plain:
    def __init__(self, rows: torch.Tensor):
        self.rows = len(rows)
        self.weight = rows

    def scores(self, qa: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.mm(qa, self.weight.T)


def _pack(rows: torch.Tensor) -> _Packed | _Plain:
    """Packed block if this torch has the oneDNN ops and they agree with torch.mm, else plain."""
    import torch

    try:
        packed = _Packed(rows)
        probe = torch.ones((3, rows.shape[1]), dtype=torch.bfloat16)
        if torch.equal(packed.scores(probe), torch.mm(probe, rows.T)):
            return packed
    except (AttributeError, RuntimeError):  # a torch without mkldnn, or a changed private API
        pass
    return _Plain(rows)


class _BlockQueue:
    """Block numbers 0..n-1, each handed out once, to whichever thread asks first."""

    def __init__(self, n: int):
        self._next = itertools.count()
        self._n = n

    def __iter__(self) -> Iterator[int]:
        while (b := next(self._next)) < self._n:  # itertools.count is atomic under the GIL
            yield b


def _bf16_round(x: np.ndarray) -> np.ndarray:
    """float32 -> nearest bfloat16 (round half to even), returned as float32 (exact values)."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32)
    u = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return u.view(np.float32)


def _split_hi_lo(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x (float64) ~= hi + lo with hi, lo bfloat16 values; returns hi, lo (float32) and |residual|."""
    hi = _bf16_round(x.astype(np.float32))
    lo = _bf16_round((x - hi).astype(np.float32))
    return hi, lo, np.abs(hi.astype(np.float64) + lo.astype(np.float64) - x)


def _key_to_value(key: np.ndarray) -> np.ndarray:
    """int16 bit patterns of non-negative bf16 numbers -> float64 values."""
    return (key.astype(np.uint32) << np.uint32(16)).view(np.float32).astype(np.float64)


def _value_to_key(v: np.ndarray) -> np.ndarray:
    """Smallest bf16 bit pattern (as int16) strictly above every bf16 number <= v, for v >= 0: a
    compare `key <= result` keeps every score <= v (and possibly one bf16 step more: harmless)."""
    f = np.minimum(np.asarray(v, np.float64), 3.0e38).astype(np.float32)
    k = (f.view(np.uint32) >> np.uint32(16)).astype(np.int32) + 1
    return np.minimum(k, 0x7F7F).astype(np.int16)


class _Coarse:
    """What both coarse kernels share: the prepared float32 rows they re-rank from."""

    def __init__(self, vectors: np.ndarray, metric: str, threads: int | None):
        if metric not in ("euclidean", "cosine"):
            raise ValueError(f"unsupported metric {metric!r}")
        self.metric = metric
        self.vectors = np.ascontiguousarray(vectors, np.float32)
        self.threads = threads or SEARCH_THREADS

    def __len__(self) -> int:
        return len(self.vectors)

    def _blocks(self, max_rows: int) -> int:
        """Rows per block: at least one block per worker, at most max_rows."""
        return int(np.clip(-(-len(self) // self.threads), MIN_BLOCK_ROWS, max_rows))


class Bf16Search(_Coarse):
    """bf16 coarse pass + exact float64 re-rank over `vectors` (float32, rows already prepared:
    unit rows for cosine). `nearest` returns the same sample as an exhaustive float64 search."""

    def __init__(self, vectors: np.ndarray, metric: str = "euclidean", threads: int | None = None):
        import torch

        super().__init__(vectors, metric, threads)
        n, dim = self.vectors.shape
        self.width: int = -(-(dim + _EXTRA) // 8) * 8
        # Fixed blocks of rows, at least one per worker; each pre-packed for oneDNN when possible.
        self.block = self._blocks(MAX_BLOCK_ROWS)
        self.starts = list(range(0, n, self.block))
        self.blocks: list[_Packed | _Plain] = []
        nb_max = eb_max = sq_max = en_max = 0.0
        for lo in self.starts:
            b = self.vectors[lo : lo + self.block]
            aug = torch.zeros((len(b), self.width), dtype=torch.bfloat16)
            bt16 = torch.from_numpy(b).to(torch.bfloat16)
            aug[:, :dim] = bt16
            bt = bt16.float().numpy()  # what is stored: the bound is measured on it
            nb_max = max(nb_max, float(np.sqrt(np.einsum("ij,ij->i", bt, bt, dtype=np.float64).max())))
            diff = bt - b  # exact in float32: bt is b rounded to 8 significant bits
            eb_max = max(eb_max, float(np.sqrt(np.einsum("ij,ij->i", diff, diff, dtype=np.float64).max())))
            if metric == "euclidean":
                sq = np.einsum("ij,ij->i", b, b, dtype=np.float64)
                hi, lo_, res = _split_hi_lo(sq)
                aug[:, dim] = torch.from_numpy(hi).to(torch.bfloat16)  # exact: bf16 values
                aug[:, dim + 1] = torch.from_numpy(lo_).to(torch.bfloat16)
                sq_max, en_max = max(sq_max, float(sq.max())), max(en_max, float(res.max()))
            aug[:, dim + 2 : dim + 4] = 1.0
            self.blocks.append(_pack(aug))
        self.packed = all(isinstance(b, _Packed) for b in self.blocks)
        # Per-gallery constants of the error bound (module docstring), rounded up a little.
        self.nb_max = nb_max * (1 + 1e-12)
        self.eb_max = eb_max * (1 + 1e-12)
        self.sq_max = sq_max
        self.en_max = en_max * (1 + 1e-12)

    @property
    def nbytes(self) -> int:
        """Memory of the bf16 copy (the float32 matrix it re-ranks from is the caller's)."""
        # oneDNN's packed layout pads the row width to a multiple of 32 (136 -> 160: RESULTS.md).
        width = -(-self.width // 32) * 32 if self.packed else self.width
        return 2 * len(self) * width

    # ----- query side ------------------------------------------------------------------------
    def _query_rows(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(augmented bf16 query rows as float32, per-query absolute error bound D)."""
        n_q, dim = q.shape
        alpha = 2.0 if self.metric == "euclidean" else 1.0
        qt = _bf16_round(q)
        diff = qt - q  # exact
        e_q = np.sqrt(np.einsum("ij,ij->i", diff, diff, dtype=np.float64))
        q_norm = np.sqrt(np.einsum("ij,ij->i", q, q, dtype=np.float64))
        qt_norm = np.sqrt(np.einsum("ij,ij->i", qt, qt, dtype=np.float64))
        base = q_norm**2 if self.metric == "euclidean" else np.ones(n_q)
        dot_err = alpha * (e_q * self.nb_max + q_norm * self.eb_max)
        norm_b = self.en_max if self.metric == "euclidean" else 0.0
        gamma = 2.0 * (self.width + 1) * _U32
        b_terms = 2.0 * self.sq_max if self.metric == "euclidean" else 0.0  # |hb| + |lb|

        def bound(c: np.ndarray, res_q: np.ndarray) -> np.ndarray:
            magnitudes = alpha * qt_norm * self.nb_max + b_terms + 2.0 * (base + c)
            total: np.ndarray = dot_err + norm_b + res_q + gamma * magnitudes + _TINY
            return total

        # c > D keeps every coarse score positive; D depends on c only through tiny terms.
        c = 2.0 * bound(2.0 * dot_err + 1e-6 * base, np.zeros(n_q)) + 1e-6 * base
        hq, lq, res_q = _split_hi_lo(base + c)
        d = bound(c, res_q)
        rows = np.zeros((n_q, self.width), np.float32)
        rows[:, :dim] = -alpha * qt  # exact: bf16 times a power of two
        if self.metric == "euclidean":
            rows[:, dim : dim + 2] = 1.0
        rows[:, dim + 2] = hq
        rows[:, dim + 3] = lq
        if not np.all(c > d):
            raise ArithmeticError("bf16 search: offset does not cover the error bound")
        return rows, d

    @staticmethod
    def _limit(best: np.ndarray, d: np.ndarray) -> np.ndarray:
        lim: np.ndarray = (best * (1 + _RHO) + 2.0 * d) / (1 - _RHO)
        return lim

    # ----- coarse pass -----------------------------------------------------------------------
    def _scan(
        self, qa: torch.Tensor, d: np.ndarray, which: Iterable[int]
    ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, np.ndarray, np.ndarray]]]:
        """Coarse scores of the blocks `which` yields: the running best per query and every row
        that was within L(running best) when seen (a superset of those within L(final best))."""
        import torch

        n_q = qa.shape[0]
        best = np.full(n_q, np.inf)
        bad = np.zeros(n_q, bool)
        cands: list[tuple[int, np.ndarray, np.ndarray]] = []
        for b in which:
            key = self.blocks[b].scores(qa).view(torch.int16).numpy()  # (n_q, rows)
            kmin = key.min(axis=1)
            bad |= kmin < 0  # a negative score: the bound's premise failed (never seen)
            best = np.minimum(best, _key_to_value(np.maximum(kmin, 0)))
            lim = _value_to_key(self._limit(best, d))
            for i in np.flatnonzero(kmin <= lim):
                j = np.flatnonzero(key[i] <= lim[i])
                cands.append((int(i), j + self.starts[b], key[i, j].copy()))
        return best, bad, cands

    def nearest(self, q: np.ndarray, threads: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """q: (N, dim) float32, prepared like the rows. Returns (index (N,), distance (N,) float64,
        fallback (N,) bool): rows flagged fallback (non-finite query, or a negative coarse score,
        which the bound rules out) have no answer here and must be searched exactly.
        threads: worker threads for the coarse pass (default self.threads)."""
        import torch

        q = np.ascontiguousarray(q, np.float32)
        n_q, n = len(q), len(self)
        idx = np.full(n_q, -1, np.int64)
        dist = np.full(n_q, np.inf)
        fallback = ~np.all(np.isfinite(q), axis=1)
        ok = np.flatnonzero(~fallback)
        if n == 0 or len(ok) == 0:
            return idx, dist, fallback | (n == 0)
        rows, d = self._query_rows(q[ok])
        qa = torch.from_numpy(rows).to(torch.bfloat16)  # exact (values are bf16 already)
        # Workers take blocks from one queue, so a worker that another process keeps off its core
        # delays the answer by one block at most. Even one thread runs in a worker: there torch is
        # single-threaded whatever the caller's setting.
        threads = max(1, min(threads or self.threads, SEARCH_THREADS, len(self.blocks)))
        queue = _BlockQueue(len(self.blocks))
        futures = [_search_pool().submit(self._scan, qa, d, queue) for _ in range(threads)]
        parts = [f.result() for f in futures]
        best = np.min([p[0] for p in parts], axis=0)
        bad = np.any([p[1] for p in parts], axis=0)
        lim = _value_to_key(self._limit(best, d))
        per_query: list[list[np.ndarray]] = [[] for _ in range(len(ok))]
        for _, _, cands in parts:
            for i, j, k in cands:
                per_query[i].append(j[k <= lim[i]])
        for pos in np.flatnonzero(bad):
            per_query[pos] = []  # no answer here: the caller searches it exactly
        return rerank(self.vectors, self.metric, q, ok, per_query, idx, dist, fallback)

    def candidates_count(self, q: np.ndarray) -> np.ndarray:
        """How many samples each query re-ranks (diagnostics for tests and the benchmark)."""
        import torch

        q = np.ascontiguousarray(q, np.float32)
        rows, d = self._query_rows(q)
        best, _, cands = self._scan(
            torch.from_numpy(rows).to(torch.bfloat16), d, list(range(len(self.blocks)))
        )
        lim = _value_to_key(self._limit(best, d))
        counts = np.zeros(len(q), np.int64)
        for i, _, k in cands:
            counts[i] += int(np.sum(k <= lim[i]))
        return counts


def rerank(
    vectors: np.ndarray,
    metric: str,
    q: np.ndarray,
    ok: np.ndarray,
    per_query: list[list[np.ndarray]],
    idx: np.ndarray,
    dist: np.ndarray,
    fallback: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact re-rank of each query q[ok[pos]] over its candidates per_query[pos] (row numbers):
    float64 distances from the float32 rows, candidates in index order so that argmin keeps the
    lowest index among exact ties, like an exhaustive argmin. A query left without candidates is
    flagged fallback (no answer here). Fills and returns (idx, dist, fallback)."""
    for pos, i in enumerate(ok):
        cand = np.unique(np.concatenate(per_query[pos])) if per_query[pos] else np.zeros(0, np.int64)
        if len(cand) == 0:
            fallback[i] = True
            continue
        q64 = q[i].astype(np.float64)
        best, arg = np.inf, -1
        for lo in range(0, len(cand), _RERANK_CHUNK):  # bounded float64 copies, however many
            rows64 = vectors[cand[lo : lo + _RERANK_CHUNK]].astype(np.float64)
            if metric == "euclidean":
                diff = rows64 - q64
                score = np.einsum("ij,ij->i", diff, diff)
            else:
                score = 1.0 - rows64 @ q64
            j = int(np.argmin(score))
            if score[j] < best:  # strict: an exact tie keeps the earlier (lower) index
                best, arg = float(score[j]), lo + j
        if arg < 0:  # NaN scores (non-finite rows): no answer here
            fallback[i] = True
            continue
        idx[i] = cand[arg]
        dist[i] = np.sqrt(best) if metric == "euclidean" else max(best, 0.0)
    return idx, dist, fallback


@lru_cache(maxsize=1)
def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _int8_gemm_session(codes: np.ndarray) -> ort.InferenceSession:
    """An ONNX Runtime session computing Y = (A - 128) @ (B - 128) with B = codes.T + 128 (u8,
    a constant that ORT pre-packs) for u8 query rows A: an exact int32 dot product of int8 codes.
    u8 x u8 on purpose: MLAS's u8 x s8 kernels on x86 without VNNI sum pairs of products in
    saturating 16-bit lanes; its u8 x u8 kernels widen to 16 bits first and never saturate."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rows, dim = codes.shape
    b = numpy_helper.from_array((codes.T.astype(np.int16) + 128).astype(np.uint8), "B")
    zero = [numpy_helper.from_array(np.array(128, np.uint8), name) for name in ("za", "zb")]
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B", "za", "zb"], ["Y"])],
        "int8_scores",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [None, dim])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [None, rows])],
        [b, *zero],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # what every ONNX Runtime >= 1.10 reads
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the search pool's worker threads are the parallelism
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


class Int8Search(_Coarse):
    """int8 coarse pass (ONNX Runtime's integer GEMM) + exact float64 re-rank over `vectors`
    (float32, prepared rows: unit rows for cosine). `nearest` returns the same sample as an
    exhaustive float64 search.

    Codes: c_j = round(s b_j) in [-127, 127] with one scale s = 127 / max|b| for the whole
    gallery; the query gets the same scale, c_q = clip(round(s q), -127, 127). ONNX Runtime's
    MatMulInteger computes c_q.c_j in int32 without rounding (|c_q.c_j| <= dim 127^2 < 2^31), so
    the coarse score r_j^2 = |c_q|^2 + |c_j|^2 - 2 c_q.c_j = |c_q - c_j|^2 is an exact integer.

    Error bound (distances; / s turns scores into them). b~_j = c_j / s and q~ = c_q / s; E = max_j
    |b~_j - b_j| (measured at build), e_q = |q~ - q| (per query), F = E + e_q. The triangle
    inequality gives | |q~ - b~_j| - |q - b_j| | <= F, and r_j = s |q~ - b~_j| exactly. With m the
    coarse best (r / s), the true best distance is at most U = m + F; for cosine the best
    1 - q.b_j lies at most U' = sqrt(U^2 + 2 eta) away in euclidean distance, eta = max_j ||b_j|^2 - 1|
    (rows are unit up to float32 rounding). So the answer is among {j : r_j / s <= U' + F}: every
    sample within twice the coarse error of the coarse best. A query the codes clip (far off the
    gallery's range) just has a large e_q and so more candidates: slower, still exact.

    Threads and blocks as in Bf16Search: SEARCH_THREADS workers take blocks from one queue, each
    block one single-threaded ORT run (ORT releases the GIL) and a selection in numpy while its
    scores are in cache.
    """

    def __init__(self, vectors: np.ndarray, metric: str = "euclidean", threads: int | None = None):
        super().__init__(vectors, metric, threads)
        n, dim = self.vectors.shape
        top = float(np.abs(self.vectors).max()) if n else 0.0
        self.scale = 127.0 / top if top > 0 else 1.0
        self.block = self._blocks(MAX_INT8_BLOCK_ROWS)
        self.starts = list(range(0, n, self.block))
        self.sessions: list[ort.InferenceSession] = []
        self.sq: list[np.ndarray] = []
        e_max = eta = 0.0
        for lo in self.starts:
            b = self.vectors[lo : lo + self.block]
            codes = np.clip(np.rint(b.astype(np.float64) * self.scale), -127, 127)
            diff = codes / self.scale - b
            e_max = max(e_max, float(np.sqrt(np.einsum("ij,ij->i", diff, diff).max())))
            eta = max(eta, float(np.abs(np.einsum("ij,ij->i", b, b, dtype=np.float64) - 1.0).max()))
            self.sq.append(np.einsum("ij,ij->i", codes, codes).astype(np.int32))  # exact: integers
            self.sessions.append(_int8_gemm_session(codes.astype(np.int8)))
        self.e_max = e_max * (1 + 1e-9) + 1e-12  # rounded up: float64 error of the measurement
        self.eta = eta if metric == "cosine" else 0.0

    @property
    def nbytes(self) -> int:
        """Memory of the int8 codes and their squared norms (ORT keeps the codes pre-packed)."""
        return len(self) * (int(self.vectors.shape[1]) + 4)

    def _query(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query codes + 128 as u8, |c_q|^2 (int64), per-query F = E + e_q)."""
        with np.errstate(invalid="ignore", over="ignore"):  # non-finite queries are flagged later
            codes = np.nan_to_num(np.clip(np.rint(q.astype(np.float64) * self.scale), -127, 127))
            e_q = np.linalg.norm(codes / self.scale - q.astype(np.float64), axis=1)
        qa = (codes + 128).astype(np.uint8)
        return qa, np.einsum("ij,ij->i", codes, codes).astype(np.int64), self.e_max + e_q * (1 + 1e-9)

    def _limit(self, best_sq: np.ndarray, f: np.ndarray) -> np.ndarray:
        """Coarse scores r^2 up to which a sample may be the answer (rounded up by a relative 1e-9
        for the float64 arithmetic here)."""
        u = np.sqrt(best_sq) / self.scale + f
        lim = (np.sqrt(u * u + 2.0 * self.eta) + f) * self.scale
        sq: np.ndarray = lim * lim * (1 + 1e-9)
        return sq

    def _scan(
        self, qa: np.ndarray, cq2: np.ndarray, f: np.ndarray, which: Iterable[int]
    ) -> tuple[np.ndarray, list[tuple[int, np.ndarray, np.ndarray]]]:
        """Like Bf16Search._scan: the running best r^2 per query and every row that was within
        the limit of the running best when seen (a superset of those within the final limit)."""
        best = np.full(len(qa), np.inf)
        cands: list[tuple[int, np.ndarray, np.ndarray]] = []
        for b in which:
            y = self.sessions[b].run(None, {"A": qa})[0]  # (n_q, rows) int32
            y *= -2
            y += self.sq[b]  # |c_j|^2 - 2 c_q.c_j: r^2 - |c_q|^2, exact in int32
            kmin = y.min(axis=1)
            best = np.minimum(best, kmin + cq2)
            lim = np.floor(self._limit(best, f)) - cq2  # integer scores: floor loses nothing
            for i in np.flatnonzero(kmin <= lim):
                j = np.flatnonzero(y[i] <= lim[i])
                cands.append((int(i), j + self.starts[b], y[i, j].astype(np.int64) + cq2[i]))
        return best, cands

    def _candidates(self, q: np.ndarray, threads: int) -> list[list[np.ndarray]]:
        qa, cq2, f = self._query(q)
        queue = _BlockQueue(len(self.sessions))
        futures = [_search_pool().submit(self._scan, qa, cq2, f, queue) for _ in range(threads)]
        parts = [fut.result() for fut in futures]
        lim = self._limit(np.min([p[0] for p in parts], axis=0), f)
        per_query: list[list[np.ndarray]] = [[] for _ in range(len(q))]
        for _, cands in parts:
            for i, j, r2 in cands:
                per_query[i].append(j[r2 <= lim[i]])
        return per_query

    def nearest(self, q: np.ndarray, threads: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """q: (N, dim) float32, prepared like the rows. Returns (index (N,), distance (N,) float64,
        fallback (N,) bool): rows flagged fallback (non-finite query) have no answer here and must
        be searched exactly. threads: coarse-pass workers (default self.threads)."""
        q = np.ascontiguousarray(q, np.float32)
        idx = np.full(len(q), -1, np.int64)
        dist = np.full(len(q), np.inf)
        fallback = ~np.all(np.isfinite(q), axis=1)
        ok = np.flatnonzero(~fallback)
        if len(self) == 0 or len(ok) == 0:
            return idx, dist, fallback | (len(self) == 0)
        threads = max(1, min(threads or self.threads, SEARCH_THREADS, len(self.sessions)))
        per_query = self._candidates(q[ok], threads)
        return rerank(self.vectors, self.metric, q, ok, per_query, idx, dist, fallback)

    def candidates_count(self, q: np.ndarray) -> np.ndarray:
        """How many samples each query re-ranks (diagnostics for tests and the benchmark)."""
        per_query = self._candidates(np.ascontiguousarray(q, np.float32), 1)
        return np.array([sum(len(j) for j in c) for c in per_query], np.int64)
