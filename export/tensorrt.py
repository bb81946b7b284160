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
