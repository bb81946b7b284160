"""FP32 ONNX -> FP16 ONNX whose input and output stay float32.

Written with `onnx` alone (onnxconverter-common is not a dependency): every float32
initializer and Constant becomes float16, one Cast follows the graph input and one precedes
the graph output, and all intermediate tensors are float16. Callers keep feeding float32
pixels 0..255 (exact in float16) and reading float32 logits. TensorRT builds this file as a
strongly typed FP16 network; ONNX Runtime CPU runs it too (it inserts its own casts around
ops that have no float16 CPU kernel), which is how it is validated here.

LayerNormalization stays float32 (KEEP_FLOAT32): its input is cast up, its scale and bias keep
their float32 values, its output is cast back down. A transformer's residual stream has
outliers whose squares leave float16's range (CLIP ViT-B/16's reach the hundreds), and a
strongly typed network computes a layer in the type of its input, so the casts are how
TensorRT is told to normalize in float32. (export/graph.py fuses tf2onnx's dozen-op LayerNorm
into that one node first.)
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from dfx.errors import require

FLOAT16_MAX = 65504.0
KEEP_FLOAT32 = ("LayerNormalization",)  # ops computed in float32 inside the float16 graph


def convert_fp16(src: str | os.PathLike, dst: str | os.PathLike) -> dict:
    """Write the float16 version of `src` to `dst`. Returns the manifest details."""
    onnx = require("onnx", "export", "the FP16 conversion")
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(os.fspath(src))
    graph = model.graph
    clipped = 0
    kept = [node for node in graph.node if node.op_type in KEEP_FLOAT32]
    readers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    # weights read only by float32 ops (a LayerNorm's scale and bias) keep their float32 values
    float32_weights = {t.name for t in graph.initializer if readers.get(t.name) and readers[t.name] <= set(KEEP_FLOAT32)}

    def to_half(tensor: Any) -> Any:
        nonlocal clipped
        array = numpy_helper.to_array(tensor)
        big = np.abs(array) > FLOAT16_MAX
        clipped += int(big.sum())
        half = np.clip(array, -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16)
        return numpy_helper.from_array(half, tensor.name)

    for i, tensor in enumerate(graph.initializer):
        if tensor.data_type == TensorProto.FLOAT and tensor.name not in float32_weights:
            graph.initializer[i].CopyFrom(to_half(tensor))
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                    attr.t.CopyFrom(to_half(attr.t))
        for attr in node.attribute:  # e.g. Cast(to=float) inside the graph
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16

    # Cast float32 graph inputs into the graph, and its float16 result out to float32 outputs.
    casts_in, casts_out = [], []
    for value in graph.input:
        if value.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        half_name = f"{value.name}__fp16"
        _rename_tensor(graph, value.name, half_name)
        casts_in.append(helper.make_node("Cast", [value.name], [half_name], to=TensorProto.FLOAT16, name=f"{value.name}_to_fp16"))
    for value in graph.output:
        if value.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        half_name = f"{value.name}__fp16"
        _rename_tensor(graph, value.name, half_name)  # its producer, and readers inside the graph
        casts_out.append(helper.make_node("Cast", [half_name], [value.name], to=TensorProto.FLOAT, name=f"{value.name}_to_fp32"))
    around: dict[int, tuple[list, list]] = {}  # id(kept node) -> (casts before it, casts after it)
    for node in kept:
        before, after = [], []
        for j, name in enumerate(node.input):
            if name and name not in float32_weights:
                node.input[j] = f"{name}__fp32_for_{node.name}"
                before.append(helper.make_node("Cast", [name], [node.input[j]], to=TensorProto.FLOAT, name=f"{node.input[j]}_cast"))
        for j, name in enumerate(node.output):
            if name:
                node.output[j] = f"{name}__fp32"
                after.append(helper.make_node("Cast", [node.output[j]], [name], to=TensorProto.FLOAT16, name=f"{name}_to_fp16"))
        around[id(node)] = (before, after)
    body = []
    for node in graph.node:
        before, after = around.get(id(node), ([], []))
        body += before + [node] + after
    nodes = casts_in + body + casts_out
    del graph.node[:]
    graph.node.extend(nodes)

    # Intermediate types are stale now; let shape inference recompute them.
    del graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model)
    onnx.save_model(model, os.fspath(dst))
    return {
        "route": "dfx.export.fp16 (float16 initializers, float32 graph I/O)",
        "io_dtype": "float32",
        "clipped_weights": clipped,  # weights beyond float16's range, clipped to +-65504
        **({"float32_ops": {op: sum(n.op_type == op for n in kept) for op in KEEP_FLOAT32}} if kept else {}),
    }


def _rename_tensor(graph, old: str, new: str) -> None:
    """Point every node input and output named `old` at `new` instead."""
    for node in graph.node:
        for names in (node.input, node.output):
            for j, name in enumerate(names):
                if name == old:
                    names[j] = new
