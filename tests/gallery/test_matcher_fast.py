"""The coarse + exact re-rank kernels of stream/gallery/search.py (bf16, int8) on a 200k-sample
in-memory gallery: same nearest sample, same person, same decision at the threshold as an exhaustive
float64 search, including queries placed right at the threshold, near-ties between two people and
clusters of near-duplicates. Every kernel runs on every CPU (bf16 is emulated where the CPU lacks it,
slower but exact), so each test runs for each kernel; only a missing library skips. The choice of
kernel is tested for this CPU and for others, described by their features."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from stream.cpu import CpuInfo, cpu_info
from stream.gallery import search
from stream.gallery.matcher import Matcher, SampleIndex
from stream.gallery.search import _RHO, FAST_MIN_ROWS, choose_kernel, onnxruntime_available

torch = pytest.importorskip("torch")
KERNEL_PARAMS = [
    pytest.param("bf16"),
    pytest.param("int8", marks=pytest.mark.skipif(not onnxruntime_available(), reason="no onnxruntime")),
]

N_ROWS = 200_000
DIM = 128
PER_PERSON = 4
THRESHOLD = 0.6
MODEL = "dlib-resnet-v1"


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def exact64(m: np.ndarray, q: np.ndarray, metric: str = "euclidean") -> tuple[np.ndarray, np.ndarray]:
    """Exhaustive float64 nearest neighbour (lowest index among exact ties): argmin of the
    expanded form, then the direct form over every row within 1e-9 of that minimum."""
    m64 = m.astype(np.float64)
    sq = np.einsum("ij,ij->i", m64, m64)
    q64 = q.astype(np.float64)
    idx = np.zeros(len(q), np.int64)
    dist = np.zeros(len(q))
    for i, row in enumerate(q64):
        if i % 32 == 0:
            dots_chunk = q64[i : i + 32] @ m64.T
        dots = dots_chunk[i % 32]
        score = sq - 2 * dots if metric == "euclidean" else -dots
        near = np.flatnonzero(score <= score.min() + 1e-9)
        if metric == "euclidean":
            direct = ((m64[near] - row) ** 2).sum(1)
        else:
            direct = 1.0 - m64[near] @ row
        j = int(np.argmin(direct))
        idx[i] = near[j]
        dist[i] = np.sqrt(direct[j]) if metric == "euclidean" else max(direct[j], 0.0)
    return idx, dist


@pytest.fixture(scope="module")
def gallery():
    rng = np.random.default_rng(42)
    m = unit(rng.standard_normal((N_ROWS, DIM), dtype=np.float32))
    people = np.repeat(np.arange(N_ROWS // PER_PERSON), PER_PERSON)
    # Make each person's samples look like several photos of one face (distance ~0.3-0.5).
    centres = unit(rng.standard_normal((N_ROWS // PER_PERSON, DIM), dtype=np.float32))
    m = unit(centres[people] + rng.standard_normal((N_ROWS, DIM), dtype=np.float32) * 0.03)
    return m, people


@pytest.fixture(scope="module", params=KERNEL_PARAMS)
def big(request, gallery):
    m, people = gallery
    return np.random.default_rng(43), m, people, SampleIndex(m, people, kernel=request.param)


def check_same(index: SampleIndex, m: np.ndarray, people: np.ndarray, q: np.ndarray) -> None:
    idx, dist = index.nearest(q)
    ref_idx, ref_dist = exact64(m, q, index.metric)
    np.testing.assert_array_equal(people[idx], people[ref_idx])  # same person
    np.testing.assert_array_equal(idx, ref_idx)  # and the very same sample
    np.testing.assert_array_equal(dist <= THRESHOLD, ref_dist <= THRESHOLD)  # same decision
    np.testing.assert_allclose(dist, ref_dist, rtol=0, atol=1e-9)
    # The float32 pass agrees to its own precision: |a|^2 + |b|^2 - 2ab in float32 errs by ~1e-7 in
    # the squared distance, which the square root magnifies near 0 (0.008 comes out 1.3e-5 off).
    _, f32_dist = index.nearest_exact(q)
    np.testing.assert_allclose(dist**2, f32_dist**2, rtol=1e-6, atol=1e-6)
    far = ref_dist > 0.1
    np.testing.assert_allclose(dist[far], f32_dist[far], rtol=0, atol=1e-5)


def onednn_has_bf16() -> bool:
    """oneDNN's own answer (from cpuid, so right under qemu too, where /proc/cpuinfo is the host's)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu(*features: str, arch: str = "x86_64") -> CpuInfo:
    return CpuInfo(arch=arch, model="test", features=frozenset(features), logical_cpus=2)


