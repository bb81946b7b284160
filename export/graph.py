"""ONNX graph passes and look-ups of the export: LayerNorm fusion, a backbone's CLS tokens, and
the units (patch embedding, transformer blocks) the INT8 search keeps float or quantizes.

tf2onnx writes a Keras LayerNormalization as a dozen ops: the mean and variance as
GlobalAveragePool over the last axis of a (N, T, W) tensor, the square as Mul(d, d), then
Sqrt, Reciprocal and the affine part. Left like that, the FP16 file squares the residual
stream in float16 (CLIP's has outliers in the hundreds: their squares pass 65504), ONNX
Runtime's quantizer wraps the two averages in Q/DQ (QLinearGlobalAveragePool then fails at run
time), and TensorRT sees a dozen layers instead of its normalization layer. `fuse_layer_norms`
rewrites each such chain as one LayerNormalization (opset 17), which every backend reads and
which the FP16 conversion keeps in float32. The result is checked against Keras at 1e-4 like
any export.

Needs onnx (and numpy).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

LAYER_NORM_OPSET = 17  # LayerNormalization joined the default domain in opset 17
TOKENS_LAYER = "cls_tokens"  # the Keras layer (dfx.trainer.vit.ClsTokens) whose output is (N, blocks, width)
TOKENS_OUTPUT = "dfx_block_tokens"  # the extra graph output a token tap adds
_BLOCK = re.compile(r"(?:^|/)block(\d+)(?:_\d+)?/")  # dfx.trainer.vit names blocks block0, block1, ...
_EMBEDDING = re.compile(r"(?:^|/)embedding(?:_\d+)?/")
_MLP = re.compile(r"^(?:fc1|fc2|ln2)(?:_\d+)?/")  # a block's MLP half: its LayerNorm and two Dense layers
_MLP_OUT = re.compile(r"/fc2(?:_\d+)?/")  # its second Dense layer, which reads the GELU's output


class _Graph:
    """Producers, consumers and constants of a graph, for pattern matching."""

    def __init__(self, graph: Any):
        from onnx import numpy_helper

        self.graph = graph
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        self.constants[node.output[0]] = numpy_helper.to_array(attr.t)

    def op(self, tensor: str, op_type: str) -> Any | None:
        node = self.producer.get(tensor)
        return node if node is not None and node.op_type == op_type else None

    def const(self, tensor: str) -> np.ndarray | None:
        return self.constants.get(tensor)


def _other(node: Any, tensor: str) -> str | None:
    """The input of a two-input node that is not `tensor` (None if neither or both are)."""
    a, b = node.input[0], node.input[1]
    return b if a == tensor and b != tensor else a if b == tensor and a != tensor else None


def _match_layer_norm(g: _Graph, out_add: Any, ranks: dict[str, int]) -> dict | None:
    """Match y = x * s + R at `out_add`, where s = rsqrt(var + eps) [* gamma], R = -mean * s
    [+ beta], mean and var taken over the last axis of x. Returns the parts, or None."""
    for i in (0, 1):
        scaled = g.op(out_add.input[i], "Mul")
        rest = out_add.input[1 - i]
        if scaled is None:
            continue
        for j in (0, 1):
            x, s = scaled.input[j], scaled.input[1 - j]
            parts = _match_rest(g, rest, x, s, ranks)
            if parts is not None:
                return {**parts, "x": x, "nodes": parts["nodes"] + [scaled, out_add]}
    return None


def _const_beside(g: _Graph, node, op_type: str):
    """(the constant input, the other input) of a two-input `node` whose other input an `op_type`
    node produces, in either order; None when it is not that shape."""
    for k in (0, 1):
        if g.const(node.input[k]) is not None and g.op(node.input[1 - k], op_type) is not None:
            return g.const(node.input[k]), node.input[1 - k]
    return None


def _match_rest(g: _Graph, rest: str, x: str, s: str, ranks: dict[str, int]) -> dict | None:
    beta, nodes = None, []
    add = g.op(rest, "Add")
    if add is not None:  # R = -mean * s + beta
        found = _const_beside(g, add, "Mul")
        if found is None:
            return None
        (beta, rest), nodes = found, [add]
    shift = g.op(rest, "Mul")
    if shift is None or _other(shift, s) is None:
        return None
    neg = g.op(_other(shift, s), "Neg")
    if neg is None:
        return None
    mean = neg.input[0]
    mean_node = _mean_over_last(g, mean, x, ranks)
    # s = Reciprocal(Sqrt(var + eps)) [* gamma]
    gamma, scale_nodes = None, []
    mul = g.op(s, "Mul")
    if mul is not None:
        found = _const_beside(g, mul, "Reciprocal")
        if found is None:
            return None
        (gamma, s), scale_nodes = found, [mul]
    recip = g.op(s, "Reciprocal")
    sqrt = g.op(recip.input[0], "Sqrt") if recip is not None else None
    plus = g.op(sqrt.input[0], "Add") if sqrt is not None else None
    if mean_node is None or plus is None:
        return None
    var, eps = None, None
    for k in (0, 1):
        if g.const(plus.input[k]) is not None and g.const(plus.input[k]).size == 1:
            eps, var = float(g.const(plus.input[k]).ravel()[0]), plus.input[1 - k]
    if var is None:
        return None
    square = g.op(var, "GlobalAveragePool") or g.op(var, "ReduceMean")
    if square is None or _mean_over_last(g, var, None, ranks) is None:
        return None
    sq = g.op(square.input[0], "Mul")
    diff = g.op(sq.input[0], "Sub") if sq is not None and sq.input[0] == sq.input[1] else None
    if diff is None or list(diff.input) != [x, mean]:
        return None
    return {"mean": mean, "eps": eps, "gamma": gamma, "beta": beta,
            "nodes": [mean_node, diff, sq, square, plus, sqrt, recip, neg, shift] + scale_nodes + nodes}


def _mean_over_last(g: _Graph, tensor: str, x: str | None, ranks: dict[str, int]) -> Any | None:
    """The node making `tensor` the mean of x over its last axis (keepdims), or None."""
    node = g.producer.get(tensor)
    if node is None or (x is not None and node.input[0] != x):
        return None
    rank = ranks.get(node.input[0])
    if node.op_type == "GlobalAveragePool":  # over every axis after the second: the last one only for rank 3
        return node if rank == 3 else None
    if node.op_type == "ReduceMean" and rank:
        axes = [a.ints for a in node.attribute if a.name == "axes"]
        keep = [a.i for a in node.attribute if a.name == "keepdims"]
        if len(node.input) > 1 and g.const(node.input[1]) is not None:
            axes = [list(g.const(node.input[1]).ravel())]
        if axes and [int(a) % rank for a in axes[0]] == [rank - 1] and (not keep or keep[0] == 1):
            return node
    return None


def fuse_layer_norms(model: Any) -> int:
    """Rewrite every LayerNorm chain of `model` (an onnx ModelProto, opset >= 17) as one
    LayerNormalization node, in place. Returns how many were fused (0 leaves it untouched)."""
    import onnx
    from onnx import helper, numpy_helper

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < LAYER_NORM_OPSET:
        return 0
    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
             if v.type.tensor_type.HasField("shape")}
    graph = model.graph
    g = _Graph(graph)
    outputs = {v.name for v in graph.output}
    replaced: dict[int, Any] = {}  # id(final Add) -> the LayerNormalization node
    dropped: set[int] = set()
    fused = 0
    for node in list(graph.node):
        if node.op_type != "Add" or id(node) in dropped:
            continue
        parts = _match_layer_norm(g, node, ranks)
        if parts is None:
            continue
        inside = {id(n) for n in parts["nodes"]}
        # every intermediate tensor must be read only inside the chain
        if any(out in outputs or any(id(c) not in inside for c in g.consumers.get(out, []))
               for n in parts["nodes"] if n is not node for out in n.output):
            continue
        width = _last_dim(inferred, parts["x"])
        gamma, beta = parts["gamma"], parts["beta"]
        if width is None or (gamma is not None and gamma.size != width) or (beta is not None and beta.size != width):
            continue
        name = node.name or f"dfx_layer_norm_{fused}"
        scale = numpy_helper.from_array(np.ones(width, np.float32) if gamma is None else gamma.astype(np.float32).reshape(width),
                                        f"{name}/gamma")
        bias = numpy_helper.from_array(np.zeros(width, np.float32) if beta is None else beta.astype(np.float32).reshape(width),
                                       f"{name}/beta")
        graph.initializer.extend([scale, bias])
        replaced[id(node)] = helper.make_node("LayerNormalization", [parts["x"], scale.name, bias.name], [node.output[0]],
                                              name=f"{name}/LayerNormalization", axis=-1, epsilon=parts["eps"])
        dropped |= inside
        fused += 1
    if not fused:
        return 0
    nodes = [replaced.get(id(n), n) for n in graph.node if id(n) not in dropped or id(n) in replaced]
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for n in graph.node for name in n.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return fused


def _last_dim(model: Any, tensor: str) -> int | None:
    for value in list(model.graph.value_info) + list(model.graph.input):
        if value.name == tensor:
            dims = value.type.tensor_type.shape.dim
            return int(dims[-1].dim_value) if dims and dims[-1].HasField("dim_value") else None
    return None


# ---- a backbone's CLS tokens ------------------------------------------------------------------


def tokens_tensor(model: Any) -> str | None:
    """The tensor holding the tower's CLS tokens (N, blocks, width): the output of the last node
    of the Keras `cls_tokens` layer. None for graphs without one (the CNNs)."""
    pattern = re.compile(rf"(?:^|/){TOKENS_LAYER}(?:_\d+)?/")
    names = [n.output[0] for n in model.graph.node if pattern.search(n.name)]
    return names[-1] if names else None


def with_tokens_output(model: Any) -> Any | None:
    """A copy of `model` that also outputs the CLS tokens as `dfx_block_tokens` (after the
    logits), or None when it has none. FP16 graphs give them in float16."""
    import onnx
    from onnx import helper

    tensor = tokens_tensor(model)
    if tensor is None:
        return None
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    typed = {v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    copy.graph.node.append(helper.make_node("Identity", [tensor], [TOKENS_OUTPUT], name="dfx_block_tokens_tap"))
    elem = typed.get(tensor, onnx.TensorProto.FLOAT)
    copy.graph.output.append(helper.make_tensor_value_info(TOKENS_OUTPUT, elem, ["batch", None, None]))
    return copy


# ---- units the INT8 search chooses among ------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """A piece of a transformer graph that is kept float or quantized as a whole."""

    name: str  # "embedding", "block<i>.attention" (LN1, q/k/v, the two attention MatMuls, out) or "block<i>.mlp" (fc1, fc2)
    nodes: tuple[str, ...]  # its nodes' names, in graph order

    @property
    def block(self) -> int | None:
        """The block this unit belongs to (None for the embedding)."""
        return int(self.name[5:].split(".")[0]) if self.name.startswith("block") else None


def transformer_units(path_or_model: Any) -> list[Unit]:
    """The patch embedding, then each block's attention and MLP halves, of a dfx clip_vit
    graph, in order, by the Keras layer names tf2onnx keeps in node names (`block3/fc1/...`).
    [] when the graph is not a transformer (no blocks, or a block without a Softmax)."""
    model = _load(path_or_model)
    embedding: list[str] = []
    halves: dict[tuple[int, str], list[str]] = {}
    attends: set[int] = set()
    for node in model.graph.node:
        if not node.name:
            continue
        found = _BLOCK.search(node.name)
        if found:
            block = int(found.group(1))
            half = "mlp" if _MLP.search(node.name[found.end():]) else "attention"
            halves.setdefault((block, half), []).append(node.name)
            if node.op_type == "Softmax":
                attends.add(block)
        elif _EMBEDDING.search(node.name):
            embedding.append(node.name)
    blocks = sorted({block for block, _ in halves})
    if not blocks or set(blocks) != attends:  # every block attends, or this is not a transformer
        return []
    units = [Unit("embedding", tuple(embedding))] if embedding else []
    for block in blocks:
        units += [Unit(f"block{block}.{half}", tuple(halves[block, half])) for half in ("attention", "mlp")
                  if (block, half) in halves]
    return units


def mlp_output_nodes(units: list[Unit]) -> tuple[str, ...]:
    """The nodes of every block's second MLP layer (fc2). Its input, the GELU's output, has
    outliers in a few *tokens* (not channels) from the middle blocks on; per-tensor int8 cannot
    hold them and no per-channel smoothing moves them: on the CLIP ViT-B/16 default, quantizing
    everything but the patch embedding left the last block's tokens at cosine 0.867 (uint8,
    LayerNorms smoothed; 0.905 with fc2's inputs smoothed too) and 0.992 with fc2 float."""
    return tuple(node for unit in units if unit.name.endswith(".mlp") for node in unit.nodes if _MLP_OUT.search(node))


def _load(path_or_model: Any) -> Any:
    import onnx

    if isinstance(path_or_model, (str, os.PathLike)):
        return onnx.load(os.fspath(path_or_model), load_external_data=False)
    return path_or_model
