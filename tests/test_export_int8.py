"""INT8: symmetric Q/DQ for TensorRT, its uint8 CPU twin from the same ranges, calibration
report, cache, and real entropy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def _skewed_model(path: Path) -> None:
    """x (N, 64) -> MatMul(identity) -> y: the calibrated tensors carry x's distribution."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.eye(64, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "skewed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])],
        [weight],
    )
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _calibrate_skewed(tmp_path: Path, method: str, **options) -> dict[str, list[float]]:
    from onnxruntime.quantization.calibrate import create_calibrator  # noqa: F401 (ORT present)

    from dfx.export import int8

    model = tmp_path / "skewed.onnx"
    _skewed_model(model)
    rng = np.random.default_rng(0)
    # A ReLU-like, heavy-tailed activation: most values small, a few large outliers.
    data = rng.exponential(1.0, size=(256, 64)).astype(np.float32)
    data[rng.random(data.shape) < 0.001] *= 40.0
    reader_images = data  # ArrayReader feeds any float array; shape (N, 64) here

    class Reader(int8.ArrayReader):
        def _batches(self):
            for start in range(0, len(self.images), self.batch_size):
                yield {self.input_name: self.images[start : start + self.batch_size]}

    opts = int8.CalibrationOptions(method=method, **options)
    original = int8.ArrayReader
    int8.ArrayReader = Reader  # the same calibrate(), fed floats instead of uint8 pixels
    try:
        ranges = int8.calibrate(model, reader_images, opts)
    finally:
        int8.ArrayReader = original
    return int8.ranges_table(ranges)


def test_entropy_ranges_differ_from_minmax_on_skewed_activations(tmp_path):
    minmax = _calibrate_skewed(tmp_path, "minmax")
    entropy = _calibrate_skewed(tmp_path, "entropy")
    percentile = _calibrate_skewed(tmp_path, "percentile")
    top = max(minmax["x"])
    assert top > 40  # the outliers are in the data
    # Entropy clips the outliers: its range is far tighter than the full min/max.
    assert max(entropy["x"]) < 0.5 * top
    assert max(percentile["x"]) < top
    # The data is non-negative (a ReLU output): no method gives it a negative low end (the old
    # symmetric [-t, t]), so the uint8 twin spends all 256 levels on [0, t]; the symmetric file
    # widens the range to [-t, t] itself.
    for ranges in (minmax, entropy, percentile):
        assert 0.0 <= ranges["x"][0] <= 1e-3
    # The ORT pitfall this guards against: entropy with 128 bins searches nothing and
    # returns the full range, i.e. MinMax.
    pitfall = _calibrate_skewed(tmp_path, "entropy", num_bins=128)
    assert max(pitfall["x"]) == pytest.approx(top, rel=1e-3)


def test_int8_model_is_symmetric_per_channel_with_float_biases(exported_bundle):
    from onnx import TensorProto, numpy_helper

    model = onnx.load(str(exported_bundle / "model.int8.onnx"))
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq, "no Q/DQ nodes"
    for node in qdq:
        zero = inits[node.input[2]]
        assert zero.data_type == TensorProto.INT8
        assert not np.any(numpy_helper.to_array(zero))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 5
    # The leading convs read raw pixels / faint traces and stay float (chosen by measurement).
    selection = json.loads((exported_bundle / "calibration.json").read_text())["forms"]["int8"]["float_convs"]
    k = selection["float_convs"]
    assert 1 <= k < len(convs), selection  # the first stays float; most of the work is int8
    assert selection["trials"] and selection["trials"][-1]["float_convs"] == k
    for conv in convs[:k]:
        assert conv.input[1] in inits and inits[conv.input[1]].data_type == TensorProto.FLOAT
    for conv in convs[k:]:
        weight_dq = producers[conv.input[1]]
        assert weight_dq.op_type == "DequantizeLinear"
        scale = numpy_helper.to_array(inits[weight_dq.input[1]])
        assert scale.ndim == 1 and scale.size > 1  # one scale per output channel
        if len(conv.input) > 2:  # the bias stays a float initializer, not a DequantizeLinear
            assert conv.input[2] in inits and inits[conv.input[2]].data_type == TensorProto.FLOAT


def test_calibration_report_balanced_and_complete(exported_bundle):
    from _fixtures_export import FIXTURE_CALIB_COUNT, FIXTURE_CALIB_METHOD

    from dfx.bundle import Bundle

    report = json.loads((exported_bundle / "calibration.json").read_text())
    assert report["method"] == FIXTURE_CALIB_METHOD
    assert report["images"] == FIXTURE_CALIB_COUNT == len(report["files"])
    groups = report["per_class_and_group"]
    assert sum(groups["real"].values()) == sum(groups["fake"].values()) == FIXTURE_CALIB_COUNT // 2
    # Stratified across generators and sources: equal shares of each.
    assert len(set(groups["fake"].values())) == 1 and len(groups["fake"]) == 2
    assert len(set(groups["real"].values())) == 1 and len(groups["real"]) == 2
    # A range for every activation the Q/DQ model quantizes.
    model = onnx.load(str(exported_bundle / "model.int8.onnx"))
    quantized = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    assert quantized and quantized <= set(report["ranges"])
    for low, high in report["ranges"].values():
        assert low <= high
    bundle = Bundle.open(exported_bundle)
    assert bundle.files_with_role("calibration-report") == ["calibration.json"]
    assert bundle.manifest["files"]["model.int8.onnx"]["role"] == "onnx-int8"
    assert bundle.manifest["files"]["model.int8.onnx"]["biases"] == "float"


