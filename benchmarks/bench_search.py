"""1:N search speed: time per face and per frame of 10 faces against galleries of 1k..1M samples
(random 128-d unit vectors) for each kernel of stream.gallery.matcher.SampleIndex.nearest (what
Matcher.match(k=1) calls), against the memory-bandwidth bound of one pass over what each reads.

    python benchmarks/bench_search.py [--sizes 1000,10000,100000,1000000] [--repeats 15]

Kernels (search.choose_kernel picks one per gallery size and CPU; "(used)" marks its pick here):
  float32   the exact float32 pass (numpy/BLAS on one thread): galleries under FAST_MIN_ROWS
  int8      search.Int8Search: int8 codes scored by ONNX Runtime's exact integer GEMM on
            SEARCH_THREADS worker threads + exact float64 re-rank of every candidate the error bound
            cannot rule out: big galleries on every CPU, and the path of CPUs without native bf16
  bf16      search.Bf16Search: oneDNN bfloat16 coarse pass + the same kind of re-rank: only where
            ONNX Runtime is missing and the CPU has native bf16 (marked "emulated" on other CPUs)
Bandwidth: the fastest of 15 streaming reads of the float32 gallery on SEARCH_THREADS threads
gives GB/s (galleries from 100k; smaller ones sit in cache); a kernel's floor is the bytes it must
read per pass at that rate (float32 512 B/sample, bf16 320 as oneDNN packs it, int8 128); "x floor"
is its frame time over that floor. With 10 faces every pass
here is bound by multiply-adds, not by memory, so none reaches its floor.
Queries: gallery vectors plus noise, renormalised (distance ~0.4 to their source, like a second
photo of an enrolled person). Kernels run interleaved (one call of each in turn, --repeats rounds)
so that load from other processes hits all alike; medians, the minimum in brackets. "NN = float64"
checks 200 queries against an exhaustive float64 search; "candidates" is how many samples the
re-rank reads per query; "extra B/sample" the coarse copy's memory on top of the float32 matrix.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stream import doctor  # noqa: E402
from stream.cpu import cpu_info  # noqa: E402
from stream.gallery import search  # noqa: E402
from stream.gallery.matcher import SampleIndex  # noqa: E402

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
        nn = SampleIndex(mq, np.arange(n), kernel="float32").nearest(q)[0]
        print(
            f"| {name} | {err.max():.2e} | {np.quantile(err, 0.99):.2e} | {flips} of {len(q)} "
            f"| {int(np.sum(nn != truth))} of {len(q)} |"
        )


def read_bandwidth(m: np.ndarray, repeats: int) -> float:
    """GB/s of one streaming read of `m` split over SEARCH_THREADS threads (numpy's max reduction
    releases the GIL and runs at memory speed): the best of `repeats`, since a floor is what the
    memory allows, not what other processes leave."""
    parts = np.array_split(m.reshape(-1), search.SEARCH_THREADS)
    times = []
    for _ in range(repeats):
        threads = [threading.Thread(target=np.max, args=(p,)) for p in parts]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        times.append(time.perf_counter() - t0)
    return m.nbytes / min(times) / 1e9


def interleaved(
    fns: dict[tuple[str, int], Callable[[], object]], repeats: int
) -> dict[tuple[str, int], tuple[float, float]]:
    for fn in fns.values():  # warm-up: first-touch page faults, thread start
        fn()
    times: dict[tuple[str, int], list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: (statistics.median(v) * 1e3, min(v) * 1e3) for k, v in times.items()}


# Bytes one pass reads per sample (128-d): float32 rows; bf16 rows packed by oneDNN to 160 columns;
# int8 codes.
PASS_BYTES = {"float32": 4 * DIM, "bf16": 2 * 160, "int8": DIM}


def build(m: np.ndarray) -> tuple[dict[str, SampleIndex], dict[str, float]]:
    kernels: dict[str, SampleIndex] = {}
    seconds: dict[str, float] = {}
    for name in ("float32", "int8", "bf16"):
        if name == "int8" and not search.onnxruntime_available():
            continue
        t0 = time.perf_counter()
        kernels[name] = SampleIndex(m, np.arange(len(m)), kernel=name)
        seconds[name] = time.perf_counter() - t0
    return kernels, seconds


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
        f"native bf16: {cpu_info().native_bf16}, search threads: {search.SEARCH_THREADS}, "
        f"coarse kernels from {search.FAST_MIN_ROWS:,} samples; load average at start: {os.getloadavg()[0]:.1f}"
    )
    print(
        "\n| gallery | kernel | 1 face ms | frame of 10 faces ms | vs float32 (frame) | floor ms | x floor "
        "| extra B/sample | NN = float64 | candidates median / max |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        m = unit(rng.standard_normal((n, DIM), dtype=np.float32))
        src = rng.integers(0, n, 200)
        queries = unit(m[src] + rng.standard_normal((200, DIM), dtype=np.float32) * 0.036)
        truth = exact_nn(m, queries)
        kernels, seconds = build(m)
        chosen = search.choose_kernel(n)
        fns = {}
        for name, idx in kernels.items():
            fns[(name, 1)] = lambda idx=idx, q=queries: idx.nearest(q[:1])
            fns[(name, FRAME)] = lambda idx=idx, q=queries: idx.nearest(q[10 : 10 + FRAME])
        res = interleaved(fns, args.repeats)
        gbs = read_bandwidth(m, 15) if n >= 100_000 else None  # small matrices sit in cache
        for name, idx in kernels.items():
            one, ten = res[(name, 1)], res[(name, FRAME)]
            got = np.concatenate([idx.nearest(queries[i : i + FRAME])[0] for i in range(0, 200, FRAME)])
            cands = "all"
            if idx.fast is not None:
                counts = idx.fast.candidates_count(queries)
                cands = f"{int(np.median(counts))} / {int(counts.max())}"
            floor = n * PASS_BYTES[name] / gbs / 1e6 if gbs else None
            label = name + (" (used)" if name == chosen else "")
            if name == "bf16" and not cpu_info().native_bf16:
                label += " (emulated)"
            extra = (idx.nbytes - kernels["float32"].nbytes) / n
            print(
                f"| {n:,} | {label} | {one[0]:.2f} ({one[1]:.2f}) | {ten[0]:.2f} ({ten[1]:.2f}) "
                f"| {res[('float32', FRAME)][0] / ten[0]:.2f}x "
                f"| {f'{floor:.1f}' if floor else '-'} | {f'{ten[0] / floor:.1f}x' if floor else '-'} "
                f"| {extra:.0f} | {int(np.sum(got == truth))}/{len(truth)} | {cands} |",
                flush=True,
            )
        bw = f"read bandwidth {gbs:.1f} GB/s; " if gbs else ""
        print(
            f"| {n:,} | ({bw}build s: {', '.join(f'{k} {v:.2f}' for k, v in seconds.items())}) | | | | | | | | |"
        )
        del kernels, fns, m
    if not args.no_precision:
        precision_table(rng)
    print(f"\nload average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
