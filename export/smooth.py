"""SmoothQuant for a transformer's INT8 forms: move the activations' outlier channels into the weights.

CLIP's residual stream carries a few channels far larger than the rest. After a LayerNorm they
still set the per-tensor int8 range of what the next MatMuls read (q, k and v after ln1, fc1
after ln2), and every other channel is left a handful of levels: on the CLIP ViT-B/16 default
the MLPs were what the float-unit search had to keep float. SmoothQuant (Xiao et al., 2023)
divides each channel j of such an activation by s_j and multiplies row j of every weight that
reads it by s_j, with s_j = max|X_j|^alpha / max|W_j|^(1 - alpha): the float graph computes the
same thing, the activation's channels come out even, and the weights, quantized per output
channel, absorb the range. Here the division is folded into the LayerNorm's own scale and
bias, so the smoothed graph has no extra op (exact in float: tests/test_vit_export.py compares
its logits with the original's).

Needs onnx, onnxruntime and numpy.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

ALPHA = 0.5  # the paper's default: the range split evenly between activations and weights
SCALE_LIMITS = (1e-5, 1e5)


def layer_norm_readers(model: Any) -> list[tuple[Any, list[Any]]]:
    """Each LayerNormalization whose output is read only by MatMuls with a weight initializer
    (B, shape (width, out)), directly or through a Reshape to rows (tf2onnx's Tensordot), with
    those MatMuls; Shape nodes, which read no values, are ignored. Weights and the norm's scale
    and bias must be used by nothing else, so scaling them changes nothing but this path."""
    initializers = {t.name for t in model.graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def only_once(name: str) -> bool:
        return name in initializers and len(consumers.get(name, [])) == 1

    def matmuls(tensor: str) -> list[Any] | None:  # None: something else reads the values
        found = []
        for node in consumers.get(tensor, []):
            if node.op_type == "Shape":
                continue
            if node.op_type == "Reshape" and node.input[0] == tensor:
                below = matmuls(node.output[0])
                if below is None:
                    return None
                found += below
            elif node.op_type == "MatMul" and node.input[0] == tensor and only_once(node.input[1]):
                found.append(node)
            else:
                return None
        return found

    pairs = []
    for node in model.graph.node:
        if node.op_type == "LayerNormalization" and len(node.input) >= 3 and all(only_once(n) for n in node.input[1:3]):
            readers = matmuls(node.output[0])
            if readers:
                pairs.append((node, readers))
    return pairs


def channel_maxima(model: Any, tensors: list[str], images: np.ndarray, batch_size: int = 16) -> dict[str, np.ndarray]:
    """max |x| per channel (the last axis) of each named tensor of `model` (left as it is) over the images."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    for name in tensors:
        probe.graph.output.append(helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    maxima = {name: None for name in tensors}
    for start in range(0, len(images), batch_size):
        outputs = session.run(tensors, {feed: images[start:start + batch_size].astype(np.float32)})
        for name, value in zip(tensors, outputs):
            peak = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
            maxima[name] = peak if maxima[name] is None else np.maximum(maxima[name], peak)
    return {name: np.asarray(value, np.float64) for name, value in maxima.items()}


def smooth(src: str | os.PathLike, dst: str | os.PathLike, images: np.ndarray, alpha: float = ALPHA,
           batch_size: int = 16) -> dict:
    """Write `src` smoothed to `dst` (scales from the images); returns what was done: how many
    LayerNorms and MatMuls, and each activation's largest channel over its median channel before
    and after (the spread per-tensor int8 has to cover)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(os.fspath(src))
    pairs = layer_norm_readers(model)
    maxima = channel_maxima(model, [norm.output[0] for norm, _ in pairs], images, batch_size)
    weights = {t.name: t for t in model.graph.initializer}
    spread_before, spread_after = [], []
    for norm, readers in pairs:
        activation = maxima[norm.output[0]]
        matrices = [numpy_helper.to_array(weights[r.input[1]]) for r in readers]
        weight_peak = np.max([np.abs(m).max(axis=1) for m in matrices], axis=0)
        scale = np.where((activation > 0) & (weight_peak > 0),
                         activation ** alpha / np.maximum(weight_peak, 1e-12) ** (1.0 - alpha), 1.0)
        scale = np.clip(scale, *SCALE_LIMITS)
        for name in norm.input[1:3]:  # LayerNorm scale and bias: y / s
            _replace(weights[name], numpy_helper.to_array(weights[name]) / scale)
        for reader, matrix in zip(readers, matrices):  # rows of W: s * W
            _replace(weights[reader.input[1]], matrix * scale[:, None])
        spread_before.append(float(activation.max() / max(np.median(activation), 1e-12)))
        after = activation / scale
        spread_after.append(float(after.max() / max(np.median(after), 1e-12)))
    onnx.save(model, os.fspath(dst))
    return {
        "method": "SmoothQuant (LayerNorm-folded)",
        "alpha": alpha,
        "layer_norms": len(pairs),
        "matmuls": sum(len(readers) for _, readers in pairs),
        "images": int(len(images)),
        "largest_channel_over_median": {"before": round(max(spread_before, default=1.0), 2),
                                        "after": round(max(spread_after, default=1.0), 2)},
    }


def _replace(tensor: Any, values: np.ndarray) -> None:
    """Overwrite an initializer's values, keeping its name and dtype."""
    from onnx import numpy_helper

    tensor.CopyFrom(numpy_helper.from_array(values.astype(numpy_helper.to_array(tensor).dtype), tensor.name))
