"""TrtRunner's chunk pipelining on a CPU: the real runner, driven through a numpy-backed
implementation of the `CudaApi` interface and an engine that computes on the fake device.

The fake defers every asynchronous call: a stream's copies and kernels run only when something
waits on that stream (an event or a synchronize), in the order they were enqueued, as on a GPU.
So a runner that reused a slot's pinned buffer before its earlier copy had run, collected a slot
out of order, or left work in flight would give wrong logits or fail the checks below.
"""

from __future__ import annotations

import types
from typing import Any, Callable

import numpy as np
import pytest

from dfx.runtime.runners import cuda as cuda_module
from dfx.runtime.runners import trt as trt_module
from dfx.runtime.runners.base import RunnerError
from dfx.runtime.runners.cuda import CudaApi, DeviceBuffer, HostBuffer
from dfx.runtime.runners.trt import TrtRunner

SIZE = (8, 8)  # H, W of the fake engine's input


def model(batch: np.ndarray) -> np.ndarray:
    """What the fake engine computes: one logit per image, different for different pixels."""
    x = batch.astype(np.float64)
    return (x.mean(axis=(1, 2, 3)) / 25.5 - 5.0 + x[:, 0, 0, 0] / 1000.0).astype(np.float32)


class _Stream:
    def __init__(self, handle: int):
        self.handle = handle
        self.queue: list[Callable[[], None]] = []
        self.capture: list[Callable[[], None]] | None = None  # ops go here while a graph is captured


class FakeCuda(CudaApi):
    """CudaApi on numpy: device memory is byte arrays, streams are queues run on demand."""

    name = "fake"

    def __init__(self) -> None:
        self.streams: dict[int, _Stream] = {}
        self.device: dict[int, np.ndarray] = {}  # device address -> its bytes
        self.live_host = 0
        self.live_events = 0
        self.max_busy_streams = 0  # the most streams holding unfinished work at once
        self._next = 0x1000

    def _address(self) -> int:
        self._next += 0x1000
        return self._next

    def _enqueue(self, stream: _Stream, op: Callable[[], None]) -> None:
        if stream.capture is not None:
            stream.capture.append(op)
            return
        stream.queue.append(op)
        self.max_busy_streams = max(self.max_busy_streams, sum(1 for s in self.streams.values() if s.queue))

    @staticmethod
    def _drain(stream: _Stream, upto: Any = None) -> None:
        while stream.queue:
            op = stream.queue.pop(0)
            op()
            if upto is not None and getattr(op, "event", None) is upto:
                return

    def busy(self) -> int:
        return sum(len(s.queue) for s in self.streams.values())

    # devices
    def device_count(self) -> int:
        return 1

    def compute_capability(self, device: int = 0) -> tuple[int, int]:
        return (9, 0)

    def device_name(self, device: int = 0) -> str:
        return "numpy"

    def set_device(self, device: int = 0) -> None:
        pass

    # streams
    def stream_create(self) -> Any:
        stream = _Stream(self._address())
        self.streams[stream.handle] = stream
        return stream

    def stream_destroy(self, stream: Any) -> None:
        assert not stream.queue, "a stream destroyed with work in flight"
        del self.streams[stream.handle]

    def stream_synchronize(self, stream: Any) -> None:
        self._drain(stream)

    def stream_handle(self, stream: Any) -> int:
        return stream.handle

    # memory
    def host_alloc(self, shape: tuple[int, ...], dtype: Any) -> HostBuffer:
        array = np.zeros(shape, dtype)
        self.live_host += 1
        return HostBuffer(array=array, ptr=int(array.ctypes.data), nbytes=array.nbytes)

    def host_free(self, buffer: HostBuffer) -> None:
        self.live_host -= 1

    def device_alloc(self, nbytes: int) -> DeviceBuffer:
        ptr = self._address()
        self.device[ptr] = np.zeros(max(1, nbytes), np.uint8)
        return DeviceBuffer(ptr=ptr, nbytes=nbytes)

    def device_free(self, buffer: DeviceBuffer) -> None:
        del self.device[buffer.ptr]

    def memcpy_htod_async(self, dst: DeviceBuffer, src: HostBuffer, nbytes: int, stream: Any) -> None:
        def copy() -> None:  # reads the pinned buffer when it runs, as a DMA engine does
            self.device[dst.ptr][:nbytes] = src.array.reshape(-1).view(np.uint8)[:nbytes]

        self._enqueue(stream, copy)

    def memcpy_dtoh_async(self, dst: HostBuffer, src: DeviceBuffer, nbytes: int, stream: Any) -> None:
        def copy() -> None:
            dst.array.reshape(-1).view(np.uint8)[:nbytes] = self.device[src.ptr][:nbytes]

        self._enqueue(stream, copy)

    # events
    def event_create(self) -> Any:
        self.live_events += 1
        return types.SimpleNamespace(stream=None)

    def event_destroy(self, event: Any) -> None:
        self.live_events -= 1

    def event_record(self, event: Any, stream: Any) -> None:
        def mark() -> None:
            pass

        mark.event = event  # type: ignore[attr-defined]
        event.stream = stream
        self._enqueue(stream, mark)

    def event_synchronize(self, event: Any) -> None:
        assert event.stream is not None, "waited on an event never recorded"
        self._drain(event.stream, upto=event)

    def event_elapsed_ms(self, start: Any, end: Any) -> float:
        return 0.0

    # graphs
    def graph_begin_capture(self, stream: Any) -> None:
        stream.capture = []

    def graph_end_capture(self, stream: Any) -> Any:
        ops, stream.capture = stream.capture, None
        return ops

    def graph_launch(self, graph_exec: Any, stream: Any) -> None:
        for op in graph_exec:
            self._enqueue(stream, op)

    def graph_destroy(self, graph_exec: Any) -> None:
        pass


