"""OpenVINO Runner: the bundle's FP32 and INT8 (Q/DQ) ONNX files, as they are, on Intel/AMD CPUs.

OpenVINO reads the very same ONNX files that ONNX Runtime runs: `model.onnx`, and for INT8
`model.int8.cpu.onnx` (the uint8 twin `dfx export` writes beside TensorRT's symmetric
`model.int8.onnx`, from the same calibration), or `model.int8.onnx` itself in a bundle without
the twin. No conversion to OpenVINO's format and no second calibration. Its CPU plugin turns the
Q/DQ pairs into int8 kernels and fuses Conv+ReLU+MaxPool chains, which makes it dfx's fastest
CPU path (benchmarks/README.md has the ratios this machine measured).

Speed choices (measured on a 2-vCPU host, seed CNN at 256 px; see benchmarks/README.md):
- one compiled model per batch shape served (static shapes let the plugin pick its blocked
  layouts once), each with one pre-created infer request that is reused;
- the LATENCY hint with one stream using all physical cores: a single synchronous request per
  batch is how the Runner contract is called, and THROUGHPUT streams only help with several
  requests in flight;
- uint8 pixels go straight in: a pre-processing step inside the compiled model converts them
  to float32, so no float32 copy of the batch is made in Python.

A runner runs the precision it reports. OpenVINO's CPU plugin silently executes float layers in
bf16 on CPUs with AVX512-BF16 or AMX (its default INFERENCE_PRECISION_HINT there); measured on
such hosts, `model.onnx` then differs from ONNX Runtime by 0.05 in the logit. So every compile
pins the hint to f32 and reads it back from the compiled model; a mismatch is a RunnerError.

`precision="bf16"` runs `model.onnx` with its *weighted layers* (convolutions and matmuls by a
weight) in bf16 and everything between them (residual adds, LayerNorm, softmax, attention
products, activations) in f32: each such layer's inputs are converted to bf16 in the graph and
its output back to f32, and the hint stays f32. OpenVINO's own bf16 hint runs every layer in
bf16; on the CLIP ViT-B/16 default that moved logits by 0.13 on average (max 1.56, 2 of 1,145
decisions flipped: parity could not vouch for it), the weighted-layers form by 0.04 (max 0.14)
at ~80% of its speed (AMX Xeon, 96 validation images; docs/export-and-parity.md). The first
weighted layer, which reads the pixels, stays f32 (bf16_weighted_layers says why). The layers
that ran bf16 are counted from the compiled model; none is a RunnerError. Needs native
bf16 (AVX512-BF16 or AMX: OpenVINO's `BF16` optimization capability); refused elsewhere.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from dfx.errors import require
from dfx.runtime.runners.base import Runner, RunnerError, Source, cpu_flags, physical_cores

HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")
PRECISIONS = ("fp32", "fp16", "int8", "bf16")
# Every form compiles with INFERENCE_PRECISION_HINT f32: the fp16 file's weights are float16
# values and its arithmetic, like the int8 form's float parts, runs f32; bf16 is placed in the
# graph itself, on the weighted layers only (bf16_weighted_layers).
EXECUTION_HINT = "f32"
BF16_LAYERS = ("Convolution", "MatMul")  # layers converted to bf16 when one input is a weight


def bf16_status() -> tuple[bool, str]:
    """(True, "") when OpenVINO's CPU plugin has native bf16 here, else (False, why)."""
    if not available():
        return False, "openvino is not installed"
    import openvino as ov

    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" in caps:
        return True, ""
    return False, f"this CPU has no native bf16 (needs AVX512-BF16 or AMX; OpenVINO reports {', '.join(caps)})"


def has_amx() -> bool:
    """True when the CPU has AMX tiles for bf16 (Linux /proc/cpuinfo flag `amx_bf16`).

    Native bf16 pays off for the CNNs here only with AMX: measured on an AMD EPYC (Zen 4,
    AVX512-BF16 without AMX), the seed CNN at 256 px ran 43 images/s in bf16 against 44 in fp32
    (benchmarks/README.md), while on an AMX Xeon bf16 ran ~3x fp32."""
    return "amx_bf16" in cpu_flags()


def available() -> bool:
    """True when the `openvino` module can be imported (the `openvino` extra is installed)."""
    import importlib.util

    try:
        return importlib.util.find_spec("openvino") is not None
    except (ImportError, ValueError):
        return False


