"""Keras -> ONNX (fp32) with tf2onnx, then an optimum-style check against the Keras model.

The ONNX graph takes ``images`` float32 (batch, H, W, 3) RGB in 0..255 (tf2onnx keeps NHWC and
inserts one Transpose) and returns ``logits`` float32 (batch, 1). The batch axis is named
``batch`` so every runtime (and TensorRT's optimization profile) sees it as dynamic. At opset 17
and later, each LayerNorm that tf2onnx spelled out in a dozen ops becomes one LayerNormalization
(dfx.export.graph): the FP16 file keeps it in float32 and the INT8 files leave it float.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from dfx.bundle import tool_versions
from dfx.errors import DfxError, require

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
BATCH_AXIS = "batch"
DEFAULT_OPSET = 17
MAX_OPSET = 18  # tf2onnx 1.17 knows opsets up to 18


class ExportError(DfxError):
    """The model could not be converted to ONNX."""


class ValidationError(DfxError):
    """An exported form disagrees with its source beyond the named tolerance.

    Carries the measured `max_abs_diff`, the `tolerance`, and what the images were.
    """

    def __init__(self, form: str, max_abs_diff: float, tolerance: float, images: str, hint: str | None = None):
        super().__init__(
            f"{form} differs from its source by max |logit difference| {max_abs_diff:.3g} > {tolerance:g} "
            f"(on {images})",
            hint=hint,
        )
        self.form = form
        self.max_abs_diff = max_abs_diff
        self.tolerance = tolerance
        self.images = images


def export_onnx(model: Any, out_path: str | os.PathLike, input_size: tuple[int, int], opset: int = DEFAULT_OPSET) -> dict:
    """Convert a Keras model (object) to ONNX at `out_path`. Returns the manifest details
    (route, opset, tools) to store with the file."""
    if not 13 <= opset <= MAX_OPSET:
        raise ExportError(f"opset {opset} is not supported", hint=f"use an opset between 13 and {MAX_OPSET} (default {DEFAULT_OPSET})")
    tf = require("tensorflow", "export", "exporting to ONNX")
    tf2onnx = require("tf2onnx", "export", "exporting to ONNX")
    onnx = require("onnx", "export", "exporting to ONNX")

    height, width = input_size
    signature = [tf.TensorSpec((None, height, width, 3), tf.float32, name=INPUT_NAME)]
    try:
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset)
    except Exception as exc:  # tf2onnx raises whatever TF/its handlers raise
        raise ExportError(f"tf2onnx could not convert the model: {exc}") from exc
    _name_io(proto)
    from dfx.export.graph import fuse_layer_norms

    fused = fuse_layer_norms(proto)
    onnx.checker.check_model(proto)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(out_path))
    return {
        "route": "tf2onnx.convert.from_keras",
        "opset": opset,
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "dynamic_axes": {INPUT_NAME: {0: BATCH_AXIS}, OUTPUT_NAME: {0: BATCH_AXIS}},
        **({"layer_norms_fused": fused} if fused else {}),
        "tools": tool_versions("tensorflow", "keras", "tf2onnx", "onnx"),
    }


def _name_io(proto: Any) -> None:
    """Name the one input ``images`` and the one output ``logits``; name the batch axis."""
    graph = proto.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise ExportError(f"expected one input and one output, got {len(graph.input)} and {len(graph.output)}")
    renames = {graph.input[0].name: INPUT_NAME, graph.output[0].name: OUTPUT_NAME}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
        for i, name in enumerate(node.output):
            if name in renames:
                node.output[i] = renames[name]
    for value in list(graph.input) + list(graph.output):
        value.name = renames.get(value.name, value.name)
        dim = value.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_value")
        dim.dim_param = BATCH_AXIS


def validate(
    form: str,
    reference: np.ndarray,
    logits: np.ndarray,
    tolerance: float,
    images: str,
    hint: str | None = None,
) -> float:
    """Max |logits - reference|; raises ValidationError carrying it when above `tolerance`."""
    diff = float(np.max(np.abs(np.asarray(logits, np.float64).ravel() - np.asarray(reference, np.float64).ravel()), initial=0.0))
    if not np.isfinite(diff) or diff > tolerance:
        raise ValidationError(form, diff, tolerance, images, hint=hint)
    return diff
