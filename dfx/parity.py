"""Parity of an optimized model form against the original Keras model (numpy only).

The tolerances live here, in one place; export, tests and the GPU checks all use `compare`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dfx import metrics
from dfx.errors import DfxError


@dataclass(frozen=True)
class Tolerance:
    max_abs: float | None = None  # largest allowed |logit - keras logit|
    min_agreement: float = 1.0  # share of images whose decision matches Keras at the threshold
    max_auc_drop: float | None = None  # Keras AUC minus this form's AUC


TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_abs=1e-4, min_agreement=1.0),
    "fp16": Tolerance(min_agreement=0.995),
    # bf16 keeps 8 mantissa bits (fp16 keeps 11): held to fp16's decision bar, not looser.
    "bf16": Tolerance(min_agreement=0.995),
    "int8": Tolerance(min_agreement=0.98, max_auc_drop=0.01),
}


def precision_of(form: str) -> str:
    """The precision a form name ends with: "int8" for "int8", "cpu-int8" or "trt-int8"."""
    return form.rsplit("-", 1)[-1]


class ParityError(DfxError):
    """A model form misses its tolerance. Carries the measured report."""

    def __init__(self, form: str, report: dict, hint: str | None = None):
        super().__init__(f"{form}: " + "; ".join(report["failures"]), hint=hint)
        self.form = form
        self.report = report


def compare(form: str, reference: np.ndarray, logits: np.ndarray, labels: np.ndarray | None, threshold: float) -> dict:
    """Compare one form's logits with the Keras reference logits on the same images.

    `form` picks the tolerance by its precision: "fp32", "fp16", "int8", or e.g. "trt-int8".
    Returns a JSON-ready dict with `passed` and a list of `failures` (empty when it passed).
    """
    reference = np.asarray(reference, np.float64).ravel()
    logits = np.asarray(logits, np.float64).ravel()
    if reference.shape != logits.shape:
        raise ValueError(f"{form}: {logits.size} logits for {reference.size} reference logits")
    tol = TOLERANCES.get(precision_of(form), TOLERANCES["fp32"])
    diff = np.abs(logits - reference)
    agreement = float(np.mean((logits >= threshold) == (reference >= threshold)))
    report: dict = {
        "form": form,
        "images": int(reference.size),
        "max_abs_diff": float(diff.max(initial=0.0)),
        "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
        "agreement": agreement,
        "threshold": float(threshold),
        "tolerance": {k: v for k, v in tol.__dict__.items() if v is not None},
    }
    if labels is not None and len(set(np.asarray(labels).tolist())) == 2:
        report["auc"] = metrics.auc(labels, logits)
        report["auc_keras"] = metrics.auc(labels, reference)
        report["auc_drop"] = report["auc_keras"] - report["auc"]
        report["best_threshold"] = metrics.threshold_balanced_accuracy(labels, logits)
    failures = []
    if tol.max_abs is not None and report["max_abs_diff"] > tol.max_abs:
        failures.append(f"max |logit difference| {report['max_abs_diff']:.3g} > {tol.max_abs:g}")
    if agreement < tol.min_agreement:
        failures.append(f"decision agreement {agreement:.2%} < {tol.min_agreement:.1%}")
    if tol.max_auc_drop is not None and report.get("auc_drop", 0.0) > tol.max_auc_drop:
        failures.append(f"AUC drop {report['auc_drop']:.4f} > {tol.max_auc_drop}")
    report["failures"] = failures
    report["passed"] = not failures
    return report