class OpenVinoRunner(Runner):
    """Runs an ONNX model (float32 NHWC RGB 0..255 in, (N, 1) logits out) with OpenVINO on the CPU."""

    backend = "openvino"

    def __init__(
        self,
        source: Source,
        precision: str = "fp32",
        input_size: tuple[int, int] | None = None,
        threads: int | None = None,
        hint: str = "LATENCY",
        device: str = "CPU",
        static_batch: bool = True,
        uint8_input: bool = True,
        max_shapes: int = 4,
        sub_batch: int | None = None,
        name: str | None = None,
    ):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        if hint.upper() not in HINTS:
            raise ValueError(f"hint must be one of {HINTS}, not {hint!r}")
        if max_shapes < 1:
            raise ValueError("max_shapes must be >= 1")
        if sub_batch is not None and sub_batch < 1:
            raise ValueError("sub_batch must be >= 1 or None")
        self.precision = precision  # what the file holds; shown in scan rows and bench tables
        self.threads = threads  # None: the machine's physical cores
        self.hint = hint.upper()
        self.device = device
        # Static: one compile per batch size served (fastest kernels); dynamic: one compile for all.
        self.static_batch = static_batch
        self.uint8_input = uint8_input  # convert pixels inside the compiled model, not in numpy
        self.max_shapes = max_shapes  # compiled batch shapes kept; a scan's odd tail batch adds one
        # Larger batches run as chunks of this many images: a 256 px CNN's activations at batch
        # 32 spill far out of cache, chunks keep them closer (None: the whole batch at once).
        self.sub_batch = sub_batch
        super().__init__(source, input_size=input_size, name=name or f"openvino-{precision}")
        self._core: Any = None
        self._model: Any = None
        # batch size (or -1 for the dynamic model) -> (compiled model, its infer request)
        self._compiled: "OrderedDict[int, tuple[Any, Any]]" = OrderedDict()

    # ---- the contract ----------------------------------------------------------------------
    def _activate(self) -> None:
        ov = require("openvino", "openvino", "the OpenVINO backend")
        self._ov = ov
        self._core = ov.Core()
        if self.precision == "bf16":
            ok, why = bf16_status()
            if not ok:
                raise RunnerError(f"{self.name}: cannot run bf16: {why}")
        source = self._load_source()
        try:
            model = source if isinstance(source, ov.Model) else self._core.read_model(source)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses for unreadable files
            shown = source if isinstance(source, str) else "the model"
            raise RunnerError(f"OpenVINO cannot read {shown}: {exc}") from exc
        if len(model.inputs) != 1:
            raise RunnerError(f"{self.name}: expected one model input, found {len(model.inputs)}")
        shape = model.inputs[0].get_partial_shape()
        if shape.rank.is_static and shape.rank.get_length() == 4:
            height, width = shape[1], shape[2]
            if self.input_size is None and height.is_static and width.is_static:
                self.input_size = (height.get_length(), width.get_length())
        if self.precision == "bf16":
            bf16_weighted_layers(model, ov)
        self._model = model
        if self.input_size is None:
            raise RunnerError(f"{self.name}: the model does not fix its input size; pass input_size=(H, W)")

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        chunk = self.sub_batch or len(batch)
        if len(batch) <= chunk:
            return self._run(batch)
        logits = np.empty(len(batch), np.float32)
        for start in range(0, len(batch), chunk):
            logits[start : start + chunk] = self._run(batch[start : start + chunk])
        return logits

    def _run(self, batch: np.ndarray) -> np.ndarray:
        request = self._request(batch.shape[0])
        feed = batch if self.uint8_input else batch.astype(np.float32)
        # share_inputs: OpenVINO reads the numpy buffer in place instead of copying it in.
        request.infer({0: feed}, share_inputs=True)
        # The output tensor is reused by the next call: copy out the N logits (a few bytes).
        return np.array(request.get_output_tensor(0).data, dtype=np.float32).reshape(-1)

    def _deactivate(self) -> None:
        self._compiled.clear()
        self._model = None
        self._core = None

    # ---- compiling ---------------------------------------------------------------------------
    def _request(self, batch_size: int) -> Any:
        key = batch_size if self.static_batch else -1
        entry = self._compiled.get(key)
        if entry is None:
            entry = self._compile(key)
            self._compiled[key] = entry
            while len(self._compiled) > self.max_shapes:
                self._compiled.popitem(last=False)  # drop the least recently used shape
        else:
            self._compiled.move_to_end(key)
        return entry[1]

    def _compile(self, batch_size: int) -> tuple[Any, Any]:
        ov = self._ov
        model = self._model.clone()
        height, width = self.input_size  # type: ignore[misc]
        batch_dim = ov.Dimension(batch_size) if batch_size > 0 else ov.Dimension()
        model.reshape({model.inputs[0]: ov.PartialShape([batch_dim, ov.Dimension(height), ov.Dimension(width), ov.Dimension(3)])})
        if self.uint8_input:
            ppp = ov.preprocess.PrePostProcessor(model)
            ppp.input().tensor().set_element_type(ov.Type.u8)
            ppp.input().preprocess().convert_element_type(ov.Type.f32)
            model = ppp.build()
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": self.hint,
            "INFERENCE_NUM_THREADS": self.threads or physical_cores(),
            "INFERENCE_PRECISION_HINT": EXECUTION_HINT,
        }
        try:
            compiled = self._core.compile_model(model, self.device, config)
        except Exception as exc:
            raise RunnerError(f"OpenVINO cannot compile {self.name} for {self.device} at batch {batch_size}: {exc}") from exc
        ran = executed_precision(compiled)
        if ran != EXECUTION_HINT:
            raise RunnerError(f"{self.name}: OpenVINO compiled for {ran} instead of {EXECUTION_HINT}; refusing to run "
                              "a precision other than the one reported")
        self.bf16_layers = bf16_layer_count(compiled)
        if self.precision == "bf16" and not self.bf16_layers:
            raise RunnerError(f"{self.name}: OpenVINO ran no layer in bf16; refusing to report bf16")
        self.execution_precision = "bf16 weighted layers, f32 elsewhere" if self.bf16_layers else "fp32"
        return compiled, compiled.create_infer_request()

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(execution_precision=getattr(self, "execution_precision", None), hint=self.hint,
                    threads=self.threads or physical_cores(), device=self.device, static_batch=self.static_batch)
        return info



