"""`dfx demo` end to end, small: every step runs through the real commands."""

import json

import pytest

from dfx.cli import main


@pytest.mark.slow
def test_demo_runs_every_step_and_refuses_a_foreign_folder(tmp_path, capsys):
    pytest.importorskip("tf2onnx", reason="the demo exports (pip install 'dfx[export]')")
    out = tmp_path / "demo"
    # 6 epochs: a 2-epoch model's logits crowd the threshold, and one flipped decision out of the
    # few dozen parity images would fail the INT8 bar
    assert main(["demo", "--out", str(out), "--n", "200", "--size", "32", "--epochs", "6"]) == 0
    bundle = json.loads((out / "bundle" / "manifest.json").read_text())
    assert {"model.keras", "model.onnx", "model.fp16.onnx", "model.int8.onnx", "model.int8.cpu.onnx"} <= set(bundle["files"])
    rows = [json.loads(line) for line in (out / "scan.jsonl").read_text().splitlines()]
    assert len(rows) == 200 and all(r["error"] in (None, "") for r in rows)
    assert "images/s" in capsys.readouterr().out  # the bench summary closes the demo

    # A second demo replaces its own folder, but never a folder it did not write.
    foreign = tmp_path / "mine"
    foreign.mkdir()
    assert main(["demo", "--out", str(foreign)]) == 2
    assert foreign.is_dir()
