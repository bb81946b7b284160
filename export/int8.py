"""Calibrated INT8: an FP32 ONNX -> Q/DQ ONNX files, one calibration, two layouts.

`model.int8.onnx` is where the INT8 precision lives for TensorRT 10/11 (TensorRT 11 builds
strongly typed networks only):

- activations and weights int8 with zero point 0 (ActivationSymmetric, WeightSymmetric);
- weights per output channel; biases left in float (QuantizeBias=False): TensorRT fuses a
  float bias into its INT8 convolution, and a quantized int32 bias would force a weight-scale
  adjustment that TensorRT does not need;
- Q/DQ pairs are not shared between consumers (DedicatedQDQPair) so TensorRT can fuse each
  one into the layer that reads it.

`model.int8.cpu.onnx` is its twin for CPUs (ONNX Runtime and OpenVINO), from the very same
ranges: activations uint8 with a zero point, weights as above, int32 biases and Q/DQ pairs
shared between consumers, the form ONNX Runtime fuses into its QLinearConv kernels. On x86
without VNNI both runtimes' fast int8 kernels multiply uint8 by int8; given the symmetric
file, ONNX Runtime falls back to slower kernels (measured: benchmarks/scripts/int8_cpu_threads.py).
A ReLU output also gets all 256 levels over [0, t] instead of the 128 of the symmetric form,
which is why the twin's float-conv search starts from quantizing every conv.

Layers left unquantized (the pooling between Q/DQ pairs, the final logit layer) stay float32
in both files; TensorRT builds the strongly typed network and follows those types. We chose
not to emit a mixed INT8 + FP16 file: those layers are a negligible share of the work (max /
average pooling and one dot product per image).

The tensor ranges are computed here, not inside `quantize_static`. In ONNX Runtime 1.32
`quantize_static(calibrate_method=Entropy)` builds its histograms with 128 bins, and with 128
quantized bins the entropy search has a single candidate, the full range: "entropy" silently
equals MinMax. Even with 2048 bins ORT's entropy search runs on a signed histogram over
[-t, t] (so a one-sided ReLU output gets half the levels) and lets the spike of exact zeros
after a ReLU dominate the divergence; on our CNN it clipped ReLU outputs to a fifth of their
range and shifted logits by ~2.5. So "entropy" here is TensorRT's classic calibration
(Migacz, GTC 2017, as in pytorch-quantization): a 2048-bin histogram of |x| collected by ORT's
histogram collector, the zero bin damped, and the clipping threshold t among bins 128..2048 that
minimises the KL divergence between the clipped distribution and its 128-level quantization.
Every method stores [max(min, -t), min(max, t)] (the observed range, clipped): the symmetric
file widens it to [-t, t], the uint8 twin uses it as it is. We save the ranges with ORT's own
cache format and hand that cache to `quantize_static`, which then skips its calibration; the
same cache file lets a rebuild skip the images.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from dfx.errors import DfxError, require

METHODS = ("entropy", "percentile", "minmax")
ACTIVATION_TYPES = ("int8", "uint8")  # TensorRT's symmetric file, the CPU twin
# What a transformer quantizes: the MatMuls and the patch embedding's conv (see quantize).
TRANSFORMER_OPS = ("Conv", "MatMul", "Gemm")
ALGORITHM = "dfx-int8-3"  # part of the calibration cache key: bump when range computation changes


@dataclass(frozen=True)
class CalibrationOptions:
    method: str = "entropy"  # entropy (KL, TensorRT's classic choice), percentile, or minmax
    num_bins: int = 2048  # |x| histogram bins for entropy/percentile; >128 is what makes entropy real
    num_quantized_bins: int = 128  # int8 levels on one side of zero the entropy search compresses into
    percentile: float = 99.999  # share of |values| kept by the percentile method
    batch_size: int = 16  # images per calibration run (memory, not results)
    chunk: int = 32  # images whose activations ORT holds at once (~40 MB each for the seed CNN at 256 px)


class CalibrationError(DfxError):
    """Calibration could not run or produced unusable ranges."""


class ArrayReader:
    """An onnxruntime CalibrationDataReader over a uint8 NHWC array, fed as float32 batches."""

    def __init__(self, images: np.ndarray, input_name: str, batch_size: int = 16):
        self.images = images
        self.input_name = input_name
        self.batch_size = batch_size
        self._iter: Iterator[dict] | None = None

    def _batches(self) -> Iterator[dict]:
        for start in range(0, len(self.images), self.batch_size):
            yield {self.input_name: self.images[start : start + self.batch_size].astype(np.float32)}

    def get_next(self) -> dict | None:
        if self._iter is None:
            self._iter = self._batches()
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = None

    def __len__(self) -> int:
        return len(self.images)


def preprocess(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """ORT's quant_pre_process: shape inference and graph optimization before quantizing."""
    require("sympy", "export", "INT8 pre-processing (symbolic shape inference)")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with _quiet():
        quant_pre_process(os.fspath(src), os.fspath(dst), skip_symbolic_shape=False)