def executed_precision(compiled: Any) -> str:
    """The float precision a compiled model runs ("f32", "bf16", "f16"), read back from it."""
    value = compiled.get_property("INFERENCE_PRECISION_HINT")
    name = getattr(value, "get_type_name", lambda: str(value))()  # an ov.Type: "f32" / "bf16"
    return {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(str(name), str(name))


def bf16_weighted_layers(model: Any, ov: Any) -> int:
    """Run each convolution and matmul by a weight in bf16, in place: its inputs converted to
    bf16 and its output back to f32, so that the residual stream, normalisation, softmax and
    activations between them stay f32 (the compile's hint is f32). The first one, which reads
    the pixels, stays f32 as in the int8 forms: bf16's 8-bit mantissa would round away the
    pixel-level traces (with it in bf16 the ViT's logits moved 3x as much). Returns how many."""
    from openvino import opset13

    weighted = [node for node in model.get_ordered_ops()
                if node.get_type_name() in BF16_LAYERS and any(_is_weight(node.input_value(i)) for i in range(2))]
    converted = 0
    for node in weighted[1:]:
        for i in range(2):
            node.input(i).replace_source_output(opset13.convert(node.input_value(i), ov.Type.bf16).output(0))
        readers = list(node.output(0).get_target_inputs())
        back = opset13.convert(node.output(0), ov.Type.f32)
        for reader in readers:
            reader.replace_source_output(back.output(0))
        converted += 1
    model.validate_nodes_and_infer_types()
    return converted


def _is_weight(value: Any) -> bool:
    """True when a layer input is a constant (a weight), seen through converts and reshapes."""
    node = value.get_node()
    while node.get_type_name() in ("Convert", "Reshape", "Transpose", "Unsqueeze", "Squeeze"):
        node = node.input_value(0).get_node()
    return node.get_type_name() == "Constant"


def bf16_layer_count(compiled: Any) -> int:
    """How many convolutions and matmuls of a compiled model execute in bf16 (its runtime graph)."""
    count = 0
    for node in compiled.get_runtime_model().get_ops():
        info = node.get_rt_info()
        if str(info["layerType"].astype(str)) in ("Convolution", "FullyConnected", "MatMul") and \
                str(info["runtimePrecision"].astype(str)) == "bf16":
            count += 1
    return count

