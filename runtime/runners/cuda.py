"""One small interface over CUDA: the GPU probe, streams, pinned and device memory, async
copies, events and CUDA-graph capture.

The binding behind `CudaApi` is cuda-python (NVIDIA's ``cuda.bindings.runtime``; older
releases ship it as ``cuda.cudart``): wheels exist everywhere and every call returns an error
code instead of crashing, so `probe()` is safe on a machine without a driver. Nothing here
imports it at module import; nothing here touches TensorRT. tests/test_trt_pipeline.py drives
TrtRunner through a numpy-backed CudaApi, so the interface is all TrtRunner relies on.

Handles are opaque objects of the binding; `stream_handle` gives the raw ``cudaStream_t`` as an
int (what TensorRT's ``execute_async_v3`` takes) and device buffers expose `.ptr` (an int
device address, what ``set_tensor_address`` takes).

The cuda-python path ran on an NVIDIA H100 (cuda-bindings 13.3.1): the probe and the `gpu`
tests of tests/test_cuda.py (pinned round trip on a stream with events, graph capture and
replay).
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dfx.errors import DfxError

_INSTALL_HINT = "pip install 'dfx[gpu]' (installs cuda-python)"


class CudaError(DfxError):
    """A CUDA call failed, or no CUDA binding/driver/device is available."""

    def __init__(self, message: str, hint: str | None = None, code: str | None = None):
        super().__init__(message, hint=hint)
        self.code = code  # the binding's error name, e.g. "cudaErrorNoDevice"


@dataclass
class HostBuffer:
    """Page-locked host memory viewed as a numpy array (async copies need pinned memory)."""

    array: np.ndarray
    ptr: int  # host address
    nbytes: int
    _owner: Any = field(default=None, repr=False)  # keeps the binding's allocation alive


@dataclass
class DeviceBuffer:
    """Device memory: `ptr` is the device address TensorRT's set_tensor_address takes."""

    ptr: int
    nbytes: int
    _owner: Any = field(default=None, repr=False)


class CudaApi:
    """The interface. Implementations raise CudaError on any failed call."""

    name = "base"

    # devices
    def device_count(self) -> int: ...
    def compute_capability(self, device: int = 0) -> tuple[int, int]: ...
    def device_name(self, device: int = 0) -> str: ...
    def set_device(self, device: int = 0) -> None: ...

    # streams
    def stream_create(self) -> Any: ...
    def stream_destroy(self, stream: Any) -> None: ...
    def stream_synchronize(self, stream: Any) -> None: ...
    def stream_handle(self, stream: Any) -> int: ...

    # memory
    def host_alloc(self, shape: tuple[int, ...], dtype: Any) -> HostBuffer: ...
    def host_free(self, buffer: HostBuffer) -> None: ...
    def device_alloc(self, nbytes: int) -> DeviceBuffer: ...
    def device_free(self, buffer: DeviceBuffer) -> None: ...
    def memcpy_htod_async(self, dst: DeviceBuffer, src: HostBuffer, nbytes: int, stream: Any) -> None: ...
    def memcpy_dtoh_async(self, dst: HostBuffer, src: DeviceBuffer, nbytes: int, stream: Any) -> None: ...

    # events (timing, and a stream's progress the host can wait on)
    def event_create(self) -> Any: ...
    def event_destroy(self, event: Any) -> None: ...
    def event_record(self, event: Any, stream: Any) -> None: ...
    def event_synchronize(self, event: Any) -> None: ...
    def event_elapsed_ms(self, start: Any, end: Any) -> float: ...

    # CUDA graphs: capture what a stream enqueues once, replay it with one launch
    def graph_begin_capture(self, stream: Any) -> None: ...
    def graph_end_capture(self, stream: Any) -> Any: ...  # returns an executable graph
    def graph_launch(self, graph_exec: Any, stream: Any) -> None: ...
    def graph_destroy(self, graph_exec: Any) -> None: ...