def auto_method(transformer: bool) -> str:
    """`--calib-method auto`: entropy for CNNs; minmax for transformers, whose LayerNorm outputs
    and MLP activations carry a few outlier channels that the features depend on. KL clipping
    cuts them: on CLIP ViT-B/16 (every MatMul int8, per-tensor activations) the last block's
    CLS token kept cosine 0.55 to fp32 with entropy ranges and 0.86 with minmax
    (docs/export-and-parity.md)."""
    return "minmax" if transformer else "entropy"


def calibrate(model_path: str | os.PathLike, images: np.ndarray, options: CalibrationOptions) -> Any:
    """Run the calibrator over `images` (uint8 NHWC) and return ORT's TensorsData of ranges."""
    if options.method not in METHODS:
        raise CalibrationError(f"unknown calibration method {options.method!r}", hint=f"use one of {', '.join(METHODS)}")
    if len(images) == 0:
        raise CalibrationError("no calibration images could be read", hint="check --calib DATA")
    require("onnxruntime", "cpu", "INT8 calibration")
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    method, extra = {
        # Observed [min, max]; the symmetric file widens it to [-max|x|, max|x|] itself.
        "minmax": (CalibrationMethod.MinMax, {"symmetric": False}),
        # Entropy collects the same |x| histograms as percentile; the threshold search is ours.
        # ORT's symmetric percentile already clips [-t, t] to the observed [min, max].
        "entropy": (
            CalibrationMethod.Percentile,
            {"symmetric": True, "num_bins": options.num_bins, "percentile": options.percentile},
        ),
        "percentile": (
            CalibrationMethod.Percentile,
            {"symmetric": True, "num_bins": options.num_bins, "percentile": options.percentile},
        ),
    }[options.method]
    op_types = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))  # what quantize_static calibrates
    input_name = _input_name(model_path)
    with tempfile.TemporaryDirectory(prefix="dfx-calib-") as tmp, _quiet():
        calibrator = create_calibrator(
            Path(model_path),
            op_types,
            augmented_model_path=os.path.join(tmp, "augmented.onnx"),
            calibrate_method=method,
            extra_options=extra,
        )
        # ORT keeps every activation of everything one collect_data call reads, then merges
        # them into ranges/histograms; feeding chunks bounds memory (512 images at 256 px
        # would be ~20 GB at once). Histograms and min/max merge across calls.
        for start in range(0, len(images), options.chunk):
            calibrator.collect_data(ArrayReader(images[start : start + options.chunk], input_name, options.batch_size))
        if options.method == "entropy":
            ranges = _entropy_ranges(calibrator.collector.histogram_dict, options.num_quantized_bins)
        else:
            ranges = calibrator.compute_data()
        del calibrator
    return ranges


