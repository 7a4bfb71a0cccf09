"""Verification metrics against hand-worked cases; pairs CSV parsing; the ROC plot."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from stream.errors import FacestreamError
from stream.gallery import evaluate as ev


def test_perfect_separation():
    d = np.array([0.2, 0.3, 0.4, 0.7, 0.8, 0.9])
    y = np.array([1, 1, 1, 0, 0, 0], bool)
    s = ev.summarize(d, y, 0.6)
    assert s["accuracy"] == 1.0 and s["best_accuracy"] == 1.0
    assert s["best_threshold"] == pytest.approx(0.55)  # middle of the widest gap
    assert s["auc"] == 1.0 and s["eer"] == 0.0 and s["val_at_far_1e-3"] == 1.0


def test_overlap_hand_worked():
    d = np.array([0.1, 0.5, 0.3, 0.6])
    y = np.array([1, 1, 0, 0], bool)
    # pairs (pos, neg) with pos closer: 0.1<0.3, 0.1<0.6, 0.5<0.6 -> 3 of 4
    assert ev.auc(d, y) == pytest.approx(0.75)
    assert ev.accuracy(d, y, 0.4) == pytest.approx(0.5)
    t, acc = ev.best_threshold(d, y)
    assert acc == pytest.approx(0.75)
    # No false accept allowed with 2 negatives: positives closer than 0.3 -> 1 of 2.
    assert ev.val_at_far(d, y, 1e-3) == pytest.approx(0.5)
    # ROC: t<0.1 (0,0); 0.1 (far 0, tar .5); 0.3 (far .5, tar .5): FAR=FRR=0.5 at 0.3 -> EER 0.5?
    # Between t=0.1 (far 0, frr .5) and t=0.3 (far .5, frr .5): crossing at far=frr=0.5.
    assert ev.eer(d, y) == pytest.approx(0.5)


def test_auc_ties_count_half():
    assert ev.auc(np.array([0.5, 0.5]), np.array([True, False])) == pytest.approx(0.5)


def test_roc_monotone_and_val_with_many_negatives():
    rng = np.random.default_rng(0)
    pos = rng.normal(0.4, 0.1, 3000)
    neg = rng.normal(0.9, 0.1, 3000)
    d = np.concatenate([pos, neg])
    y = np.concatenate([np.ones(3000, bool), np.zeros(3000, bool)])
    r = ev.roc(d, y)
    assert np.all(np.diff(r.far) >= 0) and np.all(np.diff(r.tar) >= 0)
    # 3 false accepts allowed: threshold just under the 4th closest negative.
    cut = np.sort(neg)[3]
    assert ev.val_at_far(d, y, 1e-3) == pytest.approx(np.mean(pos < cut))
    assert 0.0 < ev.eer(d, y) < 0.01
    assert ev.auc(d, y) > 0.999


def test_one_class_only_is_nan():
    d, y = np.array([0.1, 0.2]), np.array([True, True])
    assert math.isnan(ev.auc(d, y)) and math.isnan(ev.eer(d, y))


def test_read_pairs(tmp_path):
    p = tmp_path / "pairs.csv"
    p.write_text("file_x,file_y,same\na.jpg,b.jpg,yes\na.jpg,c.jpg,0\nb.jpg, c.jpg ,True\n")
    pairs = ev.read_pairs(p)
    assert [(x.file_x, x.file_y, x.same) for x in pairs] == [
        ("a.jpg", "b.jpg", True),
        ("a.jpg", "c.jpg", False),
        ("b.jpg", "c.jpg", True),
    ]
    p.write_text("file_x,file_y,same\na.jpg,b.jpg,maybe\n")
    with pytest.raises(FacestreamError, match=":2: 'same'"):
        ev.read_pairs(p)
    p.write_text("a,b\n1,2\n")
    with pytest.raises(FacestreamError, match="missing column"):
        ev.read_pairs(p)
    with pytest.raises(FacestreamError, match="does not exist"):
        ev.read_pairs(tmp_path / "none.csv")


def test_plot(tmp_path):
    d = np.array([0.2, 0.3, 0.5, 0.7, 0.8])
    y = np.array([1, 1, 0, 1, 0], bool)
    out = tmp_path / "roc.png"
    ev.plot_roc(ev.roc(d, y), out, "test")
    img = cv2.imread(str(out))
    assert img.shape == (480, 480, 3)
    assert (np.abs(img.astype(int) - [200, 80, 0]).sum(2) < 60).sum() > 100  # the curve (BGR blue) is drawn
