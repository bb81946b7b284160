"""Accuracy parity: every form this machine runs, against Keras, at the named tolerances."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def parity(exported_bundle) -> dict:
    return json.loads((exported_bundle / "parity.json").read_text())


def test_parity_report_covers_every_onnx_form(parity, exported_bundle):
    from dfx.bundle import Bundle

    from dfx.runtime.runners import openvino

    onnx_runtime_forms = {"fp32", "fp16", "int8", "cpu-int8"}
    openvino_forms = {"openvino-fp32", "openvino-int8"} | ({"openvino-bf16"} if openvino.bf16_status()[0] else set())
    assert set(parity["forms"]) == onnx_runtime_forms | (openvino_forms if openvino.available() else set())
    assert parity["labels"] is True and parity["images"] >= 40
    assert parity["classes"]["real"] > 0 and parity["classes"]["fake"] > 0
    bundle = Bundle.open(exported_bundle)
    assert parity["threshold"] == pytest.approx(bundle.threshold)
    assert bundle.files_with_role("parity-report") == ["parity.json"]
    for entry in parity["forms"].values():
        for key in ("max_abs_diff", "mean_abs_diff", "agreement", "auc", "auc_keras", "best_threshold"):
            assert key in entry


def test_fp32_parity(parity):
    fp32 = parity["forms"]["fp32"]
    assert fp32["max_abs_diff"] <= 1e-4
    assert fp32["decided_flips"] == 0  # only logits within 1e-4 of the threshold may flip
    assert fp32["passed"] and fp32["vouched"]  # fp32 is vouched by its bound, on any sample


def test_fp16_parity(parity):
    fp16 = parity["forms"]["fp16"]
    assert fp16["tolerance"]["min_agreement"] == 0.995
    assert fp16["decided_agreement_95"][1] >= 0.995  # the sample does not show it below the bar
    assert fp16["passed"]
    # What the sample can and cannot vouch for is written down, not guessed.
    assert fp16["vouched"] == (fp16["decided_agreement_95"][0] >= 0.995)
    assert fp16["vouched"] or "needed to vouch" in " ".join(fp16["not_vouched"])


@pytest.mark.parametrize("form", ["int8", "cpu-int8"])
def test_int8_parity(parity, form):
    int8 = parity["forms"][form]
    assert int8["decided_agreement_95"][1] >= 0.98
    assert int8["auc_drop"] - 1.96 * int8["auc_drop_se"] <= 0.01
    assert int8["tolerance"]["min_agreement"] == 0.98 and int8["tolerance"]["margin"] == 0.05  # judged as int8
    assert int8["images"] == int8["decided_images"] + int8["near_threshold_images"]
    assert int8["passed"]
    assert parity["passed"]


def test_cli_exit_codes_and_engine_without_gpu(exported_bundle, tmp_path, capsys):
    """`dfx export --fp16 --engine` here: the ONNX files and parity.json are written and
    recorded first, then it fails with a clear message (exit 2), never a crash."""
    from conftest import has_gpu

    from dfx.bundle import Bundle
    from dfx.cli import main

    gpu, reason = has_gpu()
    if gpu:
        pytest.skip("this host has a GPU; test_trt_build covers --engine there")
    copy = shutil.copytree(exported_bundle, tmp_path / "bundle")
    stale = Bundle.open(copy)
    stale.remove_file("parity.json")  # so we see it written again before the engine step
    stale.save()
    code = main(["export", str(copy), "--fp16", "--engine"])
    err = capsys.readouterr().err
    assert code == 2
    assert "GPU" in err and "hint" in err
    bundle = Bundle.open(copy)
    assert bundle.has("model.onnx") and bundle.has("model.fp16.onnx") and bundle.has("parity.json")
    assert not bundle.manifest.get("engines")


def test_compare_flags_a_form_that_misses(parity):
    """The failing path the CLI reports: which form, by how much, what to try."""
    import numpy as np

    from dfx.export import parity_report
    from dfx.parity import compare

    reference = np.linspace(-3, 3, 100)
    bad = compare("int8", reference, -reference, (reference > 0).astype(int), 0.0)
    report = {"forms": {"int8": {**bad, "hint": parity_report.hint_for("int8")}}}
    (line,) = parity_report.failures(report)
    assert line.startswith("int8: decision agreement") and "--calib-method" in line
    assert "| int8 |" in parity_report.markdown_table(report)

