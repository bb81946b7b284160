"""The limits: work per image from the ONNX graph, attainable rates from the machine.

Work. `graph_cost` walks the ONNX graph at the bundle's input size (batch 1) and counts the
multiply-accumulates (MACs) of every Conv / ConvInteger / QLinearConv / MatMul / MatMulInteger
/ QLinearMatMul / Gemm node; FLOPs (or int8 ops) = 2 x MACs. Pooling, ReLU, Q/DQ and the other
element-wise nodes are left out: on a CNN they are a few percent of the arithmetic.

Minimum bytes. Per image at batch B: the weights once per batch (B images share one read, as
stored: int8 weights count one byte each) + the model's input tensor + its output. This is a
floor: activations are assumed to stay in cache, which no real CNN achieves at 256 px, so the
real traffic is higher and the memory roof drawn from it is optimistic (an honest upper bound).

Rates. `measure_machine` times, for about a second each: a float32 GEMM (the faster of
numpy's BLAS and ONNX Runtime's MatMul, all cores), an int8 GEMM (ONNX Runtime's MatMulInteger, uint8 x int8 -> int32, the kernel family
its Q/DQ convolutions use) and a large numpy copy (read + write bytes / time). A backend's
attainable rate is min(peak compute, arithmetic intensity x bandwidth); the fraction printed
is what it reaches of that.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# op type -> (index of the data input, index of the weight input) for MAC counting
_CONV_OPS = {"Conv": (0, 1), "ConvInteger": (0, 1), "QLinearConv": (0, 3)}
_MATMUL_OPS = {"MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3), "Gemm": (0, 1)}


@dataclass(frozen=True)
class GraphCost:
    macs: int  # multiply-accumulates per image (Conv, MatMul, Gemm and their integer forms)
    weight_bytes: int  # all initializers, as stored (int8 weights: 1 byte each)
    input_bytes: int  # the model's input tensor per image, in its declared dtype
    output_bytes: int  # the model's outputs per image
    by_op: dict[str, int] = field(default_factory=dict)  # MACs per op type

    @property
    def flops(self) -> int:
        """Operations per image: 2 per MAC (a multiply and an add), for float and int8 alike."""
        return 2 * self.macs

    def min_bytes(self, batch: int) -> float:
        """Minimum bytes moved per image at this batch size (see the module docstring)."""
        return self.weight_bytes / max(batch, 1) + self.input_bytes + self.output_bytes

    def intensity(self, batch: int) -> float:
        """Operations per minimum byte at this batch size."""
        return self.flops / self.min_bytes(batch)

    def as_dict(self) -> dict[str, Any]:
        return {
            "macs_per_image": self.macs,
            "flops_per_image": self.flops,
            "weight_bytes": self.weight_bytes,
            "input_bytes_per_image": self.input_bytes,
            "output_bytes_per_image": self.output_bytes,
            "macs_by_op": dict(self.by_op),
        }


def graph_cost(onnx_path: str | os.PathLike, input_size: tuple[int, int] | None = None) -> GraphCost:
    """Count MACs and bytes per image of an ONNX model at `input_size` (H, W), batch 1."""
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.load(os.fspath(onnx_path))
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    # Fix the batch (and, when given, H and W of a 4-D input) so every shape becomes static.
    for value in inputs:
        dims = value.type.tensor_type.shape.dim
        for axis, dim in enumerate(dims):
            if axis == 0:
                dim.ClearField("dim_param")
                dim.dim_value = 1
            elif input_size is not None and len(dims) == 4 and dim.dim_value in (0,) and axis in _spatial_axes(dims):
                dim.ClearField("dim_param")
                dim.dim_value = input_size[_spatial_axes(dims).index(axis)]
    inferred = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    shapes = {name: tuple(numpy_helper.to_array(init).shape) for name, init in initializers.items()}
    for value in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(int(d.dim_value) for d in dims)

    by_op: dict[str, int] = {}
    for node in inferred.graph.node:
        macs = _node_macs(node, shapes)
        if macs:
            by_op[node.op_type] = by_op.get(node.op_type, 0) + macs
    weight_bytes = sum(_tensor_bytes(init) for init in graph.initializer)
    input_bytes = sum(_value_bytes(v, shapes) for v in inputs)
    output_bytes = sum(_value_bytes(v, shapes) for v in graph.output)
    return GraphCost(sum(by_op.values()), weight_bytes, input_bytes, output_bytes, by_op)


def _spatial_axes(dims: Any) -> list[int]:
    """H and W axes of a 4-D image input: NHWC when the last dim is 3 channels, else NCHW."""
    return [1, 2] if dims[3].dim_value == 3 else [2, 3]


def _node_macs(node: Any, shapes: dict[str, tuple[int, ...]]) -> int:
    if node.op_type in _CONV_OPS:
        _, w_index = _CONV_OPS[node.op_type]
        weight, out = shapes.get(node.input[w_index]), shapes.get(node.output[0])
        if weight is None or out is None:
            raise ValueError(f"cannot count {node.op_type} {node.name!r}: shapes unknown after inference")
        # Each output element: (C_in / groups) x kH x kW MACs; weight is (C_out, C_in/g, kH, kW).
        return math.prod(out) * math.prod(weight[1:])
    if node.op_type in _MATMUL_OPS:
        a_index, b_index = _MATMUL_OPS[node.op_type]
        a, out = shapes.get(node.input[a_index]), shapes.get(node.output[0])
        if a is None or out is None:
            raise ValueError(f"cannot count {node.op_type} {node.name!r}: shapes unknown after inference")
        k = a[-1]
        if node.op_type == "Gemm" and any(attr.name == "transA" and attr.i for attr in node.attribute):
            k = a[0]
        return math.prod(out) * k
    return 0


def _tensor_bytes(init: Any) -> int:
    from onnx import helper

    dtype = helper.tensor_dtype_to_np_dtype(init.data_type)
    return math.prod(init.dims) * np.dtype(dtype).itemsize


def _value_bytes(value: Any, shapes: dict[str, tuple[int, ...]]) -> int:
    from onnx import helper

    shape = shapes.get(value.name)
    if shape is None:
        return 0
    dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
    return math.prod(shape) * np.dtype(dtype).itemsize


# ---- the machine ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class MachineRates:
    fp32_flops: float  # float32 GEMM, operations per second (2 per MAC)
    int8_ops: float | None  # int8 GEMM (ORT MatMulInteger), operations per second; None if not measured
    bandwidth: float  # bytes per second, large numpy copy (read + write)
    how: dict[str, str] = field(default_factory=dict)  # what each figure measured
    bf16_flops: float | None = None  # bfloat16 GEMM (OpenVINO MatMul pinned to bf16); None: no native bf16

    def peak(self, precision: str) -> float:
        """The compute roof for a row's precision (fp16 on a CPU runs at the fp32 rate or worse);
        each precision's own rate where it was measured, so a bf16 row is not judged by fp32's."""
        if precision == "int8" and self.int8_ops:
            return self.int8_ops
        if precision == "bf16" and self.bf16_flops:
            return self.bf16_flops
        return self.fp32_flops

    def as_dict(self) -> dict[str, Any]:
        return {
            "fp32_gflops": round(self.fp32_flops / 1e9, 2),
            "int8_gops": round(self.int8_ops / 1e9, 2) if self.int8_ops else None,
            "bf16_gflops": round(self.bf16_flops / 1e9, 2) if self.bf16_flops else None,
            "bandwidth_gb_s": round(self.bandwidth / 1e9, 2),
            "how": dict(self.how),
        }


def _best_rate(run: Any, work: float, seconds: float) -> float:
    """work / fastest call, over repeated calls for about `seconds`, after one warm-up call."""
    run()
    best, deadline = math.inf, time.perf_counter() + seconds
    while True:
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
        if time.perf_counter() > deadline:
            return work / best


def measure_fp32_gemm(n: int = 1024, seconds: float = 1.0) -> float:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    return _best_rate(lambda: np.matmul(a, b, out=out), 2.0 * n**3, seconds)


def measure_fp32_gemm_ort(n: int = 1024, seconds: float = 1.0, threads: int | None = None) -> float | None:
    """float32 GEMM through ONNX Runtime's MatMul (MLAS); None without onnxruntime."""
    return _ort_gemm("MatMul", n, seconds, threads)


