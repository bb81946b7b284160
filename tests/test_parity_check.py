"""Parity at serving time (`dfx scan --check-parity`, `Detector.load(check_parity=True)`): the
backend chosen on this machine against the Keras logits the bundle carries."""

from __future__ import annotations

import json

import pytest

from dfx import parity
from dfx.bundle import Bundle
from dfx.runtime.scan import parity_check
from dfx.runtime.scan.select import choose_runner


def test_the_bundle_carries_a_parity_sample_and_ort_passes_it(exported_bundle):
    bundle = Bundle.open(exported_bundle)
    runner, _ = choose_runner(bundle, "ort-cpu", "int8")
    report = parity_check.check(bundle, runner)
    assert report["passed"] and report["images"] >= 8 and report["form"] == "ort-cpu-int8"
    assert report["cpu"]


def test_a_form_that_misses_its_tolerance_is_refused(exported_bundle, monkeypatch):
    bundle = Bundle.open(exported_bundle)
    runner, _ = choose_runner(bundle, "ort-cpu", "int8")
    monkeypatch.setitem(parity.TOLERANCES, "int8", parity.Tolerance(max_abs=1e-9, min_agreement=1.0))
    with pytest.raises(parity_check.ParityCheckError, match="misses its parity tolerance"):
        parity_check.require_parity(bundle, runner)


def test_scan_check_parity_says_what_it_measured(exported_bundle, synth_data, tmp_path, capsys):
    from dfx.cli import main

    out = tmp_path / "rows.jsonl"
    code = main(["scan", str(exported_bundle), str(synth_data / "fake" / "tconv"), "--out", str(out), "--backend", "ort-cpu", "--check-parity"])
    assert code == 0, capsys.readouterr().err
    assert "parity on this machine: ort-cpu-" in capsys.readouterr().err
    assert len(out.read_text().splitlines()) == 100


def test_a_bundle_without_a_sample_cannot_be_checked(exported_bundle, tmp_path):
    import shutil

    copy = shutil.copytree(exported_bundle, tmp_path / "old")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"] = {k: v for k, v in manifest["files"].items() if v.get("role") != "parity-sample"}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    bundle = Bundle.open(copy, verify=False)
    runner, _ = choose_runner(bundle, "ort-cpu", "fp32")
    with pytest.raises(parity_check.ParityCheckError, match="no parity sample"):
        parity_check.check(bundle, runner)
