"""Calibrated INT8: an FP32 ONNX -> symmetric Q/DQ ONNX for ONNX Runtime (CPU) and TensorRT 10/11.

The file is where the INT8 precision lives (TensorRT 11 builds strongly typed networks only):

- activations and weights int8 with zero point 0 (ActivationSymmetric, WeightSymmetric);
- weights per output channel; biases left in float (QuantizeBias=False): TensorRT fuses a
  float bias into its INT8 convolution, and a quantized int32 bias would force a weight-scale
  adjustment that TensorRT does not need;
- Q/DQ pairs are not shared between consumers (DedicatedQDQPair) so TensorRT can fuse each
  one into the layer that reads it.

The tensor ranges are computed here, not inside `quantize_static`: in ONNX Runtime 1.32
`quantize_static(calibrate_method=Entropy)` builds its histograms with 128 bins, and with 128
quantized bins the entropy search has a single candidate, the full range, so "entropy" silently
equals MinMax. We create the calibrator ourselves (entropy: 2048 bins searched down to 128
quantized bins; percentile: 2048 bins at 99.999%), save the ranges with ORT's own cache format,
and hand that cache to `quantize_static`, which then skips its calibration. The same cache
file lets a rebuild skip the images.
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


@dataclass(frozen=True)
class CalibrationOptions:
    method: str = "entropy"  # entropy (KL, TensorRT's classic choice), percentile, or minmax
    num_bins: int = 2048  # histogram bins for entropy/percentile; >128 is what makes entropy real
    num_quantized_bins: int = 128  # int8 levels per sign the entropy search compresses into
    percentile: float = 99.999  # share of |values| kept by the percentile method
    batch_size: int = 16  # images per calibration run (memory, not results)


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
        "minmax": (CalibrationMethod.MinMax, {"symmetric": True}),
        "entropy": (
            CalibrationMethod.Entropy,
            {"symmetric": True, "num_bins": options.num_bins, "num_quantized_bins": options.num_quantized_bins},
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
        reader = ArrayReader(images, input_name, options.batch_size)
        calibrator.collect_data(reader)
        ranges = calibrator.compute_data()
        del calibrator
    return ranges


def quantize(
    preprocessed: str | os.PathLike,
    dst: str | os.PathLike,
    cache_path: str | os.PathLike,
    method: str,
    keep_output_float: bool = True,
) -> dict:
    """Write the Q/DQ model from a pre-processed FP32 ONNX and a saved range cache.

    `keep_output_float` leaves the node that produces the logit unquantized: quantizing the
    logit itself to 256 levels would move decisions that sit near the threshold, for a
    layer that costs nothing (one dot product per image)."""
    require("onnxruntime", "cpu", "INT8 quantization")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    calibrate_method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    extra_options = {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "QuantizeBias": False,
        "DedicatedQDQPair": True,
    }
    excluded = _output_producers(preprocessed) if keep_output_float else []
    with _quiet():
        quantize_static(
            os.fspath(preprocessed),
            os.fspath(dst),
            calibration_data_reader=None,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=False,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=calibrate_method,
            extra_options=extra_options,
            calibration_cache_path=os.fspath(cache_path),
            nodes_to_exclude=excluded,
        )
    return {
        "route": "onnxruntime.quantization.quantize_static (QDQ) after quant_pre_process",
        "format": "QDQ",
        "activations": "int8 symmetric (zero point 0), per tensor",
        "weights": "int8 symmetric (zero point 0), per channel",
        "biases": "float",
        "calibration_method": method,
        "options": extra_options,
        "kept_float": excluded,
    }


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
