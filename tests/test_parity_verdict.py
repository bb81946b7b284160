"""The parity verdict (dfx.parity.compare) on logits made to order: noise of the size CPU
kernels add does not change a verdict; a genuinely bad form fails at every sample size."""

from __future__ import annotations

import numpy as np
import pytest

from dfx import parity

THRESHOLD = 0.25


def keras_logits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A trained model's logits: two overlapping classes around the threshold (spread ~3)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    logits = np.where(labels == 1, 2.0, -1.5) + rng.normal(0, 1.6, n) + THRESHOLD
    return logits, labels


def kernel_noise(reference: np.ndarray, seed: int, size: float = 0.01) -> np.ndarray:
    """What another CPU's int8 kernels do: every logit moves by ~1% of the spread, and the
    images nearest the threshold are pushed across it, each by less than the int8 band."""
    rng = np.random.default_rng(seed)
    scale = parity.spread(reference)
    moved = reference + rng.normal(0, size * scale, reference.size)
    band = parity.TOLERANCES["int8"].margin * scale
    nearest = np.argsort(np.abs(reference - THRESHOLD))[:3]
    for i in nearest:
        if abs(reference[i] - THRESHOLD) < band * 0.9:
            side = 1.0 if reference[i] < THRESHOLD else -1.0
            moved[i] = THRESHOLD + side * 0.5 * band  # across, but inside the band
    return moved


@pytest.mark.parametrize("n", [40, 400, 2000])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_kernel_noise_does_not_change_an_int8_verdict(n, seed):
    reference, labels = keras_logits(n, seed)
    verdicts = set()
    for noise_seed in range(5):
        report = parity.compare("int8", reference, kernel_noise(reference, noise_seed), labels, THRESHOLD)
        assert report["passed"], report["failures"]
        assert report["decided_flips"] == 0
        verdicts.add((report["passed"], report["vouched"]))
    assert len(verdicts) == 1, verdicts  # the same verdict whichever CPU's noise it was


def test_near_threshold_flips_are_reported_not_counted():
    reference, labels = keras_logits(400, seed=5)
    reference[:4] = THRESHOLD + np.array([-0.02, -0.01, 0.01, 0.02])  # four images right at the threshold
    moved = reference.copy()
    moved[:4] = THRESHOLD - (reference[:4] - THRESHOLD)  # all four flip
    report = parity.compare("cpu-int8", reference, moved, labels, THRESHOLD)
    assert report["passed"] and report["near_threshold_flips"] == 4 and report["decided_flips"] == 0
    assert report["agreement"] == pytest.approx(396 / 400)  # the raw number stays in the report


def test_one_flip_in_40_passes_but_40_images_cannot_vouch_for_98_percent():
    """The Zen 1 failure: one parity image of 40 flipped, far enough from the threshold."""
    reference, labels = keras_logits(40, seed=7)
    far = int(np.argmax(np.abs(reference - THRESHOLD)))
    moved = reference.copy()
    moved[far] = 2 * THRESHOLD - reference[far]
    report = parity.compare("int8", reference, moved, labels, THRESHOLD)
    assert report["decided_flips"] == 1
    assert report["passed"] and not report["vouched"]
    assert "needed to vouch" in report["not_vouched"][0]
    assert parity.images_to_vouch(0.98) == report["images_to_vouch"] == 189


def test_enough_agreeing_images_vouch():
    reference, labels = keras_logits(2000, seed=8)
    report = parity.compare("int8", reference, kernel_noise(reference, 0), labels, THRESHOLD)
    assert report["passed"] and report["vouched"], report.get("not_vouched")
    low, high = report["decided_agreement_95"]
    assert 0.98 <= low <= high <= 1.0


@pytest.mark.parametrize("n", [40, 400, 2000])
def test_a_broken_calibration_fails(n):
    """Activation ranges off: logits squashed and shifted, so decisions move far from the threshold."""
    reference, labels = keras_logits(n, seed=11)
    broken = 0.4 * reference + 1.2
    report = parity.compare("int8", reference, broken, labels, THRESHOLD)
    assert not report["passed"] and not report["vouched"]
    assert any("decision agreement" in f for f in report["failures"])


@pytest.mark.parametrize("n", [40, 400, 2000])
def test_a_wrong_float_conv_fails(n):
    """Int8 where the faint first-layer traces live: errors of half the logit spread."""
    reference, labels = keras_logits(n, seed=12)
    rng = np.random.default_rng(13)
    wrong = reference + rng.normal(0, 0.5 * parity.spread(reference), n)
    report = parity.compare("int8", reference, wrong, labels, THRESHOLD)
    assert not report["passed"], report


def test_an_auc_drop_beyond_its_error_fails():
    reference, labels = keras_logits(2000, seed=14)
    rng = np.random.default_rng(15)
    # The fakes' logits scrambled among themselves above the threshold: decisions hold, ranking does not.
    worse = reference.copy()
    worse[labels == 0] += rng.normal(0, 1.5, int((labels == 0).sum()))
    report = parity.compare("fp32", reference, reference + 0.0, labels, THRESHOLD)
    assert report["passed"] and report["vouched"] and report["auc_drop_se"] == pytest.approx(0.0, abs=1e-12)
    report = parity.compare("int8", reference, worse, labels, THRESHOLD)
    assert any("AUC drop" in f for f in report["failures"]), report["failures"]


def test_fp32_is_vouched_by_its_bound_and_fails_beyond_it():
    reference, labels = keras_logits(40, seed=16)
    ok = parity.compare("fp32", reference, reference + 5e-5, labels, THRESHOLD)
    assert ok["passed"] and ok["vouched"]
    off = parity.compare("fp32", reference, reference + 1e-3, labels, THRESHOLD)
    assert not off["passed"] and "max |logit difference|" in off["failures"][0]


def test_paired_auc_se_matches_a_bootstrap():
    reference, labels = keras_logits(600, seed=17)
    other = reference + np.random.default_rng(18).normal(0, 0.8, reference.size)
    se = parity.paired_auc_se(labels, reference, other)
    from dfx import metrics

    rng = np.random.default_rng(19)
    drops = []
    for _ in range(300):
        pick = rng.integers(0, reference.size, reference.size)
        drops.append(metrics.auc(labels[pick], reference[pick]) - metrics.auc(labels[pick], other[pick]))
    assert se == pytest.approx(float(np.std(drops)), rel=0.25)
