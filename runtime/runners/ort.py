"""ONNX Runtime Runner: CPU (FP32 or INT8 Q/DQ) and CUDA (FP32/FP16 with I/O binding)."""

from __future__ import annotations

from typing import Any

import numpy as np

from dfx.errors import require
from dfx.runtime.runners.base import Runner, RunnerError, Source, physical_cores

# On the CPU a batch runs in chunks of at most this many images. Throughput there is flat past
# batch 8 (benchmarks/README.md), while memory is not: at 256 px one float activation of the
# first conv is 32 x 256 x 256 x 32 x 4 B = 268 MB at batch 32, and `dfx scan` peaked at 1.3 GB.
CPU_CHUNK = 8
# ORT's QDQ propagation moves each QuantizeLinear up over the MaxPool before it. Where that pool
# follows a float conv (the INT8 files keep the first conv float), the pool then runs as ORT's
# generic 8-bit MaxPool in NCHW on the largest feature map: at 256 px a third of the INT8 time.
# Without it the pool stays in the float conv's blocked layout and the logits are bit-identical
# (max commutes with a monotone quantizer); measured on the faces bundle, batch 8, 2 vCPU:
# 80 -> 119 images/s (benchmarks/README.md).
CPU_DISABLED_OPTIMIZERS = ["QDQPropagationTransformer"]


class OrtRunner(Runner):
    """Runs an ONNX model whose input is float32 NHWC RGB in 0..255 and whose output is (N, 1)."""

    def __init__(
        self,
        source: Source,
        device: str = "cpu",
        precision: str = "fp32",
        input_size: tuple[int, int] | None = None,
        threads: int | None = None,
        name: str | None = None,
        cpu_chunk: int = CPU_CHUNK,
    ):
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', not {device!r}")
        self.device = device
        self.backend = f"ort-{device}"
        self.precision = precision
        self.threads = threads
        self.cpu_chunk = max(1, int(cpu_chunk))
        super().__init__(source, input_size=input_size, name=name or f"ort-{device}-{precision}")
        self._session: Any = None

    def _activate(self) -> None:
        ort = require("onnxruntime", "cpu", "the ONNX Runtime backend")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Physical cores: ORT's default of all logical cores oversubscribes hyper-threads.
        options.intra_op_num_threads = self.threads or physical_cores()
        options.log_severity_level = 3
        # The memory-pattern planner pre-allocates for the largest batch seen and keeps it; with
        # chunked CPU batches that buys nothing and costs hundreds of MB.
        options.enable_mem_pattern = self.device != "cpu"
        if self.device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RunnerError(
                    "ONNX Runtime here has no CUDA provider",
                    hint="pip uninstall onnxruntime && pip install 'dfx[gpu]' (onnxruntime-gpu)",
                )
            providers = [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        model = self._load_source()
        disabled = CPU_DISABLED_OPTIMIZERS if self.device == "cpu" else None
        try:
            self._session = ort.InferenceSession(model, sess_options=options, providers=providers, disabled_optimizers=disabled)
        except Exception as exc:  # ORT raises its own exception types for bad files
            raise RunnerError(f"ONNX Runtime cannot load {model if isinstance(model, str) else 'the model'}: {exc}") from exc
        inputs = self._session.get_inputs()
        self._input_name = inputs[0].name
        self._output_name = self._session.get_outputs()[0].name
        self._input_type = inputs[0].type  # 'tensor(float)' or 'tensor(uint8)'
        shape = inputs[0].shape
        if self.input_size is None and isinstance(shape[1], int) and isinstance(shape[2], int):
            self.input_size = (shape[1], shape[2])
        if self.device == "cuda":
            self._binding = self._session.io_binding()

    def _feed(self, batch: np.ndarray) -> np.ndarray:
        # The exported models take float32 (fp16 files keep float32 I/O); accept the others too.
        if self._input_type == "tensor(uint8)":
            return batch
        return batch.astype(np.float16 if self._input_type == "tensor(float16)" else np.float32)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        if self.device == "cpu":
            chunks = [
                self._session.run([self._output_name], {self._input_name: self._feed(batch[i : i + self.cpu_chunk])})[0]
                for i in range(0, len(batch), self.cpu_chunk)
            ]
            return np.concatenate(chunks)
        feed = self._feed(batch)
        # CUDA: bind the host input once and let ORT copy it in; the output stays on the
        # device until one copy back, instead of ORT's default staging through extra buffers.
        binding = self._binding
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        binding.bind_cpu_input(self._input_name, feed)
        binding.bind_output(self._output_name, "cuda")
        self._session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def _deactivate(self) -> None:
        self._session = None
        self._binding = None

