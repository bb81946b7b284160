"""dfx.runtime.runners.cuda: the probe never crashes; on a GPU host the memory/stream/event helpers work."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from conftest import has_gpu
from dfx.runtime.runners import cuda

GPU, GPU_REASON = has_gpu()


def test_probe_returns_bool_and_reason():
    present, reason = cuda.probe()
    assert isinstance(present, bool) and isinstance(reason, str) and reason
    if not present:
        # The reason names what is missing: the binding, the driver or the device.
        assert any(word in reason for word in ("binding", "driver", "device", "not installed")), reason


def _probe_in_subprocess(prelude: str) -> str:
    code = prelude + "\nfrom dfx.runtime.runners import cuda\nok, why = cuda.probe()\nprint(ok, why, sep='|')\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_probe_without_any_binding():
    # Block the binding the way a machine without them behaves: ImportError on import.
    out = _probe_in_subprocess("import sys\nfor m in ('cuda', 'cuda.bindings', 'cuda.cudart', 'pycuda', 'pycuda.driver'): sys.modules[m] = None")
    ok, why = out.split("|", 1)
    assert ok == "False"
    assert "no CUDA binding is usable" in why and "cuda-python" in why


@pytest.mark.skipif(importlib.util.find_spec("cuda") is None, reason="cuda-python is not installed here")
@pytest.mark.skipif(GPU, reason="this host has a GPU; the no-driver path cannot be exercised")
def test_cuda_python_without_driver_reports_an_error_code():
    # cudaGetDeviceCount returns an error code here (no driver) instead of crashing.
    ok, why = cuda.probe()
    assert ok is False
    assert "cudaError" in why, why


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason=f"no GPU: {GPU_REASON}")
def test_gpu_round_trip_streams_events():
    api = cuda.api()
    assert api.device_count() >= 1
    major, minor = api.compute_capability(0)
    assert major >= 3 and cuda.compute_capability() == f"{major}.{minor}"
    assert api.device_name(0)
    stream = api.stream_create()
    host = api.host_alloc((4, 8, 8, 3), np.float32)
    back = api.host_alloc((4, 8, 8, 3), np.float32)
    dev = api.device_alloc(host.nbytes)
    events = [api.event_create() for _ in range(3)]
    try:
        host.array[...] = np.arange(host.array.size, dtype=np.float32).reshape(host.array.shape)
        back.array[...] = 0
        api.event_record(events[0], stream)
        api.memcpy_htod_async(dev, host, host.nbytes, stream)
        api.event_record(events[1], stream)
        api.memcpy_dtoh_async(back, dev, host.nbytes, stream)
        api.event_record(events[2], stream)
        api.stream_synchronize(stream)
        np.testing.assert_array_equal(back.array, host.array)
        assert api.event_elapsed_ms(events[0], events[2]) >= 0.0
    finally:
        for event in events:
            api.event_destroy(event)
        api.device_free(dev)
        api.host_free(host)
        api.host_free(back)
        api.stream_destroy(stream)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason=f"no GPU: {GPU_REASON}")
def test_gpu_graph_capture_replays_the_copies():
    """The CUDA-graph helpers TrtRunner uses: capture H2D + D2H on a stream, then each launch
    re-runs both copies on whatever the pinned input holds by then."""
    api = cuda.api()
    stream = api.stream_create()
    host = api.host_alloc((2, 4, 4, 3), np.float32)
    back = api.host_alloc((2, 4, 4, 3), np.float32)
    dev = api.device_alloc(host.nbytes)
    graph = None
    try:
        host.array[...] = 1.0
        back.array[...] = 0.0
        api.graph_begin_capture(stream)
        api.memcpy_htod_async(dev, host, host.nbytes, stream)
        api.memcpy_dtoh_async(back, dev, host.nbytes, stream)
        graph = api.graph_end_capture(stream)
        assert not back.array.any()  # capturing records the copies, it does not run them
        for value in (2.0, 7.0):
            host.array[...] = value
            api.graph_launch(graph, stream)
            api.stream_synchronize(stream)
            np.testing.assert_array_equal(back.array, np.full(back.array.shape, value, np.float32))
    finally:
        if graph is not None:
            api.graph_destroy(graph)
        api.device_free(dev)
        api.host_free(host)
        api.host_free(back)
        api.stream_destroy(stream)
