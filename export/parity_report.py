"""parity.json: every exported form against the original Keras model, on the same images.

Each form runs through a Runner (the same contract serving uses), the Keras model through
KerasRunner, and dfx.parity.compare applies the named tolerances. The report carries, per
form: max and mean |logit difference|, decision agreement at the bundle threshold, AUC of the
form and of Keras, the form's own best threshold, and what to try when it fails.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from dfx import parity
from dfx.runtime.runners.base import Runner, run_batches

HINTS = {
    "fp32": "the ONNX conversion is not faithful: try another --opset, and report it with the model",
    "fp16": "the model overflows or underflows float16 somewhere: serve the fp32 or int8 form instead",
    "bf16": "bfloat16 keeps 8 mantissa bits, so logits near the threshold flip: this form is only measured, not "
    "required; `auto` does not choose bf16 unless it passes, and fp32 and int8 stay available",
    "int8": "try another --calib-method (entropy, percentile, minmax), more calibration images "
    "(--calib-count 1024, or --calib DATA closer to what you scan), or keep more leading "
    "convolutions float (--int8-float-convs N; calibration.json lists what each choice measured; "
    "a transformer's float blocks are chosen there by the same measurement)",
}


def hint_for(form: str) -> str:
    return HINTS.get(parity.precision_of(form), HINTS["fp32"])


def measure(
    reference: np.ndarray,
    forms: dict[str, Callable[[], Runner]],
    images: np.ndarray,
    labels: np.ndarray | None,
    threshold: float,
    batch_size: int = 32,
    log: Callable[[str], None] = lambda _: None,
    tokens: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict[str, dict]:
    """Run each form on `images` and compare with the Keras `reference` logits (and, for the
    forms `tokens` names, their blocks' tokens with the Keras tower's: dfx.parity.compare)."""
    results: dict[str, dict] = {}
    for name, make in forms.items():
        start = time.perf_counter()
        with make() as runner:
            logits = run_batches(runner, images, batch_size)
        entry = parity.compare(name, reference, logits, labels, threshold, tokens=(tokens or {}).get(name))
        entry["backend"] = runner.backend
        entry["seconds"] = round(time.perf_counter() - start, 2)
        if not entry["passed"]:
            entry["hint"] = hint_for(name)
        log(f"  {format_row(entry)}")
        results[name] = entry
    return results


def hold_to_tokens_of(entry: dict, source: dict, source_name: str) -> None:
    """A form whose tokens this host cannot tap (OpenVINO, TensorRT) that runs the same file as
    `source` (an ONNX Runtime form), or an engine built from it, is held to the verdict on that
    file's tokens. Its own logits are still judged; its own tokens are not measured."""
    blocks = source.get("block_agreement")
    if blocks is None:
        return
    entry["block_agreement_of"] = source_name  # the tokens of this form's file, measured on ONNX Runtime
    if not blocks.get("passed", True):
        entry["failures"] = entry.get("failures", []) + [f"its file's {blocks['failure']} (measured as {source_name})"]
        entry["passed"] = entry["vouched"] = False
        entry.pop("not_vouched", None)
        entry.setdefault("hint", hint_for(entry["form"]))
    elif not blocks.get("vouched", True) and entry.get("passed"):
        entry["vouched"] = False
        entry["not_vouched"] = entry.get("not_vouched", []) + [f"its file's tokens are not vouched for ({source_name})"]


def format_row(entry: dict) -> str:
    auc = f"AUC {entry['auc']:.4f} (Keras {entry['auc_keras']:.4f})" if "auc" in entry else "AUC n/a"
    if not entry["passed"]:
        status = "FAIL: " + "; ".join(entry["failures"])
    else:
        status = "vouched" if entry.get("vouched") else "ok, not vouched: " + "; ".join(entry.get("not_vouched", []))
    near = entry.get("near_threshold_flips")
    blocks = entry.get("block_agreement")
    tokens = f"  tokens: worst block {blocks['worst_block']} cos {blocks['worst_mean_cosine']:.4f}" if blocks else ""
    return (
        f"{entry['form']:<14} max|d| {entry['max_abs_diff']:.2e}  mean|d| {entry['mean_abs_diff']:.2e}  "
        f"agree {entry['agreement']:.2%}{f' ({near} near-threshold flips)' if near else ''}  {auc}{tokens}  {status}"
    )


def markdown_table(report: dict) -> str:
    """The README's parity table."""
    lines = [
        "| form | backend | max abs diff | mean abs diff | agreement | AUC | Keras AUC | best threshold | passed | vouched |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in report["forms"].values():
        auc = f"{entry['auc']:.4f}" if "auc" in entry else "n/a"
        keras_auc = f"{entry['auc_keras']:.4f}" if "auc_keras" in entry else "n/a"
        best = f"{entry['best_threshold']:.3f}" if "best_threshold" in entry else "n/a"
        vouched = "yes" if entry.get("vouched") else "no"
        lines.append(
            f"| {entry['form']} | {entry.get('backend', '')} | {entry['max_abs_diff']:.2e} | {entry['mean_abs_diff']:.2e} "
            f"| {entry['agreement']:.2%} | {auc} | {keras_auc} | {best} | {'yes' if entry['passed'] else 'NO'} | {vouched} |"
        )
    return "\n".join(lines)


# Forms measured because this host can run them, without being asked for: a miss means
# "not vouched" (choose_runner's `auto` then never picks them), not a failed export.
OPTIONAL_FORMS = ("openvino-bf16",)


def required_passed(forms: dict[str, dict]) -> bool:
    return all(entry["passed"] for name, entry in forms.items() if name not in OPTIONAL_FORMS)


def failures(report: dict) -> list[str]:
    """One line per failing required form: which, by how much, what to try."""
    lines = []
    for name, entry in report["forms"].items():
        if not entry["passed"] and name not in OPTIONAL_FORMS:
            lines.append(f"{name}: {'; '.join(entry['failures'])} -> {entry.get('hint', hint_for(name))}")
    return lines