def test_kernel_choice_follows_the_cpu_features(monkeypatch):
    """The policy on CPUs described by their features, whatever CPU runs the test: the int8 pass on
    every CPU where ONNX Runtime runs; without it bf16 only where the hardware multiplies bf16
    (emulated bf16 is slower than float32); float32 for small galleries everywhere."""
    avx2 = cpu("avx2", "fma")
    avx512 = cpu("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni")
    bf16 = cpu("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16")
    arm = cpu("asimd", "asimddp", arch="aarch64")
    every = (
        avx2,
        avx512,
        bf16,
        cpu("amx_bf16", "amx_int8"),
        arm,
        cpu("asimd", "bf16", arch="aarch64"),
        cpu(),
    )
    big_n = FAST_MIN_ROWS
    for c in every:
        assert choose_kernel(FAST_MIN_ROWS - 1, c) == "float32"
    if onnxruntime_available():
        assert {choose_kernel(big_n, c) for c in every} == {"int8"}
    monkeypatch.setattr(search, "onnxruntime_available", lambda: False)
    mkldnn = torch.backends.mkldnn.is_available()
    for c in every:
        assert choose_kernel(big_n, c) == ("bf16" if c.native_bf16 and mkldnn else "float32")


def test_big_galleries_get_the_kernel_the_policy_names_for_this_cpu(gallery):
    m, people = gallery
    index = SampleIndex(m, people)
    assert index.kernel == choose_kernel(len(m), cpu_info())
    assert index.kernel != "bf16" or cpu_info().native_bf16  # never emulated bf16
    assert (index.fast is None) == (index.kernel == "float32")
    assert SampleIndex(m[:1000], people[:1000]).kernel == "float32"
    with pytest.raises(Exception, match="unknown search kernel"):
        SampleIndex(m[:10], people[:10], kernel="fp8")


def test_coarse_copy_layout_and_memory(big):
    _, _, _, index = big
    fast = index.fast
    assert len(fast) == N_ROWS
    if index.kernel == "int8":
        assert fast.nbytes == N_ROWS * (DIM + 4)  # one byte per component + an int32 norm
        assert len(fast.sessions) >= 2  # one block per worker at least
    else:
        # 128 + 4 columns, padded to 136; oneDNN's packed layout pads to 160.
        assert fast.nbytes == N_ROWS * (160 if fast.packed else 136) * 2
        assert len(fast.blocks) >= 2  # one block per worker at least
        if onednn_has_bf16():
            assert fast.packed  # the oneDNN layout wherever oneDNN has bf16 kernels for this CPU


def test_random_queries_match_float64(big):
    rng, m, people, index = big
    src = rng.integers(0, N_ROWS, 240)
    noise = rng.standard_normal((240, DIM), dtype=np.float32) * rng.uniform(0.0, 0.08, (240, 1))
    q = np.concatenate(
        [
            unit(m[src] + noise.astype(np.float32)),  # enrolled people, near to far
            unit(rng.standard_normal((40, DIM), dtype=np.float32)),  # strangers
            m[src[:8]],  # a gallery sample itself (distance 0)
            3.0 * unit(rng.standard_normal((8, DIM), dtype=np.float32)),  # off the unit sphere
        ]
    )
    for lo in range(0, len(q), 10):  # frames of 10 faces, as the pipeline sends them
        check_same(index, m, people, q[lo : lo + 10])
    check_same(index, m, people, q[:1])


def test_queries_right_at_the_threshold(big):
    rng, m, people, index = big
    n = 120
    src = rng.integers(0, N_ROWS, n)
    direction = unit(rng.standard_normal((n, DIM), dtype=np.float32))
    offsets = rng.choice([-1e-4, -1e-5, -1e-6, -3e-7, 0.0, 3e-7, 1e-6, 1e-5, 1e-4], n)
    q = (m[src] + (THRESHOLD + offsets)[:, None].astype(np.float32) * direction).astype(np.float32)
    idx, dist = index.nearest(q)
    ref_idx, ref_dist = exact64(m, q)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(dist <= THRESHOLD, ref_dist <= THRESHOLD)
    decided = ref_dist <= THRESHOLD
    assert 0 < decided.sum() < n  # the set really straddles the threshold
    np.testing.assert_allclose(dist, ref_dist, rtol=0, atol=1e-9)