class _Context:
    """An execution context whose kernel runs `model` on the fake device's memory."""

    def __init__(self, cuda: FakeCuda, engine: "_Engine"):
        self.cuda, self.engine = cuda, engine
        self.addresses: dict[str, int] = {}
        self.shape: tuple[int, ...] | None = None

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = ptr
        return True

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        if not 1 <= shape[0] <= self.engine.max_batch:
            return False
        self.shape = tuple(shape)
        return True

    def execute_async_v3(self, handle: int) -> bool:
        assert self.shape is not None
        n = self.shape[0]  # fixed when enqueued, as a captured graph fixes it
        if n in self.engine.fail_on:
            return False
        src, dst = self.addresses["input"], self.addresses["output"]

        def kernel() -> None:
            pixels = self.cuda.device[src][: n * SIZE[0] * SIZE[1] * 3 * 4].view(np.float32).reshape(n, *SIZE, 3)
            self.cuda.device[dst][: n * 4] = model(pixels).view(np.uint8)

        self.cuda._enqueue(self.cuda.streams[handle], kernel)
        return True


class _Engine:
    def __init__(self, cuda: FakeCuda, max_batch: int, fail_on: tuple[int, ...]):
        self.cuda, self.max_batch, self.fail_on = cuda, max_batch, fail_on
        self.num_io_tensors = 2

    def get_tensor_name(self, i: int) -> str:
        return ("input", "output")[i]

    def get_tensor_mode(self, name: str) -> str:
        return "INPUT" if name == "input" else "OUTPUT"

    def get_tensor_dtype(self, name: str) -> str:
        return "FLOAT"

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return (-1, *SIZE, 3) if name == "input" else (-1, 1)

    def get_tensor_profile_shape(self, name: str, profile: int) -> tuple[tuple[int, ...], ...]:
        return (1, *SIZE, 3), (self.max_batch, *SIZE, 3), (self.max_batch, *SIZE, 3)

    def create_execution_context(self) -> _Context:
        return _Context(self.cuda, self)