def _entropy_ranges(histograms: dict, num_quantized_bins: int) -> Any:
    """TensorsData (method Entropy) of KL-clipped ranges from |x| histograms (see the module docstring)."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import TensorData, TensorsData

    data = {}
    for name, (hist, edges, observed_min, observed_max, *_rest) in histograms.items():
        t = entropy_threshold(np.asarray(hist, np.float64), np.asarray(edges), num_quantized_bins)
        # [-t, t] clipped to what was seen: a ReLU output keeps [0, t] for the uint8 twin.
        low = np.array(min(0.0, max(float(observed_min), -t)), dtype=np.float32)
        high = np.array(max(0.0, min(float(observed_max), t)), dtype=np.float32)
        data[name] = TensorData(lowest=low, highest=high, hist=np.asarray(hist), hist_edges=np.asarray(edges, np.float32))
    return TensorsData(CalibrationMethod.Entropy, data)


def entropy_threshold(hist: np.ndarray, edges: np.ndarray, num_quantized_bins: int = 128) -> float:
    """The |x| clipping threshold minimising KL(P || Q): P is the histogram clipped at bin i
    (outliers folded into the last kept bin), Q its quantization into `num_quantized_bins`
    levels expanded back over P's non-empty bins. Candidates i run from num_quantized_bins to
    all bins; with as many bins as levels there is one candidate, the full range (MinMax)."""
    bins = hist.astype(np.float64).copy()
    if bins.size > 1:
        bins[0] = bins[1]  # the spike of exact zeros (ReLU) must not decide the threshold
    total = bins.sum()
    n = bins.size
    if total <= 0 or n <= num_quantized_bins:
        return float(edges[-1])
    tails = np.concatenate([np.cumsum(bins[::-1])[::-1], [0.0]])  # tails[i] = sum(bins[i:])
    best_i, best_kl = n, np.inf
    for i in range(num_quantized_bins, n + 1):
        reference = bins[:i].copy()
        reference[-1] += tails[i]
        kept = bins[:i]
        nonzero = kept != 0
        level = (np.arange(i) * num_quantized_bins) // i  # which quantized level each bin joins
        sums = np.bincount(level, weights=kept, minlength=num_quantized_bins)
        counts = np.bincount(level, weights=nonzero, minlength=num_quantized_bins)
        expanded = np.where(nonzero, sums[level] / np.maximum(counts[level], 1), 0.0)
        p = reference / reference.sum()
        q_total = expanded.sum()
        if q_total <= 0:
            continue
        q = expanded / q_total
        mask = p > 0
        if np.any(q[mask] == 0):
            kl = np.inf
        else:
            kl = float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
        if kl <= best_kl:  # ties: the larger threshold, as TensorRT does
            best_i, best_kl = i, kl
    return float(edges[best_i])


def quantize(
    preprocessed: str | os.PathLike,
    dst: str | os.PathLike,
    cache_path: str | os.PathLike,
    method: str,
    keep_output_float: bool = True,
    float_convs: int = 1,
    activations: str = "int8",
    op_types: tuple[str, ...] | None = None,
    float_nodes: tuple[str, ...] = (),
    activation_products: bool = True,
) -> dict:
    """Write the Q/DQ model from a pre-processed FP32 ONNX and a saved range cache.

    `activations` "int8": the symmetric file TensorRT needs (zero points 0); "uint8": the CPU
    twin (zero point per tensor, the u8 x s8 kernels of ONNX Runtime and OpenVINO).

    `keep_output_float` leaves the node that produces the logit unquantized: quantizing the
    logit itself to 256 levels would move decisions that sit near the threshold, for a
    layer that costs nothing (one dot product per image).

    `float_convs` leaves the first N convolutions (and everything before them, such as the
    pixel rescaling) unquantized. The first reads raw pixels, where GAN traces are a pixel
    value or two of amplitude, and symmetric int8 (zero point 0: only 127 levels for
    non-negative values) halves that resolution; the early feature maps carry the same faint
    traces. The pipeline picks N by measurement (see `select_float_convs` in pipeline.py).

    `op_types`: the op types to quantize; None: ONNX Runtime's default list (every op it has a
    Q/DQ rule for, right for the CNNs). A transformer passes TRANSFORMER_OPS: its MatMuls (and
    the one patch conv) carry the work, and LayerNorm, Softmax, the residual adds and GELU stay
    float. `float_nodes`: more nodes left float (the transformer units the pipeline chose).
    `activation_products` False leaves float every MatMul of two activations (attention's
    Q.K^T and probabilities.V): int8 has no level for most attention weights (1/197 of a
    [0, 1] softmax output is under half a step of the symmetric file's 1/127), and TensorRT's
    and NVIDIA ModelOpt's INT8 recipes for transformers quantize the linear layers only.
    """
    if activations not in ACTIVATION_TYPES:
        raise ValueError(f"activations must be one of {ACTIVATION_TYPES}, not {activations!r}")
    symmetric = activations == "int8"
    require("onnxruntime", "cpu", "INT8 quantization")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    calibrate_method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    extra_options = {
        "ActivationSymmetric": symmetric,
        "WeightSymmetric": True,
        # TensorRT fuses a float bias and one Q/DQ pair per consumer (see the module docstring);
        # ONNX Runtime CPU only fuses DQ -> Conv -> Q into its int8 QLinearConv when the bias
        # is int32, so the CPU twin quantizes it and shares pairs.
        "QuantizeBias": not symmetric,
        "DedicatedQDQPair": symmetric,
    }
    excluded = _output_producers(preprocessed) if keep_output_float else []
    excluded += [n for n in leading_nodes(preprocessed, float_convs) if n not in excluded]
    excluded += [n for n in float_nodes if n not in excluded]
    if not activation_products:
        excluded += [n for n in products_of_activations(preprocessed) if n not in excluded]
    with _quiet():
        quantize_static(
            os.fspath(preprocessed),
            os.fspath(dst),
            calibration_data_reader=None,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=False,
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=calibrate_method,
            extra_options=extra_options,
            calibration_cache_path=os.fspath(cache_path),
            nodes_to_exclude=excluded,
            op_types_to_quantize=list(op_types) if op_types is not None else None,
        )
    return {
        "route": "onnxruntime.quantization.quantize_static (QDQ) after quant_pre_process",
        "format": "QDQ",
        "activations": "int8 symmetric (zero point 0), per tensor" if symmetric else "uint8 with zero point, per tensor",
        "weights": "int8 symmetric (zero point 0), per channel",
        "biases": "float" if symmetric else "int32",
        "calibration_method": method,
        "options": extra_options,
        "float_convs": float_convs,
        **({"op_types": list(op_types)} if op_types is not None else {}),
        **({} if activation_products else {"activation_products": "float (MatMuls of two activations are not quantized)"}),
        "kept_float": excluded,
    }


def missing_ranges(ranges: Any, model_path: str | os.PathLike) -> list[str]:
    """The tensors `calibrate` would range on this (pre-processed) graph that `ranges` lacks,
    sorted: a cache made from a graph whose tensors were named differently cannot be reused."""
    import onnx
    from onnx import TensorProto
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    model = onnx.shape_inference.infer_shapes(onnx.load(os.fspath(model_path), load_external_data=False))
    graph = model.graph
    floats = {v.name for v in list(graph.value_info) + list(graph.input) + list(graph.output)
              if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type in (TensorProto.FLOAT, TensorProto.FLOAT16)}
    floats -= {t.name for t in graph.initializer}
    op_types = set(QLinearOpsRegistry) | set(QDQRegistry)
    wanted = {name for node in graph.node if node.op_type in op_types for name in list(node.input) + list(node.output)}
    return sorted((wanted & floats) - set(ranges.keys()))


def save_ranges(ranges: Any, path: str | os.PathLike) -> None:
    from onnxruntime.quantization.calibrate import save_tensors_data

    save_tensors_data(ranges, Path(path))


def load_ranges(path: str | os.PathLike) -> Any:
    from onnxruntime.quantization.calibrate import load_tensors_data

    return load_tensors_data(Path(path))


def ranges_table(ranges: Any) -> dict[str, list[float]]:
    """{tensor name: [low, high]} for the calibration report."""
    table = {}
    for name, data in sorted(ranges.items()):
        low, high = data.range_value if hasattr(data, "range_value") else data
        table[name] = [float(np.min(low)), float(np.max(high))]  # per-channel ranges: the envelope
    return table


def check_symmetric(path: str | os.PathLike) -> dict:
    """Inspect a Q/DQ file: every zero point must be 0 and the int8 type; biases float.
    Returns counts; raises CalibrationError on a violation (TensorRT rejects non-zero points)."""
    onnx = require("onnx", "export", "checking the INT8 model")
    from onnx import TensorProto, numpy_helper

    model = onnx.load(os.fspath(path))
    inits = {t.name: t for t in model.graph.initializer}
    counts = {"QuantizeLinear": 0, "DequantizeLinear": 0, "per_channel_weights": 0}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        counts[node.op_type] += 1
        if len(node.input) > 2 and node.input[2]:
            zero = inits.get(node.input[2])
            if zero is None:
                raise CalibrationError(f"{node.name}: zero point is not a constant")
            if zero.data_type != TensorProto.INT8 or np.any(numpy_helper.to_array(zero) != 0):
                raise CalibrationError(f"{node.name}: zero point must be int8 0 for TensorRT")
        scale = inits.get(node.input[1])
        if node.op_type == "DequantizeLinear" and scale is not None and len(scale.dims) == 1 and scale.dims[0] > 1:
            counts["per_channel_weights"] += 1
    return counts


def _output_producers(model_path: str | os.PathLike) -> list[str]:
    import onnx

    model = onnx.load(os.fspath(model_path), load_external_data=False)
    outputs = {v.name for v in model.graph.output}
    return [n.name for n in model.graph.node if outputs & set(n.output) and n.name]


def count_qdq(path: str | os.PathLike) -> dict:
    """Q/DQ node counts of the uint8 twin (its zero points are free, so nothing to check)."""
    import onnx

    nodes = onnx.load(os.fspath(path), load_external_data=False).graph.node
    return {op: sum(n.op_type == op for n in nodes) for op in ("QuantizeLinear", "DequantizeLinear")}


def products_of_activations(model_path: str | os.PathLike) -> list[str]:
    """Names of the MatMuls neither of whose inputs is a constant (an initializer or a Constant)."""
    import onnx

    graph = onnx.load(os.fspath(model_path), load_external_data=False).graph
    constants = {t.name for t in graph.initializer} | {n.output[0] for n in graph.node if n.op_type == "Constant"}
    return [n.name for n in graph.node if n.op_type == "MatMul" and n.name and not constants & set(n.input)]


def count_convs(model_path: str | os.PathLike) -> int:
    import onnx

    return sum(n.op_type == "Conv" for n in onnx.load(os.fspath(model_path), load_external_data=False).graph.node)


def leading_nodes(model_path: str | os.PathLike, convs: int) -> list[str]:
    """Names of the nodes (in graph order, which ONNX keeps topological) up to and including
    the `convs`-th Conv; [] for 0."""
    import onnx

    if convs <= 0:
        return []
    names, seen = [], 0
    for node in onnx.load(os.fspath(model_path), load_external_data=False).graph.node:
        names.append(node.name)
        seen += node.op_type == "Conv"
        if seen == convs:
            break
    return [n for n in names if n]


def _input_name(model_path: str | os.PathLike) -> str:
    import onnx

    model = onnx.load(os.fspath(model_path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    return next(v.name for v in model.graph.input if v.name not in initializers)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ORT's quantization tools print progress and log warnings; keep dfx's output readable."""
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)
