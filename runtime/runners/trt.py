"""TensorRT Runner (TensorRT 10 and 11, full `tensorrt` or `tensorrt_lean`).

Written on a machine with no GPU and no TensorRT. Its chunk pipelining (slots, round robin,
chunk order, early close, a failed chunk) runs on every CPU in tests/test_trt_pipeline.py,
through a numpy-backed CudaApi and an engine that computes on it. It follows the TensorRT 10/11 Python API — tensor-name I/O
(`num_io_tensors`, `get_tensor_name`, `get_tensor_mode`, `get_tensor_dtype`,
`get_tensor_profile_shape`), `set_input_shape`, `set_tensor_address`, `execute_async_v3` — and
uses no removed binding-index call. Its tests are marked `gpu` and skip with a reason elsewhere.

How a batch flows (N_STREAMS slots, round robin; each slot owns a CUDA stream, an execution
context, page-locked host buffers, device buffers and timing events):

    slot k:  [cast uint8->input dtype into pinned memory] H2D ─► execute_async_v3 ─► D2H
    slot k+1:                     H2D ─► execute ─► D2H            (own stream, own context)

so the copy in of batch i+1, the compute of batch i and the copy out of batch i-1 overlap.
`infer_many(batches)` pipelines an iterable of batches that way; `infer(batch)` (the Runner
contract) splits a batch larger than the engine's max batch into chunks and pipelines those.

Optional CUDA-graph capture (`cuda_graph=True`): for the engine's max batch, each slot captures
its `execute_async_v3` once and replays it with one launch, which saves the per-layer launch
cost on small models. Other batch sizes run normally.

Timings: after every batch `runner.last_timings` holds {"batch", "h2d_ms", "compute_ms",
"d2h_ms"} from CUDA events on the slot's stream; `runner.profile(batch, iters)` returns the
median of each stage over `iters` sequential runs plus "pipelined_ms_per_batch", the wall time
per batch when `iters` copies of the batch go through `infer_many` (what a scan sees).

Security: an engine is executable code. The runner reads the bytes once and, when given
`expected_sha256` (choose_runner passes the manifest's), checks those very bytes before
deserialising them, so a file swapped after Bundle.verify is still refused.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np

from dfx.errors import MissingExtraError
from dfx.runtime.runners.base import Runner, RunnerError, Source

N_STREAMS = 3  # copy-in, compute and copy-out of three consecutive batches in flight


def _import_tensorrt(lean: bool) -> Any:
    """The full `tensorrt` module, or `tensorrt_lean` for a lean engine when that is what is
    installed. A full TensorRT also runs lean (version-compatible) engines."""
    names = ("tensorrt_lean", "tensorrt") if lean else ("tensorrt",)
    for name in names:
        if importlib.util.find_spec(name) is not None:
            return importlib.import_module(name)
    if lean:
        raise MissingExtraError("tensorrt_lean", "trt", "running a lean TensorRT engine")
    raise MissingExtraError("tensorrt", "trt", "running a TensorRT engine")


_VERSION: list[str | None] = []


def installed_version() -> str | None:
    """The installed TensorRT version ("10.8.0.43"), full or lean; None when neither is present."""
    if not _VERSION:
        version = None
        for name in ("tensorrt", "tensorrt_lean"):
            if importlib.util.find_spec(name) is None:
                continue
            try:
                version = str(importlib.import_module(name).__version__)
                break
            except Exception:  # a placeholder wheel without the libraries: treat as absent
                continue
        _VERSION.append(version)
    return _VERSION[0]


def _nptype(trt: Any, dtype: Any) -> np.dtype:
    """numpy dtype of a TensorRT DataType (trt.nptype where present; the lean module may lack it)."""
    if hasattr(trt, "nptype"):
        return np.dtype(trt.nptype(dtype))
    table = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32,
             "INT64": np.int64, "BOOL": np.bool_, "UINT8": np.uint8}
    name = getattr(dtype, "name", str(dtype)).split(".")[-1]
    if name not in table:
        raise RunnerError(f"TensorRT tensor type {name} has no numpy equivalent")
    return np.dtype(table[name])


@dataclass
class _Slot:
    """One in-flight batch's worth of resources."""

    stream: Any
    context: Any
    host_in: Any  # HostBuffer (max_batch, H, W, 3) input dtype
    dev_in: Any
    host_out: Any  # HostBuffer (max_batch, *out_tail) output dtype
    dev_out: Any
    events: list[Any]  # start, after H2D, after compute, after D2H
    graph: Any = None  # executable CUDA graph for max_batch, when captured
    pending: int = 0  # images in flight in this slot (0 = idle)
    shape: tuple[int, ...] | None = field(default=None)  # input shape last set on the context