def fake_tensorrt(cuda: FakeCuda, max_batch: int, fail_on: tuple[int, ...] = ()) -> Any:
    """The few names of the tensorrt module TrtRunner uses, over the fake device."""

    class Runtime:
        def __init__(self, logger: Any):
            pass

        def deserialize_cuda_engine(self, data: bytes) -> _Engine | None:
            return _Engine(cuda, max_batch, fail_on) if data == b"fake engine" else None

    return types.SimpleNamespace(
        __name__="tensorrt",
        Logger=type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None}),
        Runtime=Runtime,
        TensorIOMode=types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT"),
        nptype=lambda dtype: {"FLOAT": np.float32}[dtype],
    )


@pytest.fixture()
def fake(monkeypatch):
    def start(max_batch: int = 4, streams: int = 3, cuda_graph: bool = False, fail_on: tuple[int, ...] = ()) -> tuple[TrtRunner, FakeCuda]:
        cuda = FakeCuda()
        monkeypatch.setattr(cuda_module, "_API", cuda)
        monkeypatch.setattr(trt_module, "_import_tensorrt", lambda lean: fake_tensorrt(cuda, max_batch, fail_on))
        runner = TrtRunner(lambda: b"fake engine", precision="fp32", input_size=SIZE, max_batch=64, streams=streams,
                           cuda_graph=cuda_graph)
        return runner, cuda

    return start


def _batches(sizes: list[int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (n, *SIZE, 3), dtype=np.uint8) for n in sizes]


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_pipelined_batches_come_back_in_order_and_exact(fake, cuda_graph):
    runner, cuda = fake(max_batch=4, streams=3, cuda_graph=cuda_graph)
    batches = _batches([1, 4, 10, 3, 12, 2, 7, 4, 4, 1])  # chunks of <= 4, some batches split in three
    with runner:
        assert runner.max_batch == 4  # the engine's profile caps the runner's 64
        outputs = list(runner.infer_many(iter(batches)))
        assert cuda.busy() == 0  # nothing left in flight
        assert cuda.max_busy_streams == 3  # every slot held work at once: the chunks overlapped
        assert len(outputs) == len(batches)
        for batch, logits in zip(batches, outputs):
            assert logits.shape == (len(batch),)
            np.testing.assert_allclose(logits, model(batch.astype(np.float32)), rtol=0, atol=1e-5)
        one = _batches([9], seed=1)[0]  # infer() splits too
        np.testing.assert_allclose(runner.infer(one), model(one.astype(np.float32)), atol=1e-5)
    assert (cuda.live_host, cuda.live_events, len(cuda.device), len(cuda.streams)) == (0, 0, 0, 0)


def test_a_consumer_that_stops_early_leaves_no_work_in_flight(fake):
    runner, cuda = fake(max_batch=2, streams=3)
    batches = _batches([2] * 8)
    with runner:
        stream = runner.infer_many(iter(batches))
        first = next(stream)
        assert cuda.busy() > 0  # later chunks were already submitted
        stream.close()
        assert cuda.busy() == 0
        np.testing.assert_allclose(first, model(batches[0].astype(np.float32)), atol=1e-5)
        again = runner.infer(batches[5])  # the slots are reusable afterwards
        np.testing.assert_allclose(again, model(batches[5].astype(np.float32)), atol=1e-5)


def test_a_failed_chunk_raises_and_the_runner_recovers(fake):
    runner, cuda = fake(max_batch=4, streams=2, fail_on=(3,))
    batches = _batches([4, 4, 3, 4])
    with runner:
        seen = []
        with pytest.raises(RunnerError, match="execute_async_v3 failed on a batch of 3"):
            for logits in runner.infer_many(iter(batches)):
                seen.append(logits)
        assert cuda.busy() == 0
        assert len(seen) <= 2
        for batch, logits in zip(batches, seen):
            np.testing.assert_allclose(logits, model(batch.astype(np.float32)), atol=1e-5)
        np.testing.assert_allclose(runner.infer(batches[3]), model(batches[3].astype(np.float32)), atol=1e-5)


def test_an_engine_the_runtime_refuses_is_a_clear_error(fake, monkeypatch):
    runner, _ = fake()
    runner = TrtRunner(lambda: b"not an engine", precision="fp32", input_size=SIZE)
    with pytest.raises(RunnerError, match="could not deserialise"):
        runner.activate()
