"""dfx.metrics (numpy) against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest

from dfx import metrics

sk = pytest.importorskip("sklearn.metrics", reason="needs scikit-learn (pip install 'dfx[test]')")


def _cases():
    rng = np.random.default_rng(0)
    for n, ties in ((50, False), (300, True), (7, True)):
        y = rng.integers(0, 2, n)
        y[:2] = [0, 1]
        s = rng.normal(y * 1.2, 1.0)
        if ties:
            s = np.round(s, 1)  # many tied scores
        yield y, s


@pytest.mark.parametrize("case", list(_cases()))
def test_auc_ap_and_roc_match_sklearn(case):
    y, s = case
    assert metrics.auc(y, s) == pytest.approx(sk.roc_auc_score(y, s), abs=1e-12)
    assert metrics.average_precision(y, s) == pytest.approx(sk.average_precision_score(y, s), abs=1e-12)
    fpr, tpr, thr = metrics.roc_curve(y, s)
    fpr_sk, tpr_sk, thr_sk = sk.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, fpr_sk)
    np.testing.assert_allclose(tpr, tpr_sk)
    np.testing.assert_allclose(thr[1:], thr_sk[1:])


@pytest.mark.parametrize("case", list(_cases()))
def test_thresholded_metrics_match_sklearn(case):
    y, s = case
    t = float(np.median(s))
    pred = (s >= t).astype(int)
    r = metrics.summarize(y, s, t)
    assert r["accuracy"] == pytest.approx(sk.accuracy_score(y, pred))
    assert r["precision"] == pytest.approx(sk.precision_score(y, pred, zero_division=0))
    assert r["recall"] == pytest.approx(sk.recall_score(y, pred))
    assert r["f1"] == pytest.approx(sk.f1_score(y, pred))
    assert r["specificity"] == pytest.approx(sk.recall_score(1 - y, 1 - pred))
    assert r["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(y, pred))
    tn, fp, fn, tp = sk.confusion_matrix(y, pred).ravel()
    assert r["confusion"] == {"tp": tp, "fp": fp, "tn": tn, "fn": fn}


def test_eer_and_tpr_at_fpr_against_the_sklearn_roc():
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(500, int), np.ones(500, int)]
    s = rng.normal(y * 2.0, 1.0)
    fpr, tpr, _ = sk.roc_curve(y, s)
    i = np.argmin(np.abs((1 - tpr) - fpr))
    assert metrics.equal_error_rate(y, s) == pytest.approx(fpr[i], abs=0.01)
    assert metrics.tpr_at_fpr(y, s, 0.01) == pytest.approx(tpr[fpr <= 0.01].max())
    # two Gaussians 2 sigma apart: EER = Phi(-1) = 0.1587
    assert metrics.equal_error_rate(y, s) == pytest.approx(0.1587, abs=0.03)


def test_perfect_and_constant_scores():
    y = np.array([0, 0, 1, 1])
    assert metrics.auc(y, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert metrics.auc(y, [0.5] * 4) == 0.5
    assert metrics.equal_error_rate(y, [0.1, 0.2, 0.8, 0.9]) == 0.0
    assert np.isnan(metrics.auc([1, 1], [0.2, 0.3]))
    with pytest.raises(ValueError):
        metrics.auc([0, 1], [0.5])


def test_threshold_rules():
    rng = np.random.default_rng(2)
    y = np.r_[np.zeros(400, int), np.ones(400, int)]
    s = rng.normal(y * 1.5, 1.0)
    t = metrics.threshold_balanced_accuracy(y, s)
    best = max(sk.balanced_accuracy_score(y, (s >= c).astype(int)) for c in np.unique(s))
    assert sk.balanced_accuracy_score(y, (s >= t).astype(int)) == pytest.approx(best)
    for target in (0.01, 0.1):
        t = metrics.threshold_at_fpr(y, s, target)
        fpr = np.mean(s[y == 0] >= t)
        assert fpr <= target
        assert np.mean(s[y == 0] >= np.max(s[(y == 0) & (s < t)], initial=-np.inf)) > target or fpr == 0  # lowest such threshold
    assert not any(np.isclose(s, metrics.threshold_balanced_accuracy(y, s)))  # midpoints, never on a score


def test_per_group_scores_each_generator_against_the_other_class():
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.6, 0.9, 0.8, 0.3, 0.7])
    g = np.array(["ffhq", "ffhq", "celeba", "stylegan", "stylegan", "stargan", "stargan"])
    out = metrics.per_group(y, s, g, threshold=0.5)
    assert set(out) == {"ffhq", "celeba", "stylegan", "stargan"}
    assert out["stylegan"]["auc"] == pytest.approx(sk.roc_auc_score([0, 0, 0, 1, 1], [0.1, 0.2, 0.6, 0.9, 0.8]))
    assert out["stargan"]["group_accuracy"] == 0.5 and out["celeba"]["group_accuracy"] == 0.0
    assert out["ffhq"]["group_label"] == "real" and out["ffhq"]["group_images"] == 2