class TrtRunner(Runner):
    """Runs a serialised TensorRT engine whose input is NHWC RGB (0..255) and output (N, 1)."""

    backend = "trt"

    def __init__(
        self,
        source: Source,
        precision: str = "fp16",
        input_size: tuple[int, int] | None = None,
        max_batch: int = 32,
        lean: bool = False,
        streams: int = N_STREAMS,
        cuda_graph: bool = False,
        expected_sha256: str | None = None,
        name: str | None = None,
    ):
        self.precision = precision
        super().__init__(source, input_size=input_size, name=name or f"trt-{precision}")
        self.max_batch = int(max_batch)
        self.lean = lean
        self.n_streams = max(1, int(streams))
        self.cuda_graph = cuda_graph
        self.expected_sha256 = expected_sha256
        self.last_timings: dict[str, float] = {}
        self._slots: list[_Slot] = []

    # ---- activation ----------------------------------------------------------------------------
    def _engine_bytes(self) -> bytes:
        loaded = self._load_source()
        if isinstance(loaded, (bytes, bytearray, memoryview)):
            data = bytes(loaded)
        else:
            with open(loaded, "rb") as handle:
                data = handle.read()
        if self.expected_sha256 is not None:
            actual = hashlib.sha256(data).hexdigest()
            if actual != self.expected_sha256:
                raise RunnerError(
                    f"refusing to load the TensorRT engine: sha256 {actual[:12]}… is not the "
                    f"{self.expected_sha256[:12]}… the manifest vouches for",
                    hint="re-run `dfx export` to rebuild the engine",
                )
        return data

    def _activate(self) -> None:
        from dfx.runtime.runners import cuda as cuda_mod

        data = self._engine_bytes()  # checked before TensorRT (or CUDA) sees a byte of it
        trt = _import_tensorrt(self.lean)
        self._trt = trt
        self._cuda = cuda = cuda_mod.api()
        cuda.set_device(0)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        if self.lean and trt.__name__ == "tensorrt":
            # A version-compatible engine embeds its lean runtime (host code); we vouched for
            # the bytes above, so allow it.
            self._runtime.engine_host_code_allowed = True
        engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise RunnerError(
                "TensorRT could not deserialise the engine (built for another GPU or TensorRT version?)",
                hint="rebuild engines on this machine with `dfx export --engine`",
            )
        self._engine = engine
        inputs: list[str] = []
        outputs: list[str] = []
        for i in range(engine.num_io_tensors):
            tname = engine.get_tensor_name(i)
            (inputs if engine.get_tensor_mode(tname) == trt.TensorIOMode.INPUT else outputs).append(tname)
        if len(inputs) != 1 or len(outputs) != 1:
            raise RunnerError(f"expected one input and one output tensor, the engine has {inputs} -> {outputs}")
        self._in, self._out = inputs[0], outputs[0]
        self._in_dtype = _nptype(trt, engine.get_tensor_dtype(self._in))
        self._out_dtype = _nptype(trt, engine.get_tensor_dtype(self._out))
        in_shape = tuple(engine.get_tensor_shape(self._in))  # (-1, H, W, 3) for a dynamic batch
        if len(in_shape) != 4 or in_shape[3] != 3:
            raise RunnerError(f"engine input {self._in} has shape {in_shape}, expected (N, H, W, 3)")
        if in_shape[0] == -1:
            profile_max = tuple(engine.get_tensor_profile_shape(self._in, 0)[2])
            self.max_batch = min(self.max_batch, int(profile_max[0]))
        else:
            self.max_batch = int(in_shape[0])
        height, width = int(in_shape[1]), int(in_shape[2])
        if height < 0 or width < 0:
            raise RunnerError("engines with a dynamic image size are not supported; build them for the bundle's size")
        if self.input_size is None:
            self.input_size = (height, width)
        elif tuple(self.input_size) != (height, width):
            raise RunnerError(f"engine takes {height}x{width}, the bundle says {self.input_size[0]}x{self.input_size[1]}")
        out_tail = tuple(int(d) for d in engine.get_tensor_shape(self._out))[1:]
        self._out_tail = tuple(1 if d < 0 else d for d in out_tail)
        self._item_in = height * width * 3 * self._in_dtype.itemsize
        self._item_out = int(np.prod(self._out_tail, dtype=np.int64)) * self._out_dtype.itemsize
        try:
            for _ in range(self.n_streams):
                self._slots.append(self._make_slot(height, width))
            if self.cuda_graph:
                for slot in self._slots:
                    self._capture(slot)
        except BaseException:
            self._deactivate()
            raise

    def _make_slot(self, height: int, width: int) -> _Slot:
        cuda = self._cuda
        context = self._engine.create_execution_context()
        if context is None:
            raise RunnerError("TensorRT could not create an execution context (out of GPU memory?)")
        host_in = cuda.host_alloc((self.max_batch, height, width, 3), self._in_dtype)
        host_out = cuda.host_alloc((self.max_batch, *self._out_tail), self._out_dtype)
        dev_in = cuda.device_alloc(self.max_batch * self._item_in)
        dev_out = cuda.device_alloc(self.max_batch * max(1, self._item_out))
        slot = _Slot(cuda.stream_create(), context, host_in, dev_in, host_out, dev_out,
                     [cuda.event_create() for _ in range(4)])
        # Addresses are fixed for the slot's life: set once (required before execute_async_v3).
        if not context.set_tensor_address(self._in, dev_in.ptr) or not context.set_tensor_address(self._out, dev_out.ptr):
            raise RunnerError("TensorRT refused a tensor address")
        return slot

    def _set_shape(self, slot: _Slot, n: int) -> None:
        shape = (n, *self.input_size, 3)  # type: ignore[misc]
        if slot.shape != shape:
            if not slot.context.set_input_shape(self._in, shape):
                raise RunnerError(f"TensorRT rejected input shape {shape} (engine max batch {self.max_batch})")
            slot.shape = shape

    def _capture(self, slot: _Slot) -> None:
        """Capture this slot's execute_async_v3 at max_batch into a CUDA graph."""
        cuda = self._cuda
        self._set_shape(slot, self.max_batch)
        handle = cuda.stream_handle(slot.stream)
        # One plain run first: TensorRT defers some set-up work to the first enqueue, and
        # that work must not be captured.
        if not slot.context.execute_async_v3(handle):
            raise RunnerError("TensorRT execute_async_v3 failed (warm-up before graph capture)")
        cuda.stream_synchronize(slot.stream)
        cuda.graph_begin_capture(slot.stream)
        try:
            ok = slot.context.execute_async_v3(handle)
        finally:
            graph = cuda.graph_end_capture(slot.stream)
        if not ok:
            cuda.graph_destroy(graph)
            raise RunnerError("TensorRT execute_async_v3 failed during CUDA-graph capture")
        slot.graph = graph

    def _deactivate(self) -> None:
        cuda = getattr(self, "_cuda", None)
        for slot in self._slots:
            if cuda is None:
                break
            try:
                cuda.stream_synchronize(slot.stream)
            finally:
                if slot.graph is not None:
                    cuda.graph_destroy(slot.graph)
                for event in slot.events:
                    cuda.event_destroy(event)
                cuda.host_free(slot.host_in)
                cuda.host_free(slot.host_out)
                cuda.device_free(slot.dev_in)
                cuda.device_free(slot.dev_out)
                cuda.stream_destroy(slot.stream)
                slot.context = None
        self._slots = []
        self._engine = None
        self._runtime = None

    # ---- inference -----------------------------------------------------------------------------
    def _submit(self, slot: _Slot, batch: np.ndarray) -> None:
        """Enqueue H2D, compute and D2H for `batch` on the slot's stream; returns at once."""
        cuda = self._cuda
        n = int(batch.shape[0])
        # uint8 -> the engine's input dtype, straight into pinned memory (one host pass).
        np.copyto(slot.host_in.array[:n], batch, casting="unsafe")
        start, copied_in, computed, copied_out = slot.events
        cuda.event_record(start, slot.stream)
        cuda.memcpy_htod_async(slot.dev_in, slot.host_in, n * self._item_in, slot.stream)
        cuda.event_record(copied_in, slot.stream)
        if slot.graph is not None and n == self.max_batch:
            self._set_shape(slot, n)  # keep the context's shape state as it was at capture
            cuda.graph_launch(slot.graph, slot.stream)
        else:
            self._set_shape(slot, n)
            if not slot.context.execute_async_v3(cuda.stream_handle(slot.stream)):
                raise RunnerError(f"TensorRT execute_async_v3 failed on a batch of {n}")
        cuda.event_record(computed, slot.stream)
        cuda.memcpy_dtoh_async(slot.host_out, slot.dev_out, n * self._item_out, slot.stream)
        cuda.event_record(copied_out, slot.stream)
        slot.pending = n

    def _collect(self, slot: _Slot) -> np.ndarray:
        """Wait for the slot's batch, record its stage timings, return its logits (a copy)."""
        cuda = self._cuda
        start, copied_in, computed, copied_out = slot.events
        cuda.event_synchronize(copied_out)
        n, slot.pending = slot.pending, 0
        self.last_timings = {
            "batch": float(n),
            "h2d_ms": cuda.event_elapsed_ms(start, copied_in),
            "compute_ms": cuda.event_elapsed_ms(copied_in, computed),
            "d2h_ms": cuda.event_elapsed_ms(computed, copied_out),
        }
        # Copy out of the pinned buffer: the slot is reused by the next batch.
        return np.array(slot.host_out.array[:n], dtype=np.float32).reshape(n, -1)[:, 0]

    def _pipeline(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Logits per input batch, in order; each batch is split into chunks of <= max_batch
        and the chunks go round robin over the slots, so neighbouring chunks overlap."""
        slots, k = self._slots, 0
        order: list[tuple[_Slot, int]] = []  # (slot, batch index) in flight, oldest first
        parts: list[np.ndarray] = []  # finished chunks of the oldest unfinished batch
        chunks_of: dict[int, int] = {}  # batch index -> number of chunks

        def finish(slot: _Slot, index: int) -> Iterator[np.ndarray]:
            nonlocal parts
            parts.append(self._collect(slot))
            if len(parts) == chunks_of[index]:  # chunks finish in order: the batch is complete
                yield parts[0] if len(parts) == 1 else np.concatenate(parts)
                parts = []
                chunks_of.pop(index)

        try:
            for index, batch in enumerate(batches):
                chunks_of[index] = -(-len(batch) // self.max_batch)
                for start in range(0, len(batch), self.max_batch):
                    slot = slots[k % len(slots)]
                    k += 1
                    if slot.pending:  # round robin: this slot holds the oldest chunk in flight
                        old_slot, old_index = order.pop(0)
                        assert old_slot is slot
                        yield from finish(slot, old_index)
                    try:
                        self._submit(slot, batch[start : start + self.max_batch])
                    except BaseException:
                        # The copy it enqueued before failing reads the pinned buffer: let it finish
                        # before anything reuses the slot (found by tests/test_trt_pipeline.py).
                        self._cuda.stream_synchronize(slot.stream)
                        raise
                    order.append((slot, index))
            while order:
                slot, index = order.pop(0)
                yield from finish(slot, index)
        finally:
            for slot, _ in order:  # a consumer that stopped early, or a failure: leave no work in flight
                self._cuda.stream_synchronize(slot.stream)
                slot.pending = 0

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        (logits,) = self._pipeline([batch])
        return logits

    def infer_many(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Logits for each batch, in order, with the copies and compute of neighbouring batches
        overlapping on separate streams (up to `streams` batches in flight). Holds the runner's
        lock until the iterator is exhausted or closed."""
        if not self.is_active:
            raise RunnerError(f"{self.name} is not active; use `with runner:` or runner.activate()")

        def checked() -> Iterator[np.ndarray]:
            for batch in batches:
                self._check_batch(batch)
                yield np.ascontiguousarray(batch)

        with self._lock:
            for logits in self._pipeline(checked()):
                yield np.asarray(logits, dtype=np.float32).reshape(-1)

    def profile(self, batch: np.ndarray, iters: int = 20, warmup: int = 3) -> dict[str, float]:
        """Median H2D / compute / D2H ms over `iters` sequential runs of `batch`, and the wall
        ms per batch when `iters` copies are pipelined through infer_many."""
        for _ in range(warmup):
            self.infer(batch)
        stages: dict[str, list[float]] = {"h2d_ms": [], "compute_ms": [], "d2h_ms": []}
        for _ in range(iters):
            self.infer(batch)
            for key in stages:
                stages[key].append(self.last_timings[key])
        report = {key: statistics.median(values) for key, values in stages.items()}
        began = time.perf_counter()
        for _ in self.infer_many(batch for _ in range(iters)):
            pass
        report["pipelined_ms_per_batch"] = (time.perf_counter() - began) * 1000 / iters
        report["batch"] = float(len(batch))
        report["streams"] = float(self.n_streams)
        report["cuda_graph"] = float(bool(self.cuda_graph))
        return report

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(max_batch=self.max_batch, streams=self.n_streams, cuda_graph=self.cuda_graph, lean=self.lean)
        return info

