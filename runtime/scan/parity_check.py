"""Parity at serving time: the backend chosen on *this* machine against the Keras logits that
export stored in the bundle (`parity_sample.npz`: a few dozen parity images and their Keras
logits), under the tolerances of dfx.parity. So a backend/CPU combination that export never saw
(OpenVINO picking bf16 on an AMX host, say) cannot silently serve different answers.
"""

from __future__ import annotations

import numpy as np

from dfx import parity
from dfx.bundle import Bundle
from dfx.errors import DfxError
from dfx.runtime.runners.base import Runner, cpu_model, run_batches

SAMPLE_ROLE = "parity-sample"


class ParityCheckError(DfxError):
    """The chosen backend misses its tolerance on the bundle's parity sample, or cannot be checked."""


def check(bundle: Bundle, runner: Runner) -> dict:
    """Run the bundle's parity sample through `runner` (active or not) and compare with the
    stored Keras logits. Returns dfx.parity.compare's report (with `passed`)."""
    names = bundle.files_with_role(SAMPLE_ROLE)
    if not names:
        raise ParityCheckError("the bundle carries no parity sample, so this backend cannot be checked here",
                               hint="re-export it with this version of dfx (`dfx export BUNDLE`)")
    with np.load(bundle.file(names[0])) as sample:  # verified against the manifest's sha256
        images, reference = sample["images"], sample["keras_logits"]
        labels = sample["labels"] if "labels" in sample.files else None
    if runner.is_active:
        logits = run_batches(runner, images, 32)
    else:
        with runner:
            logits = run_batches(runner, images, 32)
    form = f"{runner.backend}-{runner.precision}"
    report = parity.compare(form, reference, logits, labels, bundle.threshold)
    report["cpu"] = cpu_model()
    return report


def require_parity(bundle: Bundle, runner: Runner) -> dict:
    """`check`, raising ParityCheckError with the measured failures when the form misses."""
    report = check(bundle, runner)
    if not report["passed"]:
        raise ParityCheckError(
            f"{report['form']} on this machine misses its parity tolerance on the bundle's {report['images']} "
            f"parity images: {'; '.join(report['failures'])}",
            hint="choose another --backend/--precision, or re-export the bundle on this kind of CPU",
        )
    return report
