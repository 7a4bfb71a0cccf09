"""1:N search speed: time per face and per frame of 10 faces against galleries of 1k..1M samples
(random 128-d unit vectors), for the Matcher's two kernels, and how much memory each needs.

    python benchmarks/bench_search.py [--sizes 1000,10000,100000,1000000] [--repeats 15]

Kernels (both are stream.gallery.matcher.SampleIndex.nearest, what Matcher.match(k=1) calls):
  float32   the exact float32 pass (numpy/BLAS, one thread): what galleries under
            FAST_MIN_ROWS use
  bf16      search.Bf16Search: bfloat16 coarse pass on SEARCH_THREADS worker threads + exact float64
            re-rank of every candidate the coarse error bound cannot rule out (what galleries of
            FAST_MIN_ROWS and more use on a CPU with native bf16)
  bf16-1t   the same kernel on one thread (what a single core gives)
Below FAST_MIN_ROWS the bf16 rows are for comparison only (the Matcher keeps float32 there).
Queries: gallery vectors plus noise, renormalised (distance ~0.4 to their source, like a second
photo of an enrolled person), so the nearest neighbour is meaningful. The kernels run interleaved
(one call of each in turn, --repeats rounds) so that load from other processes hits all alike;
timings are medians, the minimum in brackets. "NN = float64" checks 200 queries against an
exhaustive float64 search; "candidates" is how many samples the re-rank reads per query.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stream import doctor  # noqa: E402
from stream.gallery import search  # noqa: E402
from stream.gallery.matcher import FAST_MIN_ROWS, SampleIndex  # noqa: E402

DIM = 128
FRAME = 10


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact_nn(m: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Exhaustive float64 nearest neighbour, in row blocks (a 1M float64 copy would be 1 GB)."""
    q64 = q.astype(np.float64)
    best = np.full(len(q), np.inf)
    arg = np.zeros(len(q), np.int64)
    for lo in range(0, len(m), 131072):
        b = m[lo : lo + 131072].astype(np.float64)
        d = (b**2).sum(1)[None] - 2 * q64 @ b.T
        j = d.argmin(1)
        v = d[np.arange(len(q)), j]
        better = v < best
        best[better], arg[better] = v[better], j[better] + lo
    return arg


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 rounded to bfloat16 (8-bit mantissa), kept in float32 for numpy maths."""
    u = x.astype(np.float32).view(np.uint32)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.view(np.float32)


def precision_table(rng: np.random.Generator, n: int = 10000) -> None:
    """How far distances computed from a reduced-precision matrix stray from exact ones, near
    the decision (queries at ~0.3-0.7 from their source: dlib same-person distances, threshold 0.6).
    This is why the bf16 pass only shortlists: alone it would flip decisions near the threshold."""
    m = unit(rng.standard_normal((n, DIM), dtype=np.float32))
    src = rng.integers(0, n, 500)
    noise = rng.standard_normal((500, DIM), dtype=np.float32) * rng.uniform(0.025, 0.06, (500, 1)).astype(
        np.float32
    )
    q = unit(m[src] + noise)
    exact = np.sqrt(((q.astype(np.float64) - m[src].astype(np.float64)) ** 2).sum(1))
    truth = exact_nn(m, q)
    print("\n| matrix alone | max abs distance error | 99th pct | decisions at 0.6 changed | NN changed |")
    print("|---|---:|---:|---:|---:|")
    for name, mq in [
        ("float32", m),
        ("float16", m.astype(np.float16).astype(np.float32)),
        ("bfloat16", to_bf16(m)),
    ]:
        d = np.sqrt(np.maximum((mq[src] ** 2).sum(1) + (q**2).sum(1) - 2 * (mq[src] * q).sum(1), 0))
        err = np.abs(d - exact)
        flips = int(np.sum((d <= 0.6) != (exact <= 0.6)))
        nn = SampleIndex(mq, np.arange(n), fast=False).nearest(q)[0]
        print(
            f"| {name} | {err.max():.2e} | {np.quantile(err, 0.99):.2e} | {flips} of {len(q)} "
            f"| {int(np.sum(nn != truth))} of {len(q)} |"
        )


class OneThread:
    """The bf16 kernel of a SampleIndex, run on one worker thread."""

    def __init__(self, index: SampleIndex):
        self.index, self.fast, self.nbytes = index, index.fast, index.nbytes

    def nearest(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx, dist, _ = self.fast.nearest(self.index._prepare(q), threads=1)
        return idx, dist


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    for fn in fns.values():  # warm-up: first-touch page faults, thread start
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: (statistics.median(v) * 1e3, min(v) * 1e3) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,100000,1000000")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--no-precision", action="store_true", help="skip the matrix precision table")
    args = ap.parse_args()
    print(doctor.header())  # the machine the figures below were measured on
    sizes = [int(s) for s in args.sizes.split(",")]
    rng = np.random.default_rng(0)
    print(
        f"CPU cores visible: {os.cpu_count()}, native bf16: {search.bf16_supported()}, search threads: "
        f"{search.SEARCH_THREADS}, Matcher switches to bf16 at {FAST_MIN_ROWS:,} samples; "
        f"load average at start: {os.getloadavg()[0]:.1f}\n"
    )
    print(
        "| gallery | kernel | 1 face ms | frame of 10 faces ms | per face in a frame ms "
        "| speed-up (frame) | memory MB | NN = float64 | candidates median / max |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        m = unit(rng.standard_normal((n, DIM), dtype=np.float32))
        src = rng.integers(0, n, 200)
        queries = unit(m[src] + rng.standard_normal((200, DIM), dtype=np.float32) * 0.036)
        truth = exact_nn(m, queries)
        t0 = time.perf_counter()
        f32 = SampleIndex(m, np.arange(n), fast=False)
        build32 = time.perf_counter() - t0
        kernels: dict[str, SampleIndex | OneThread] = {"float32": f32}
        if search.bf16_supported():
            t0 = time.perf_counter()
            kernels["bf16"] = SampleIndex(m, np.arange(n), fast=True)
            build16 = time.perf_counter() - t0
            kernels["bf16-1t"] = OneThread(kernels["bf16"])
        fns = {}
        for name, idx in kernels.items():
            fns[(name, 1)] = lambda idx=idx, q=queries: idx.nearest(q[:1])
            fns[(name, FRAME)] = lambda idx=idx, q=queries: idx.nearest(q[10 : 10 + FRAME])
        res = interleaved(fns, args.repeats)
        for name, idx in kernels.items():
            one, ten = res[(name, 1)], res[(name, FRAME)]
            got = np.concatenate([idx.nearest(queries[i : i + FRAME])[0] for i in range(0, 200, FRAME)])
            if idx.fast is not None:
                counts = idx.fast.candidates_count(queries)
                cands = f"{int(np.median(counts))} / {int(counts.max())}"
            else:
                cands = "all"
            speedup = res[("float32", FRAME)][0] / ten[0]
            print(
                f"| {n:,} | {name} | {one[0]:.2f} ({one[1]:.2f}) | {ten[0]:.2f} ({ten[1]:.2f}) "
                f"| {ten[0] / FRAME:.2f} | {speedup:.2f}x | {idx.nbytes / 1e6:.0f} "
                f"| {int(np.sum(got == truth))}/{len(truth)} | {cands} |",
                flush=True,
            )
        build = f"build: float32 {build32:.2f} s" + (
            f", bf16 copy {build16:.2f} s" if "bf16" in kernels else ""
        )
        print(f"| {n:,} | ({build}) | | | | | | | |", flush=True)
        del kernels, fns, f32, m
    if not args.no_precision:
        precision_table(rng)
    print(f"\nload average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
