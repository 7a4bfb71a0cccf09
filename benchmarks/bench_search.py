"""1:N search speed: time per face and per frame of 10 faces against galleries of 1k..1M samples
(random 128-d unit vectors), for the matrix precisions that matter, and how precise each one is.

    python benchmarks/bench_search.py [--sizes 1000,10000,100000,1000000] [--repeats 15]

Engines:
  float32          stream.gallery.matcher.SampleIndex (what the Matcher uses): exact, numpy/BLAS
  float16-numpy    matrix stored float16, converted block by block to float32 for the matmul
  bfloat16-torch   matrix in bfloat16, one torch matmul shortlists 16 candidates per face, exact
                   float32 distances re-rank them (exact unless the true nearest is not among the
                   16 bf16-nearest; the table counts such misses)
Queries: gallery vectors plus noise, renormalised (distance ~0.4 to their source, like a second
photo of an enrolled person), so the nearest neighbour is meaningful.
Prints a markdown table; timings are the median of --repeats after a warm-up (min in brackets).
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

from stream.gallery.matcher import SampleIndex  # noqa: E402

DIM = 128
SHORTLIST = 16


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    fn()  # warm-up: first-touch page faults, BLAS thread start
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3, min(ts) * 1e3


class F16Numpy:
    """float16 storage, float32 compute per block: half the bytes, plus a conversion pass."""

    def __init__(self, m: np.ndarray, block: int = 65536):
        self.m16 = m.astype(np.float16)
        self.sq = np.einsum("ij,ij->i", m, m).astype(np.float32)
        self.block = block

    def nearest(self, q: np.ndarray) -> np.ndarray:
        best = np.full(len(q), np.inf, np.float32)
        arg = np.zeros(len(q), np.int64)
        rows = np.arange(len(q))
        for lo in range(0, len(self.m16), self.block):
            part = q @ self.m16[lo : lo + self.block].astype(np.float32).T
            part *= -2
            part += self.sq[lo : lo + self.block]
            j = part.argmin(1)
            v = part[rows, j]
            better = v < best
            best[better], arg[better] = v[better], j[better] + lo
        return arg


class BF16Torch:
    """bfloat16 shortlist with torch (fast where the CPU has AVX512-BF16/AMX), exact re-rank."""

    def __init__(self, m: np.ndarray):
        import torch

        self.torch = torch
        self.m32 = m
        sq = np.einsum("ij,ij->i", m, m)[:, None]
        # Augmented column: [b, |b|^2] . [-2a, 1] = |b|^2 - 2ab, one matmul gives the ranking.
        self.aug = torch.from_numpy(np.ascontiguousarray(np.concatenate([m, sq], 1))).to(torch.bfloat16)

    def nearest(self, q: np.ndarray) -> np.ndarray:
        torch = self.torch
        qa = torch.from_numpy(np.concatenate([-2 * q, np.ones((len(q), 1), np.float32)], 1)).to(
            torch.bfloat16
        )
        k = min(SHORTLIST, self.aug.shape[0])
        cand = torch.topk(qa @ self.aug.T, k, dim=1, largest=False, sorted=False).indices.numpy()
        d = ((self.m32[cand] - q[:, None, :]) ** 2).sum(-1)  # exact, float32, (N, k)
        return cand[np.arange(len(q)), d.argmin(1)]


def exact_nn(m: np.ndarray, q: np.ndarray) -> np.ndarray:
    m64 = m.astype(np.float64)
    d = (m64**2).sum(1)[None] - 2 * q.astype(np.float64) @ m64.T
    return d.argmin(1)


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 rounded to bfloat16 (8-bit mantissa), kept in float32 for numpy maths."""
    u = x.astype(np.float32).view(np.uint32)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.view(np.float32)


def precision_table(rng: np.random.Generator, n: int = 10000) -> None:
    """How far distances computed from a reduced-precision matrix stray from exact ones, near
    the decision (queries at ~0.3-0.7 from their source: dlib same-person distances, threshold 0.6)."""
    m = unit(rng.standard_normal((n, DIM), dtype=np.float32))
    src = rng.integers(0, n, 500)
    noise = rng.standard_normal((500, DIM), dtype=np.float32) * rng.uniform(0.025, 0.06, (500, 1)).astype(
        np.float32
    )
    q = unit(m[src] + noise)
    exact = np.sqrt(((q.astype(np.float64) - m[src].astype(np.float64)) ** 2).sum(1))
    truth = exact_nn(m, q)
    print(
        "\n| matrix | max abs distance error | 99th pct | decisions at 0.6 changed | NN changed (no re-rank) |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, mq in [
        ("float32", m),
        ("float16", m.astype(np.float16).astype(np.float32)),
        ("bfloat16", to_bf16(m)),
    ]:
        d = np.sqrt(np.maximum((mq[src] ** 2).sum(1) + (q**2).sum(1) - 2 * (mq[src] * q).sum(1), 0))
        err = np.abs(d - exact)
        flips = int(np.sum((d <= 0.6) != (exact <= 0.6)))
        nn = SampleIndex(mq, np.arange(n)).nearest(q)[0]
        print(
            f"| {name} | {err.max():.2e} | {np.quantile(err, 0.99):.2e} | {flips} of {len(q)} "
            f"| {int(np.sum(nn != truth))} of {len(q)} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,100000,1000000")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--engines", default="float32,float16-numpy,bfloat16-torch")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    engines = args.engines.split(",")
    rng = np.random.default_rng(0)
    print(f"CPU cores visible: {os.cpu_count()}, load average at start: {os.getloadavg()[0]:.1f}\n")
    print("| gallery | engine | 1 face ms | frame of 10 faces ms | matrix MB | NN agrees with float64 |")
    print("|---:|---|---:|---:|---:|---:|")
    for n in sizes:
        m = unit(rng.standard_normal((n, DIM), dtype=np.float32))
        src = rng.integers(0, n, 200)
        queries = unit(m[src] + rng.standard_normal((200, DIM), dtype=np.float32) * 0.036)
        truth = exact_nn(m, queries[:40])
        for name in engines:
            if name == "float32":
                idx = SampleIndex(m, np.arange(n))
                fn, mb = (lambda q, idx=idx: idx.nearest(q)[0]), m.nbytes / 1e6
            elif name == "float16-numpy":
                eng = F16Numpy(m)
                fn, mb = eng.nearest, eng.m16.nbytes / 1e6
            elif name == "bfloat16-torch":
                try:
                    eng = BF16Torch(m)
                except ImportError:
                    continue
                fn, mb = eng.nearest, eng.aug.element_size() * eng.aug.nelement() / 1e6
            else:
                raise SystemExit(f"unknown engine {name}")
            one = timed(lambda fn=fn, q=queries: fn(q[:1]), args.repeats)
            ten = timed(lambda fn=fn, q=queries: fn(q[10:20]), args.repeats)
            agree = float(
                np.mean(np.concatenate([fn(queries[i : i + 10]) for i in range(0, 40, 10)]) == truth)
            )
            print(
                f"| {n:,} | {name} | {one[0]:.2f} ({one[1]:.2f}) | {ten[0]:.2f} ({ten[1]:.2f}) "
                f"| {mb:.0f} | {agree:.3f} |",
                flush=True,
            )
    precision_table(rng)
    print(f"\nload average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