def test_calibration_cache_skips_the_images(exported_bundle, tmp_path, monkeypatch):
    """A rebuild with the same model, images and method reuses the ranges without reading
    a single image (the images are deleted first to prove it)."""
    from _fixtures_export import FIXTURE_CALIB_COUNT, FIXTURE_CALIB_METHOD

    from dfx.export.pipeline import ExportConfig, export_bundle

    copy = shutil.copytree(exported_bundle, tmp_path / "bundle")
    first = json.loads((copy / "calibration.json").read_text())
    assert first["cache"]["hit"] is False
    messages: list[str] = []
    import dfx.export.data as export_data

    real_load = export_data.load

    def guarded_load(samples, *args, **kwargs):
        if kwargs.get("progress") == "calibration images":
            raise AssertionError("calibration images were decoded despite a matching cache")
        return real_load(samples, *args, **kwargs)

    monkeypatch.setattr(export_data, "load", guarded_load)
    export_bundle(copy, ExportConfig(int8=True, calib_count=FIXTURE_CALIB_COUNT, calib_method=FIXTURE_CALIB_METHOD), log=messages.append)
    second = json.loads((copy / "calibration.json").read_text())
    assert second["cache"]["hit"] is True
    assert second["ranges"] == first["ranges"]
    assert any("reusing" in m for m in messages)
    # The rebuilt models are the same quantized models (same scales, same float-conv choice).
    for form, name in (("int8", "model.int8.onnx"), ("cpu-int8", "model.int8.cpu.onnx")):
        assert second["forms"][form]["float_convs"]["float_convs"] == first["forms"][form]["float_convs"]["float_convs"]
        scales = [
            {t.name: t.raw_data for t in onnx.load(str(path)).graph.initializer if "scale" in t.name}
            for path in (copy / name, exported_bundle / name)
        ]
        assert scales[0] and scales[0] == scales[1]


def _activation_quantizers(path: Path) -> dict[str, tuple[float, int, int]]:
    """{quantized tensor: (scale, zero point, zero point's ONNX type)} of a Q/DQ file's
    QuantizeLinear nodes (activations; weights are stored already quantized)."""
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            scale = float(numpy_helper.to_array(inits[node.input[1]]))
            zero = inits[node.input[2]]
            found[node.input[0]] = (scale, int(numpy_helper.to_array(zero)), zero.data_type)
    return found


def test_cpu_twin_is_uint8_from_the_same_ranges(exported_bundle):
    """model.int8.cpu.onnx: uint8 activations with zero points, int8 per-channel weights, and
    every activation range the very one the symmetric TensorRT file widened to [-t, t]."""
    from onnx import TensorProto, numpy_helper

    from dfx.bundle import Bundle

    twin = _activation_quantizers(exported_bundle / "model.int8.cpu.onnx")
    symmetric = _activation_quantizers(exported_bundle / "model.int8.onnx")
    assert twin and all(dtype == TensorProto.UINT8 for _, _, dtype in twin.values())
    report = json.loads((exported_bundle / "calibration.json").read_text())
    thresholds = [max(-low, high) for low, high in report["ranges"].values()]  # each tensor's t

    def calibrated(t: float) -> bool:
        return any(abs(t - c) <= 0.01 * c + 1e-6 for c in thresholds)

    for name, (scale, zero, _) in twin.items():
        low, high = -zero * scale, (255 - zero) * scale  # the range the uint8 quantizer covers
        assert calibrated(max(-low, high)), name
    for name, (scale, _, _) in symmetric.items():
        assert calibrated(scale * 127), name  # the symmetric file: [-t, t] of the same ranges
    shared = set(twin) & set(symmetric)
    assert shared
    relu_outputs = [n for n in shared if twin[n][1] == 0]
    assert relu_outputs, "ReLU outputs should get zero point 0: all 256 levels on [0, t]"
    # Weights: int8, zero 0, one scale per output channel.
    model = onnx.load(str(exported_bundle / "model.int8.cpu.onnx"))
    inits = {t.name: t for t in model.graph.initializer}
    weight_dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                  and inits[n.input[0]].data_type == TensorProto.INT8]
    assert weight_dqs
    for node in weight_dqs:
        assert not np.any(numpy_helper.to_array(inits[node.input[2]]))
    selection = report["forms"]["cpu-int8"]["float_convs"]
    assert selection["trials"][0]["float_convs"] == 0  # the uint8 file tries quantizing every conv
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert sum(conv.input[1] in inits for conv in convs) == selection["float_convs"]  # float weights: float convs
    entry = Bundle.open(exported_bundle).manifest["files"]["model.int8.cpu.onnx"]
    assert entry["role"] == "onnx-cpu-int8" and entry["activations"].startswith("uint8")
