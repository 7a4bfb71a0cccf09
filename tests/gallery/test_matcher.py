"""Matcher on synthetic vectors: exact NN, thresholds, top-k, k-NN vote, refresh, model isolation."""

from __future__ import annotations

import numpy as np
import pytest

from stream.errors import FacestreamError
from stream.gallery.matcher import BLOCK_ROWS, Matcher, SampleIndex
from stream.gallery.store import Gallery, NewSample

MODEL = "dlib-resnet-v1"


def new_sample(vec: np.ndarray, tag: str) -> NewSample:
    return NewSample(tag.ljust(64, "0"), tag, [0, 0, 10, 10], np.zeros((5, 2)), b"png", (0, 0, 1), vec)


def brute(q: np.ndarray, m: np.ndarray) -> np.ndarray:
    return np.sqrt(((q[:, None, :].astype(np.float64) - m[None, :, :]) ** 2).sum(-1))


def test_index_exact_nn_across_blocks():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(BLOCK_ROWS * 2 + 17, 16)).astype(np.float32)
    people = np.sort(rng.integers(0, 500, len(m)))
    q = rng.normal(size=(7, 16)).astype(np.float32)
    idx, dist = SampleIndex(m, people).nearest(q)
    ref = brute(q, m)
    np.testing.assert_array_equal(idx, ref.argmin(1))
    np.testing.assert_allclose(dist, ref.min(1), rtol=1e-4)


def test_index_per_person_minimum():
    rng = np.random.default_rng(1)
    m = rng.normal(size=(50, 8)).astype(np.float32)
    people = np.repeat(np.arange(10), 5)
    q = rng.normal(size=(3, 8)).astype(np.float32)
    pp = SampleIndex(m, people).per_person(q)
    np.testing.assert_allclose(pp, brute(q, m).reshape(3, 10, 5).min(2), rtol=1e-4)


def test_cosine_metric():
    m = np.array([[1, 0], [0, 2]], np.float32)
    _, d = SampleIndex(m, np.array([1, 2]), metric="cosine").nearest(np.array([[3, 0.0]], np.float32))
    assert d[0] == pytest.approx(0.0, abs=1e-6)


@pytest.fixture
def gallery_path(tmp_path):
    rng = np.random.default_rng(2)
    centres = {name: rng.normal(size=128).astype(np.float32) * 0.1 for name in ["ann", "ben", "cat"]}
    path = tmp_path / "g.db"
    with Gallery.open(path, create=True) as g:
        for i, (name, c) in enumerate(centres.items()):
            g.add_person(name, [new_sample(c + 0.01 * j, f"{i}{j}") for j in range(3)], MODEL)
    return path, centres


def test_match_names_and_unknowns(gallery_path):
    path, centres = gallery_path
    m = Matcher(path, MODEL)
    assert m.threshold == pytest.approx(0.6) and m.size == 9
    q = np.stack([centres["ben"] + 0.02, centres["ann"], np.full(128, 5.0, np.float32)])
    res = m.match(q)
    assert [r.name for r in res] == ["ben", "ann", None]
    assert res[1].distance == pytest.approx(0.0, abs=1e-3)
    assert res[2].person_id is None and res[2].distance > 0.6
    assert [r.name for r in m.match(q, k=3)] == ["ben", "ann", None]
    assert m.match(np.zeros((0, 128), np.float32)) == []
    top = m.top_k(q[:1], 3)[0]
    assert [t.name for t in top][0] == "ben" and len(top) == 3
    assert top[0].distance <= top[1].distance <= top[2].distance
    m.close()


def test_evidence_says_the_candidate_over_the_threshold_and_the_runner_up(gallery_path):
    path, centres = gallery_path
    m = Matcher(path, MODEL)
    step = np.random.default_rng(5).normal(size=128)
    step[0] += -step.sum()  # orthogonal to the all-ones direction the samples spread along
    far = (centres["cat"] + 0.7 * step / np.linalg.norm(step)).astype(np.float32)  # 0.7 from cat
    got = m.evidence(np.stack([centres["ann"], far]))
    assert [(g.name, g.candidate) for g in got] == [("ann", "ann"), (None, "cat")]
    ref = brute(np.stack([centres["ann"], far]), np.stack(list(centres.values())))
    assert got[0].runner_up == pytest.approx(np.sort(ref[0])[1], abs=0.02)  # ben or cat, not ann
    assert got[1].distance == pytest.approx(0.7, abs=0.02) and got[1].runner_up > got[1].distance
    assert [g.candidate for g in m.match(np.stack([centres["ann"], far]))] == ["ann", "cat"]


def test_explicit_and_calibrated_threshold(gallery_path):
    path, centres = gallery_path
    with Gallery.open(path) as g:
        g.set_threshold(MODEL, 0.01, "test")
    m = Matcher(path, MODEL)
    assert m.threshold == pytest.approx(0.01)
    assert m.match(centres["ann"] + 0.05)[0].name is None
    assert Matcher(path, MODEL, threshold=0.9).match(centres["ann"] + 0.05)[0].name == "ann"


def test_refresh_sees_new_person_from_other_connection(gallery_path):
    path, _ = gallery_path
    m = Matcher(path, MODEL)
    assert m.refresh() is False  # nothing changed: no reload
    dora = np.full(128, 0.3, np.float32)
    assert m.match(dora)[0].name is None
    with Gallery.open(path) as g:
        g.add_person("dora", [new_sample(dora, "d")], MODEL)
    assert m.refresh() is True
    assert m.match(dora)[0].name == "dora"
    with Gallery.open(path) as g:
        g.remove_person("dora")
    assert m.refresh() is True and m.match(dora)[0].name is None


def test_models_never_mix(gallery_path):
    path, centres = gallery_path
    with pytest.raises(FacestreamError, match="no samples made with model facenet-vggface2"):
        Matcher(path, "facenet-vggface2")
    with Gallery.open(path) as g:  # one 512-d sample for the other model: only that one is seen
        g.add_person("eve", [new_sample(np.ones(512, np.float32), "e")], "facenet-vggface2")
    m = Matcher(path, "facenet-vggface2")
    assert m.size == 1
    assert Matcher(path, MODEL).size == 9


def test_empty_gallery_is_all_unknown(tmp_path):
    Gallery.open(tmp_path / "e.db", create=True).close()
    m = Matcher(tmp_path / "e.db", MODEL)
    r = m.match(np.zeros((2, 128), np.float32))
    assert [x.name for x in r] == [None, None] and r[0].distance == float("inf")
    assert m.top_k(np.zeros((1, 128), np.float32), 3) == [[]]