def measure_int8_gemm(n: int = 1024, seconds: float = 1.0, threads: int | None = None) -> float | None:
    """uint8 x int8 -> int32 GEMM through ONNX Runtime's MatMulInteger; None without onnxruntime."""
    return _ort_gemm("MatMulInteger", n, seconds, threads)


def _ort_gemm(op: str, n: int, seconds: float, threads: int | None) -> float | None:
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return None
    integer = op == "MatMulInteger"
    a_type, b_type = (TensorProto.UINT8, TensorProto.INT8) if integer else (TensorProto.FLOAT, TensorProto.FLOAT)
    graph = helper.make_graph(
        [helper.make_node(op, ["a", "b"], ["y"])],
        "gemm",
        [helper.make_tensor_value_info("a", a_type, [n, n]), helper.make_tensor_value_info("b", b_type, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.INT32 if integer else TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    if integer:
        feed = {"a": rng.integers(0, 256, (n, n), dtype=np.uint8), "b": rng.integers(-127, 128, (n, n), dtype=np.int8)}
    else:
        feed = {"a": rng.standard_normal((n, n), dtype=np.float32), "b": rng.standard_normal((n, n), dtype=np.float32)}
    return _best_rate(lambda: session.run(None, feed), 2.0 * n**3, seconds)


def measure_bf16_gemm(n: int = 1024, seconds: float = 1.0, threads: int | None = None) -> float | None:
    """bfloat16 GEMM through OpenVINO's CPU plugin (MatMul pinned to bf16), or None where the CPU
    has no native bf16 or OpenVINO is missing."""
    try:
        from dfx.runtime.runners.openvino import bf16_status

        if not bf16_status()[0]:
            return None
        import openvino as ov
        import openvino.opset13 as ops

        from dfx.runtime.runners.base import physical_cores

        rng = np.random.default_rng(0)
        a = ops.parameter([n, n], ov.Type.f32)
        model = ov.Model([ops.matmul(a, ops.constant(rng.standard_normal((n, n), np.float32)), False, False)], [a])
        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": threads or physical_cores()})
        request = compiled.create_infer_request()
        x = rng.standard_normal((n, n), np.float32)
        return _best_rate(lambda: request.infer({0: x}), 2.0 * n**3, seconds)
    except Exception:  # a rate we cannot measure is left out, never a failed bench
        return None


def measure_bandwidth(megabytes: int = 256, seconds: float = 1.0) -> float:
    src = np.ones(megabytes * 2**20 // 8, np.float64)
    dst = np.empty_like(src)
    return _best_rate(lambda: np.copyto(dst, src), 2.0 * src.nbytes, seconds)


def measure_machine(seconds: float = 1.0, threads: int | None = None) -> MachineRates:
    """The attainable rates of this machine from three short microbenchmarks (~3 s together)."""
    fp32 = [rate for rate in (measure_fp32_gemm(seconds=seconds), measure_fp32_gemm_ort(seconds=seconds, threads=threads)) if rate]
    return MachineRates(
        fp32_flops=max(fp32),
        int8_ops=measure_int8_gemm(seconds=seconds, threads=threads),
        bandwidth=measure_bandwidth(seconds=seconds),
        bf16_flops=measure_bf16_gemm(seconds=seconds, threads=threads),
        how={
            "fp32": "float32 1024x1024 GEMM, the faster of numpy (BLAS) and ONNX Runtime MatMul, all cores, best call",
            "int8": "ONNX Runtime MatMulInteger uint8 x int8 1024x1024, best call",
            "bandwidth": "numpy copy of 256 MiB (read + write bytes), one thread, best call",
            "bf16": "OpenVINO MatMul 1024x1024 pinned to bf16 (CPUs with native bf16 only), best call",
        },
    )


def best_of(*measured: MachineRates) -> MachineRates:
    """The higher of each rate over several measurements: a roof is what the machine can reach."""
    int8 = [m.int8_ops for m in measured if m.int8_ops]
    bf16 = [m.bf16_flops for m in measured if m.bf16_flops]
    return MachineRates(
        bf16_flops=max(bf16) if bf16 else None,
        fp32_flops=max(m.fp32_flops for m in measured),
        int8_ops=max(int8) if int8 else None,
        bandwidth=max(m.bandwidth for m in measured),
        how={**measured[0].how, "repeats": f"best of {len(measured)} measurements (before and after the rows)"},
    )


def attainable(cost: GraphCost, rates: MachineRates, precision: str, batch: int) -> float:
    """Attainable images per second for a row: min(compute roof, memory roof) / work per image."""
    ops_rate = min(rates.peak(precision), cost.intensity(batch) * rates.bandwidth)
    return ops_rate / cost.flops


def fraction_of_roof(cost: GraphCost, rates: MachineRates, precision: str, batch: int, images_per_s: float) -> dict[str, float]:
    """The row's achieved operation rate and the fraction of its attainable rate it reaches."""
    achieved = images_per_s * cost.flops
    limit = attainable(cost, rates, precision, batch) * cost.flops
    return {
        "achieved_gops": round(achieved / 1e9, 2),
        "attainable_gops": round(limit / 1e9, 2),
        "roof_fraction": round(achieved / limit, 3) if limit else float("nan"),
        "bound": "compute" if rates.peak(precision) <= cost.intensity(batch) * rates.bandwidth else "memory",
    }
