"""TensorRT engines from the fp16 and int8 ONNX (GPU hosts): built, recorded, and judged by
the same parity checker as the CPU forms. Skips with the reason elsewhere."""

from __future__ import annotations

import json
import shutil

import pytest

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu_ready():
    from conftest import has_gpu

    ok, reason = has_gpu()
    if not ok:
        pytest.skip(f"no usable GPU: {reason}")
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install 'dfx[trt]')")
    return reason


@pytest.mark.parametrize("lean", [False, True], ids=["full", "lean"])
def test_engines_build_and_pass_parity(gpu_ready, exported_bundle, tmp_path, lean):
    from _fixtures_export import FIXTURE_CALIB_COUNT, FIXTURE_CALIB_METHOD

    from dfx.bundle import Bundle
    from dfx.export.pipeline import TIMING_CACHE, ExportConfig, export_bundle

    copy = shutil.copytree(exported_bundle, tmp_path / "bundle")
    config = ExportConfig(fp16=True, int8=True, engine=True, lean=lean, max_batch=16,
                          calib_count=FIXTURE_CALIB_COUNT, calib_method=FIXTURE_CALIB_METHOD)
    report = export_bundle(copy, config, log=print)
    bundle = Bundle.open(copy)  # verifies every sha256, engines included
    engines = bundle.manifest["engines"]
    assert {e["precision"] for e in engines} == {"fp16", "int8"}
    for entry in engines:
        assert entry["lean"] is lean and entry["max_batch"] == 16
        assert entry["compute_capability"].count(".") == 1
        assert bundle.manifest["files"][entry["file"]]["role"] == "engine"
        assert entry["file"].startswith("engines/") and entry["trt_version"] in entry["file"]
    assert bundle.has(TIMING_CACHE)
    prefix = "trt-lean" if lean else "trt"
    for precision in ("fp16", "int8"):
        form = report["forms"][f"{prefix}-{precision}"]
        assert form["passed"], form
    assert json.loads((copy / "parity.json").read_text())["passed"]
