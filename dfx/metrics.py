"""Detection metrics in numpy only (labels: 1 = fake = positive; scores: higher = more fake).

The seed's metrics (accuracy, precision, recall, F1, specificity, AUC-ROC) plus average
precision, equal error rate, TPR at 1% FPR and the confusion matrix. Scores may be logits
or probabilities: every metric here is rank-based or thresholded on the same scale.
"""

from __future__ import annotations

import numpy as np


def _arrays(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length ({y.size} vs {s.size})")
    return y, s


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), thresholds descending; a score >= threshold is positive.

    The first point is (0, 0) at threshold +inf, as in scikit-learn.
    """
    y, s = _arrays(labels, scores)
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], y.size - 1]  # last index of each tied score
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    pos, neg = max(int(y.sum()), 1), max(int(y.size - y.sum()), 1)
    tpr = np.r_[0.0, tps / pos]
    fpr = np.r_[0.0, fps / neg]
    thresholds = np.r_[np.inf, s[distinct]]
    return fpr, tpr, thresholds


def auc(labels, scores) -> float:
    """Area under the ROC curve (ties count one half). NaN when one class is missing."""
    y, s = _arrays(labels, scores)
    if y.size == 0 or y.min() == y.max():  # one class only
        return float("nan")
    fpr, tpr, _ = roc_curve(y, s)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))  # trapezoid rule


def average_precision(labels, scores) -> float:
    """Step-wise area under precision-recall (scikit-learn's definition)."""
    y, s = _arrays(labels, scores)
    if y.sum() == 0:
        return float("nan")
    fpr, tpr, _ = roc_curve(y, s)
    pos, neg = y.sum(), y.size - y.sum()
    tps, fps = tpr[1:] * pos, fpr[1:] * neg
    precision = tps / np.maximum(tps + fps, 1)
    recall = tpr[1:]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def equal_error_rate(labels, scores) -> float:
    """The rate where false positives equal false negatives (interpolated on the ROC)."""
    y, s = _arrays(labels, scores)
    if y.size == 0 or y.min() == y.max():  # one class only
        return float("nan")
    fpr, tpr, _ = roc_curve(y, s)
    fnr = 1 - tpr
    i = int(np.argmax(fnr <= fpr))  # first point where the curves have crossed
    if i == 0:
        return float(fpr[0])
    # interpolate between point i-1 (fnr > fpr) and i (fnr <= fpr)
    d0, d1 = fnr[i - 1] - fpr[i - 1], fnr[i] - fpr[i]
    t = d0 / (d0 - d1) if d0 != d1 else 0.0
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def tpr_at_fpr(labels, scores, max_fpr: float = 0.01) -> float:
    """Highest TPR among thresholds whose FPR stays at or below `max_fpr`."""
    y, s = _arrays(labels, scores)
    if y.size == 0 or y.min() == y.max():  # one class only
        return float("nan")
    fpr, tpr, _ = roc_curve(y, s)
    return float(tpr[fpr <= max_fpr + 1e-12].max())


def confusion(labels, scores, threshold: float) -> dict[str, int]:
    """Counts at `threshold` (score >= threshold means fake)."""
    y, s = _arrays(labels, scores)
    pred = s >= threshold
    return {
        "tp": int(np.sum(pred & (y == 1))),
        "fp": int(np.sum(pred & (y == 0))),
        "tn": int(np.sum(~pred & (y == 0))),
        "fn": int(np.sum(~pred & (y == 1))),
    }


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 0.0


def summarize(labels, scores, threshold: float) -> dict:
    """Every metric at once, as plain floats and ints for JSON."""
    y, s = _arrays(labels, scores)
    c = confusion(y, s, threshold)
    precision = _ratio(c["tp"], c["tp"] + c["fp"])
    recall = _ratio(c["tp"], c["tp"] + c["fn"])
    return {
        "images": int(y.size),
        "accuracy": _ratio(c["tp"] + c["tn"], y.size),
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "specificity": _ratio(c["tn"], c["tn"] + c["fp"]),
        "balanced_accuracy": (recall + _ratio(c["tn"], c["tn"] + c["fp"])) / 2,
        "auc": auc(y, s),
        "average_precision": average_precision(y, s),
        "eer": equal_error_rate(y, s),
        "tpr_at_1pct_fpr": tpr_at_fpr(y, s, 0.01),
        "threshold": float(threshold),
        "confusion": c,
    }


def per_group(labels, scores, groups, threshold: float) -> dict[str, dict]:
    """Metrics per generator/source. A group holds one class, so each is scored against all
    images of the other class (AUC of "this generator vs all real", and vice versa)."""
    y, s = _arrays(labels, scores)
    g = np.asarray(groups)
    out = {}
    for name in sorted(set(g.tolist())):
        members = g == name
        label = int(y[members][0])
        others = y != label
        keep = members | others
        report = summarize(y[keep], s[keep], threshold)
        # Within the group alone, accuracy is the detection rate (fake) or specificity (real).
        pred = s[members] >= threshold
        report["group_label"] = ("real", "fake")[int(label)]  # dfx.datasets.LABELS (metrics stays numpy-only)
        report["group_images"] = int(members.sum())
        report["group_accuracy"] = float(np.mean(pred == bool(label)))
        out[str(name)] = report
    return out


def threshold_balanced_accuracy(labels, scores) -> float:
    """The threshold with the best balanced accuracy (midpoint between neighbouring scores)."""
    y, s = _arrays(labels, scores)
    fpr, tpr, thresholds = roc_curve(y, s)
    best = int(np.argmax(tpr - fpr))  # Youden's J = 2 * balanced accuracy - 1
    return _midpoint(s, thresholds, best)


def threshold_at_fpr(labels, scores, target_fpr: float) -> float:
    """The lowest threshold whose false-positive rate on real images stays <= target_fpr."""
    y, s = _arrays(labels, scores)
    return threshold_for_flag_rate(s[y == 0], target_fpr, others=s[y == 1])


def threshold_for_flag_rate(real_scores, rate: float, others=()) -> float:
    """The lowest threshold that flags (score >= threshold) at most `rate` of these real images'
    scores: one class is enough (a team's own users' photos). Halfway between the highest real
    score left unflagged and the next higher score of any image (real, or `others`: the fakes of
    a labelled set), like _midpoint, so that tiny differences between model forms do not move an
    image across it."""
    real = np.sort(np.asarray(real_scores, np.float64))[::-1]
    if not real.size:
        raise ValueError("no scores")
    every = np.concatenate([real, np.asarray(others, np.float64).ravel()])
    allowed = int(np.floor(rate * real.size + 1e-9))  # real images that may be flagged
    if allowed >= real.size:
        return float(every.min() - 1.0)
    kept = real[allowed]  # the highest real score that must stay below the threshold
    higher = every[every > kept]
    return float((kept + higher.min()) / 2) if higher.size else float(kept + 1.0)


def _midpoint(scores: np.ndarray, thresholds: np.ndarray, index: int) -> float:
    """A threshold between the chosen score and the next lower one, so that small numeric
    differences between model forms do not flip decisions sitting exactly on it."""
    chosen = thresholds[index]
    if not np.isfinite(chosen):
        return float(scores.max() + 1.0)
    lower = scores[scores < chosen]
    return float((chosen + lower.max()) / 2) if lower.size else float(chosen - 1.0)


def fit_platt(labels, logits, iterations: int = 50) -> tuple[float, float]:
    """(scale, offset) so that sigmoid(scale * logit + offset) is a calibrated P(fake): Platt
    scaling, fitted by Newton's method on the binary cross-entropy (a tiny ridge keeps it finite
    when the classes separate perfectly)."""
    y, z = _arrays(labels, logits)
    if y.size == 0 or y.min() == y.max():
        return 1.0, 0.0
    a, b = 1.0, 0.0
    ridge = 1e-3
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(a * z + b, -50, 50)))
        w = p * (1 - p)
        g = np.array([np.sum((p - y) * z) + ridge * (a - 1.0), np.sum(p - y)])
        h = np.array([[np.sum(w * z * z) + ridge, np.sum(w * z)], [np.sum(w * z), np.sum(w) + ridge]])
        step = np.linalg.solve(h, g)
        a, b = a - step[0], b - step[1]
        if np.max(np.abs(step)) < 1e-8:
            break
    return float(a), float(b)


def expected_calibration_error(labels, probabilities, bins: int = 10) -> float:
    """Mean |accuracy - confidence| over equal-width probability bins, weighted by bin size
    (for P(fake): the share of fakes in each bin against the mean predicted probability)."""
    y, p = _arrays(labels, probabilities)
    if y.size == 0:
        return float("nan")
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            total += members.sum() * abs(y[members].mean() - p[members].mean())
    return float(total / y.size)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a rate (better than the normal one near 0 and 1)."""
    if n == 0:
        return float("nan"), float("nan")
    phat = successes / n
    denom = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * np.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))
