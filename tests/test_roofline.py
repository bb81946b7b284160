"""The roofline's work count on small hand-computable ONNX graphs, and its arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the roofline reads ONNX graphs (pip install 'dfx[export]')")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from dfx.benchmarks import roofline  # noqa: E402


def _save(tmp_path, nodes, inputs, outputs, inits, name="g.onnx"):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path / name
    onnx.save(model, path)
    return path


def nhwc_conv_gemm(tmp_path, quantized: bool = False):
    """images [batch, 8, 8, 3] (dynamic batch, like tf2onnx) -> Transpose -> Conv 3x3 pad 1 to 4
    channels -> GlobalAveragePool -> Flatten -> Gemm to 2 outputs."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 2)).astype(np.float32), "fc_w"), numpy_helper.from_array(np.zeros(4, np.float32), "bias")]
    nodes = [helper.make_node("Transpose", ["images"], ["nchw"], perm=[0, 3, 1, 2])]
    if quantized:  # weights stored as int8 + a per-channel scale, as a Q/DQ export stores them
        inits += [
            numpy_helper.from_array(np.clip(np.round(w * 40), -127, 127).astype(np.int8), "w_q"),
            numpy_helper.from_array(np.full(4, 1 / 40, np.float32), "w_scale"),
            numpy_helper.from_array(np.zeros(4, np.int8), "w_zero"),
        ]
        nodes.append(helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], axis=0))
    else:
        inits.append(numpy_helper.from_array(w, "w"))
    nodes += [
        helper.make_node("Conv", ["nchw", "w", "bias"], ["conv"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("GlobalAveragePool", ["conv"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w"], ["logits"]),
    ]
    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 8, 8, 3])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])]
    return _save(tmp_path, nodes, inputs, outputs, inits, "q.onnx" if quantized else "f.onnx")


def test_conv_and_gemm_macs_by_hand(tmp_path):
    cost = roofline.graph_cost(nhwc_conv_gemm(tmp_path), (8, 8))
    # Conv: 8x8 outputs x 4 channels, each 3 (in) x 3 x 3 MACs; Gemm: 2 outputs x 4 inputs.
    assert cost.by_op == {"Conv": 8 * 8 * 4 * 27, "Gemm": 2 * 4}
    assert cost.macs == 6912 + 8 and cost.flops == 2 * cost.macs
    assert cost.weight_bytes == (4 * 27 + 4 * 2 + 4) * 4  # conv w, fc w, bias; float32
    assert cost.input_bytes == 8 * 8 * 3 * 4 and cost.output_bytes == 2 * 4
    # Per image at batch 4: a quarter of the weights + input + output.
    assert cost.min_bytes(4) == pytest.approx(cost.weight_bytes / 4 + 768 + 8)


def test_qdq_graph_counts_the_same_work_and_int8_bytes(tmp_path):
    fp32 = roofline.graph_cost(nhwc_conv_gemm(tmp_path), (8, 8))
    int8 = roofline.graph_cost(nhwc_conv_gemm(tmp_path, quantized=True), (8, 8))
    assert int8.macs == fp32.macs  # the conv's weight shape comes through DequantizeLinear
    # int8 conv weights (1 byte) + float scales (4 bytes) + int8 zero points, fc and bias in float32
    assert int8.weight_bytes == 4 * 27 + 4 * 4 + 4 + (4 * 2 + 4) * 4


def test_grouped_strided_conv_and_matmul(tmp_path):
    w = numpy_helper.from_array(np.ones((8, 2, 3, 3), np.float32), "w")  # 8 in, 8 out, 4 groups
    conv = [helper.make_node("Conv", ["x", "w"], ["y"], group=4, strides=[2, 2], kernel_shape=[3, 3])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 9, 9])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 4, 4])]
    cost = roofline.graph_cost(_save(tmp_path, conv, inputs, outputs, [w]))
    assert cost.by_op == {"Conv": 8 * 4 * 4 * (2 * 3 * 3)}  # (9 - 3) / 2 + 1 = 4 outputs a side; C_in / groups = 2

    m = numpy_helper.from_array(np.ones((10, 5), np.float32), "m")
    matmul = [helper.make_node("MatMul", ["a", "m"], ["b"])]
    inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 3, 10])]
    outputs = [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 3, 5])]
    cost = roofline.graph_cost(_save(tmp_path, matmul, inputs, outputs, [m], "mm.onnx"))
    assert cost.by_op == {"MatMul": 3 * 5 * 10}


def test_roof_arithmetic():
    cost = roofline.GraphCost(macs=500, weight_bytes=1000, input_bytes=100, output_bytes=0)
    rates = roofline.MachineRates(fp32_flops=1e4, int8_ops=4e4, bandwidth=10.0)
    # batch 10: 200 bytes per image, 1000 ops per image -> intensity 5 ops/byte -> memory roof 50 ops/s
    assert cost.intensity(10) == pytest.approx(5.0)
    assert roofline.attainable(cost, rates, "fp32", 10) == pytest.approx(50 / 1000)
    frac = roofline.fraction_of_roof(cost, rates, "fp32", 10, images_per_s=0.025)
    assert frac["roof_fraction"] == pytest.approx(0.5) and frac["bound"] == "memory"
    fast = roofline.MachineRates(fp32_flops=10.0, int8_ops=40.0, bandwidth=1e9)
    assert roofline.fraction_of_roof(cost, fast, "int8", 10, images_per_s=0.01)["bound"] == "compute"
    assert roofline.attainable(cost, fast, "int8", 10) == pytest.approx(40 / 1000)


def test_machine_rates_are_measured():
    pytest.importorskip("onnxruntime")
    rates = roofline.measure_machine(seconds=0.05)
    assert rates.fp32_flops > 1e8 and rates.int8_ops and rates.int8_ops > 1e8 and rates.bandwidth > 1e8
    assert set(rates.as_dict()) >= {"fp32_gflops", "int8_gops", "bandwidth_gb_s", "how"}


def test_best_of_keeps_each_highest_rate():
    a = roofline.MachineRates(fp32_flops=5.0, int8_ops=None, bandwidth=9.0, how={"fp32": "x"})
    b = roofline.MachineRates(fp32_flops=7.0, int8_ops=3.0, bandwidth=1.0)
    best = roofline.best_of(a, b)
    assert (best.fp32_flops, best.int8_ops, best.bandwidth) == (7.0, 3.0, 9.0)
    assert best.how["fp32"] == "x" and "best of 2" in best.how["repeats"]