def test_near_ties_between_two_people(big):
    rng, m, people, index = big
    n = 100
    a = rng.integers(0, N_ROWS // PER_PERSON, n) * PER_PERSON  # first sample of person A
    b = (a + PER_PERSON * rng.integers(1, 50, n)) % N_ROWS  # a sample of another person B
    mid = (m[a].astype(np.float64) + m[b]) / 2
    axis = (m[a].astype(np.float64) - m[b]) / np.linalg.norm(m[a].astype(np.float64) - m[b], axis=1)[:, None]
    side = rng.standard_normal((n, DIM))
    side -= (side * axis).sum(1, keepdims=True) * axis  # orthogonal to a-b: equidistant direction
    side /= np.linalg.norm(side, axis=1, keepdims=True)
    eps = rng.choice([-1e-5, -1e-6, -1e-7, 0.0, 1e-7, 1e-6, 1e-5], n)[:, None]
    q = (mid + 0.2 * side + eps * axis).astype(np.float32)
    idx, dist = index.nearest(q)
    ref_idx, ref_dist = exact64(m, q)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(people[idx], people[ref_idx])
    np.testing.assert_allclose(dist, ref_dist, rtol=0, atol=1e-9)
    assert np.isin(idx, np.concatenate([a, b])).mean() > 0.9  # they really were the contenders


@pytest.mark.parametrize("kernel", KERNEL_PARAMS)
def test_exact_duplicates_pick_the_lowest_index(kernel):
    rng = np.random.default_rng(5)
    m = unit(rng.standard_normal((40_000, DIM), dtype=np.float32))
    m[37_000] = m[300]  # the same face enrolled under two names
    m[32_468:33_068] = m[4_000] + rng.standard_normal((600, DIM), dtype=np.float32) * 1e-4  # a cluster
    m[12_000:12_040] = m[12_040]  # 41 identical rows: an exact tie
    people = np.arange(len(m))
    index = SampleIndex(m, people, kernel=kernel)
    q = np.stack([m[300], m[37_000], m[4_000] + 1e-3, m[32_768], m[12_040], m[12_040] + 1e-6])
    idx, _ = index.nearest(q)
    np.testing.assert_array_equal(idx, exact64(m, q)[0])
    assert idx[0] == idx[1] == 300 and idx[4] == 12_000
    # 600 near-identical samples (across a block boundary of the int8 kernel): the adaptive
    # candidate set grows to hold them all.
    assert index.fast.candidates_count(q[2:3])[0] >= 600


@pytest.mark.parametrize("kernel", KERNEL_PARAMS)
def test_cosine_metric_matches_float64(kernel):
    rng = np.random.default_rng(6)
    m = rng.standard_normal((30_000, DIM), dtype=np.float32) * rng.uniform(0.5, 2, (30_000, 1)).astype(
        np.float32
    )
    index = SampleIndex(m, np.arange(len(m)), metric="cosine", kernel=kernel)
    src = rng.integers(0, len(m), 40)
    q = m[src] + rng.standard_normal((40, DIM), dtype=np.float32) * 0.05
    idx, dist = index.nearest(q)
    ref_idx, ref_dist = exact64(index.vectors, index._prepare(q), "cosine")
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(dist, ref_dist, rtol=0, atol=1e-9)
    np.testing.assert_allclose(dist, index.nearest_exact(q)[1], rtol=0, atol=1e-5)


def test_coarse_scores_obey_the_error_bound(big):
    """The exactness proofs assume (bf16) fp32 accumulation of exact bf16 products and one rounding
    of the result to bf16, (int8) exact integer dot products of the codes (no saturation): check the
    scores torch / ONNX Runtime produce on this CPU against those premises, and that the bounds are
    tight enough to leave only a few candidates."""
    rng, m, _, index = big
    s = index.fast
    if index.kernel == "int8":
        check_int8_scores(s, m, rng)
        return
    q = unit(m[rng.integers(0, N_ROWS, 10)] + rng.standard_normal((10, DIM), dtype=np.float32) * 0.04)
    rows, d = s._query_rows(q)
    b = 1
    lo, hi = s.starts[b], s.starts[b] + s.blocks[b].rows
    out = s.blocks[b].scores(torch.from_numpy(rows).to(torch.bfloat16)).float().numpy().astype(np.float64)
    c = rows[:, DIM + 2].astype(np.float64) + rows[:, DIM + 3] - (q.astype(np.float64) ** 2).sum(1)
    t = ((m[lo:hi].astype(np.float64)[None] - q.astype(np.float64)[:, None]) ** 2).sum(-1)
    err = np.abs(out - (t + c[:, None]))
    bound = d[:, None] + _RHO * out
    assert np.all(out > 0)
    assert np.all(err <= bound)
    assert err.max() > 0.01 * bound.max()  # the bound is not absurdly loose either
    counts = s.candidates_count(q)
    assert np.median(counts) <= 4 and counts.max() <= 64


def check_int8_scores(s: search.Int8Search, m: np.ndarray, rng: np.random.Generator) -> None:
    q = unit(m[rng.integers(0, N_ROWS, 10)] + rng.standard_normal((10, DIM), dtype=np.float32) * 0.04)
    q = np.concatenate([q, np.full((1, DIM), 9.0, np.float32), -q[:1] * 50])  # codes at +-127
    qa, cq2, f = s._query(q)
    b = 1
    lo, hi = s.starts[b], s.starts[b] + len(s.sq[b])
    codes = np.clip(np.rint(m[lo:hi].astype(np.float64) * s.scale), -127, 127).astype(np.int64)
    cq = qa.astype(np.int64) - 128
    assert np.abs(cq).max() == 127
    y = s.sessions[b].run(None, {"A": qa})[0]
    np.testing.assert_array_equal(y, cq @ codes.T)  # exact: no saturation, no rounding
    np.testing.assert_array_equal(s.sq[b], (codes * codes).sum(1))
    np.testing.assert_array_equal(cq2, (cq * cq).sum(1))
    true = np.sqrt(((m[lo:hi].astype(np.float64)[None] - q[:10].astype(np.float64)[:, None]) ** 2).sum(-1))
    coarse = np.sqrt(((cq[:10, None] - codes[None]) ** 2).sum(-1)) / s.scale
    assert np.all(np.abs(coarse - true) <= f[:10, None])  # the triangle inequality's premise
    counts = s.candidates_count(q[:10])
    assert np.median(counts) <= 4 and counts.max() <= 64


def test_non_finite_query_falls_back(big):
    _, m, people, index = big
    q = np.stack([m[7], np.full(DIM, np.nan, np.float32)])
    idx, dist = index.nearest(q)
    assert idx[0] == 7 and dist[0] == pytest.approx(0.0, abs=1e-6)
    ref = index.nearest_exact(q[1:])
    assert idx[1] == ref[0][0]


def test_search_threads_leave_the_callers_torch_setting_alone(big):
    _, m, _, index = big
    before = torch.get_num_threads()
    index.nearest(m[:10])
    assert torch.get_num_threads() == before
    seen = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert seen == [before]


def test_matcher_uses_the_kernel_and_decides_alike(tmp_path, monkeypatch):
    from stream.gallery.store import Gallery, NewSample

    def new_sample(vec: np.ndarray, tag: str) -> NewSample:
        return NewSample(tag.ljust(64, "0"), tag, [0, 0, 10, 10], np.zeros((5, 2)), b"png", (0, 0, 1), vec)

    rng = np.random.default_rng(7)
    path = tmp_path / "g.db"
    vecs = rng.normal(size=(12, 128)).astype(np.float32) * 0.06
    with Gallery.open(path, create=True) as g:
        for i in range(4):
            g.add_person(f"p{i}", [new_sample(vecs[3 * i + j], f"{i}{j}") for j in range(3)], MODEL)
    q = np.concatenate([vecs + rng.normal(size=vecs.shape).astype(np.float32) * 0.02, vecs[:2] * 3])
    plain = Matcher(path, MODEL)
    assert plain.index.fast is None
    monkeypatch.setattr(search, "FAST_MIN_ROWS", 1)
    fast = Matcher(path, MODEL)
    assert fast.index.kernel == choose_kernel(1)
    if fast.index.kernel == "float32":
        pytest.skip("no onnxruntime and no native bf16 here: the Matcher keeps the float32 pass")
    assert fast.index.fast is not None
    a, b = plain.match(q), fast.match(q)
    assert [x.name for x in a] == [x.name for x in b]
    assert [x.person_id for x in a] == [x.person_id for x in b]
    np.testing.assert_allclose([x.distance for x in a], [x.distance for x in b], atol=1e-5)
    assert any(x.name is None for x in b) and any(x.name for x in b)