# ---- cuda-python ----------------------------------------------------------------------------


def _import_cudart() -> Any:
    """`cuda.bindings.runtime` (cuda-python >= 12.6), else the older `cuda.cudart` layout."""
    try:
        from cuda.bindings import runtime  # type: ignore[import-not-found]

        return runtime
    except ImportError:
        from cuda import cudart  # type: ignore[import-not-found]

        return cudart


class CudaPython(CudaApi):
    """cuda-python runtime API: every call returns (cudaError_t, *values)."""

    name = "cuda-python"

    def __init__(self) -> None:
        self.rt = _import_cudart()

    def _check(self, result: Any, what: str) -> Any:
        err, *values = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise CudaError(f"CUDA {what} failed: {self.error_string(err)}", code=str(getattr(err, "name", err)))
        if not values:
            return None
        return values[0] if len(values) == 1 else tuple(values)

    def error_string(self, err: Any) -> str:
        try:
            _, text = self.rt.cudaGetErrorString(err)
            text = text.decode() if isinstance(text, bytes) else str(text)
        except Exception:  # the string lookup itself must never hide the code
            text = "unknown error"
        return f"{text} ({getattr(err, 'name', err)})"

    def device_count(self) -> int:
        return int(self._check(self.rt.cudaGetDeviceCount(), "cudaGetDeviceCount"))

    def compute_capability(self, device: int = 0) -> tuple[int, int]:
        attr = self.rt.cudaDeviceAttr
        major = self._check(self.rt.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMajor, device), "cudaDeviceGetAttribute")
        minor = self._check(self.rt.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMinor, device), "cudaDeviceGetAttribute")
        return int(major), int(minor)

    def device_name(self, device: int = 0) -> str:
        props = self._check(self.rt.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
        name = props.name
        if isinstance(name, bytes):
            name = name.split(b"\0", 1)[0].decode(errors="replace")
        return str(name)

    def set_device(self, device: int = 0) -> None:
        self._check(self.rt.cudaSetDevice(device), "cudaSetDevice")

    def stream_create(self) -> Any:
        # Non-blocking: our streams must not serialise against the legacy default stream.
        return self._check(self.rt.cudaStreamCreateWithFlags(self.rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")

    def stream_destroy(self, stream: Any) -> None:
        self._check(self.rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def stream_synchronize(self, stream: Any) -> None:
        self._check(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def host_alloc(self, shape: tuple[int, ...], dtype: Any) -> HostBuffer:
        dtype = np.dtype(dtype)
        nbytes = max(1, int(np.prod(shape)) * dtype.itemsize)
        ptr = int(self._check(self.rt.cudaMallocHost(nbytes), "cudaMallocHost"))
        raw = (ctypes.c_ubyte * nbytes).from_address(ptr)
        array = np.frombuffer(raw, dtype=np.uint8, count=int(np.prod(shape)) * dtype.itemsize).view(dtype).reshape(shape)
        return HostBuffer(array=array, ptr=ptr, nbytes=nbytes, _owner=raw)

    def host_free(self, buffer: HostBuffer) -> None:
        self._check(self.rt.cudaFreeHost(buffer.ptr), "cudaFreeHost")

    def device_alloc(self, nbytes: int) -> DeviceBuffer:
        ptr = int(self._check(self.rt.cudaMalloc(max(1, nbytes)), "cudaMalloc"))
        return DeviceBuffer(ptr=ptr, nbytes=nbytes)

    def device_free(self, buffer: DeviceBuffer) -> None:
        self._check(self.rt.cudaFree(buffer.ptr), "cudaFree")

    def memcpy_htod_async(self, dst: DeviceBuffer, src: HostBuffer, nbytes: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.rt.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, kind, stream), "cudaMemcpyAsync (H2D)")

    def memcpy_dtoh_async(self, dst: HostBuffer, src: DeviceBuffer, nbytes: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.rt.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, kind, stream), "cudaMemcpyAsync (D2H)")

    def event_create(self) -> Any:
        return self._check(self.rt.cudaEventCreate(), "cudaEventCreate")

    def event_destroy(self, event: Any) -> None:
        self._check(self.rt.cudaEventDestroy(event), "cudaEventDestroy")

    def event_record(self, event: Any, stream: Any) -> None:
        self._check(self.rt.cudaEventRecord(event, stream), "cudaEventRecord")

    def event_synchronize(self, event: Any) -> None:
        self._check(self.rt.cudaEventSynchronize(event), "cudaEventSynchronize")

    def event_elapsed_ms(self, start: Any, end: Any) -> float:
        return float(self._check(self.rt.cudaEventElapsedTime(start, end), "cudaEventElapsedTime"))

    def graph_begin_capture(self, stream: Any) -> None:
        # Thread-local mode: other threads' unrelated CUDA calls do not invalidate the capture.
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._check(self.rt.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")

    def graph_end_capture(self, stream: Any) -> Any:
        graph = self._check(self.rt.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
        try:
            graph_exec = self._check(self.rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        finally:
            self.rt.cudaGraphDestroy(graph)  # the executable graph keeps what it needs
        return graph_exec

    def graph_launch(self, graph_exec: Any, stream: Any) -> None:
        self._check(self.rt.cudaGraphLaunch(graph_exec, stream), "cudaGraphLaunch")

    def graph_destroy(self, graph_exec: Any) -> None:
        self._check(self.rt.cudaGraphExecDestroy(graph_exec), "cudaGraphExecDestroy")


# ---- choosing a binding, probing ------------------------------------------------------------

_API: CudaApi | None = None
_API_LOCK = threading.Lock()


def api() -> CudaApi:
    """The CUDA binding in use (cuda-python). Raises CudaError when it is not usable."""
    global _API
    with _API_LOCK:
        if _API is not None:
            return _API
        try:
            _API = CudaPython()
        except ImportError as exc:
            raise CudaError(f"no CUDA binding is usable: cuda-python not installed ({exc.name or exc})", hint=_INSTALL_HINT) from exc
        return _API


# What cudaGetDeviceCount says on a machine with no (or a too old) driver.
_NO_DRIVER = ("cudaErrorInsufficientDriver", "cudaErrorStubLibrary", "cudaErrorSystemDriverMismatch")


def probe() -> tuple[bool, str]:
    """(a CUDA GPU is usable?, why). Never raises, never touches TensorRT.

    Uses the runtime API's cudaGetDeviceCount, which returns an error code (no crash) on a
    machine without a driver.
    """
    try:
        cuda = api()
    except CudaError as exc:
        return False, str(exc)
    except Exception as exc:  # a broken binding install must not crash the caller
        return False, f"CUDA binding failed to load ({type(exc).__name__}: {exc})"
    try:
        count = cuda.device_count()
    except CudaError as exc:
        if exc.code in _NO_DRIVER:
            return False, f"no CUDA driver found ({exc.code})"
        if exc.code == "cudaErrorNoDevice":
            return False, "no CUDA device found (cudaErrorNoDevice)"
        return False, f"no usable CUDA driver ({exc})"
    except Exception as exc:
        return False, f"CUDA probe failed ({type(exc).__name__}: {exc})"
    if count < 1:
        return False, "no CUDA device found"
    try:
        major, minor = cuda.compute_capability(0)
        name = cuda.device_name(0)
    except Exception as exc:
        return False, f"CUDA device 0 unusable ({exc})"
    return True, f"{count} CUDA device(s); device 0: {name}, compute capability {major}.{minor} (via {cuda.name})"


def compute_capability(device: int = 0) -> str:
    """'9.0' style string, the key engines are stored under in the manifest."""
    major, minor = api().compute_capability(device)
    return f"{major}.{minor}"


def device_name(device: int = 0) -> str:
    return api().device_name(device)
