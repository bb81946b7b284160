"""Keras -> ONNX: names, dynamic batch, manifest record, optimum-style validation."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def test_onnx_io_names_and_dynamic_batch(exported_bundle):
    model = onnx.load(str(exported_bundle / "model.onnx"))
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "images" and out.name == "logits"
    in_dims = inp.type.tensor_type.shape.dim
    assert in_dims[0].dim_param == "batch"
    assert [d.dim_value for d in in_dims[1:]] == [64, 64, 3]  # NHWC, as the bundle says
    assert out.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_manifest_records_route_opset_tools_and_validation(exported_bundle):
    from dfx.bundle import Bundle

    bundle = Bundle.open(exported_bundle)  # verifies every sha256
    entry = bundle.manifest["files"]["model.onnx"]
    assert entry["role"] == "onnx-fp32"
    assert entry["route"] == "tf2onnx.convert.from_keras"
    assert entry["opset"] == 17
    assert {"tensorflow", "tf2onnx", "onnx"} <= set(entry["tools"])
    validation = entry["validation"]
    assert validation["against"] == "keras"
    assert 0 <= validation["max_abs_diff"] <= 1e-4
    assert "noise" not in validation["source"]  # real images from the bundle's data, not noise


def test_onnx_matches_keras_at_any_batch_size(exported_bundle):
    from dfx.runtime.runners.keras import KerasRunner
    from dfx.runtime.runners.ort import OrtRunner

    batch = np.random.default_rng(3).integers(0, 256, size=(5, 64, 64, 3), dtype=np.uint8)
    with KerasRunner(str(exported_bundle / "model.keras")) as keras_runner, OrtRunner(exported_bundle / "model.onnx") as ort:
        for n in (1, 5):
            np.testing.assert_allclose(ort.infer(batch[:n]), keras_runner.infer(batch[:n]), atol=1e-4)


def test_validation_error_carries_the_difference():
    from dfx.errors import DfxError
    from dfx.export.onnx_export import ValidationError, validate

    ref = np.array([0.5, -1.0, 2.0])
    assert validate("x", ref, ref + 1e-6, 1e-4, "test images") == pytest.approx(1e-6)
    with pytest.raises(ValidationError) as info:
        validate("ONNX fp32", ref, ref + np.array([0, 0.25, 0]), 1e-4, "test images")
    assert isinstance(info.value, DfxError)
    assert info.value.max_abs_diff == pytest.approx(0.25)
    assert info.value.tolerance == 1e-4
    assert "0.25" in str(info.value)
    with pytest.raises(ValidationError):  # NaN never passes
        validate("x", ref, ref * np.nan, 1e-4, "test images")


def test_fp16_model_has_float32_io_and_float16_weights(exported_bundle):
    model = onnx.load(str(exported_bundle / "model.fp16.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    kinds = {t.data_type for t in model.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in kinds and onnx.TensorProto.FLOAT not in kinds
    assert (exported_bundle / "model.fp16.onnx").stat().st_size < 0.6 * (exported_bundle / "model.onnx").stat().st_size


def test_export_without_data_validates_on_noise_and_says_so(trained_bundle, tmp_path):
    """The bundle's data is gone: the export still validates (on deterministic noise), says so
    in the log and in the manifest, instead of skipping the check."""
    from dfx.bundle import Bundle
    from dfx.export.pipeline import ExportConfig, export_bundle

    copy = shutil.copytree(trained_bundle, tmp_path / "bundle")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["data"]["root"] = str(tmp_path / "moved-away")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    messages: list[str] = []
    report = export_bundle(copy, ExportConfig(), log=messages.append)
    assert any("noise" in m and "not on this machine" in m for m in messages)
    entry = Bundle.open(copy).manifest["files"]["model.onnx"]
    assert "noise" in entry["validation"]["source"]
    assert entry["validation"]["max_abs_diff"] <= 1e-4
    assert report["labels"] is False and report["forms"]["fp32"]["passed"]
