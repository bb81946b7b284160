"""The Runner contract (after Polygraphy): lazy, activate/infer/deactivate.

    with runner:
        logits = runner.infer(batch)   # batch: uint8 (N, H, W, 3); logits: float32 (N,)

A Runner takes a path or a zero-argument loader and touches its framework only when it is
activated. `infer` validates the batch here, once, so every backend sees the same contract.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable, Iterable, Iterator, Union

import numpy as np

from dfx.errors import DfxError

Source = Union[str, os.PathLike, Callable[[], Any]]


class RunnerError(DfxError):
    """A Runner cannot start or cannot run the batch it was given."""


class Runner:
    """Base class. Subclasses implement `_activate`, `_infer`, `_deactivate`."""

    backend = "base"  # e.g. "ort-cpu", "trt"; shown in scan rows and bench tables
    precision = "fp32"

    def __init__(self, source: Source, input_size: tuple[int, int] | None = None, name: str | None = None):
        self.source = source
        self.input_size = input_size  # (H, W) the model takes, when known before activation
        self.name = name or self.backend
        self.is_active = False
        # Frameworks differ in thread safety; the contract promises a shareable runner.
        self._lock = threading.Lock()

    # ---- the contract ------------------------------------------------------------------------
    def activate(self) -> "Runner":
        if not self.is_active:
            self._activate()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            try:
                self._deactivate()
            finally:
                self.is_active = False

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc_info: object) -> None:
        self.deactivate()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Logits (float32, shape (N,)) for a uint8 NHWC RGB batch."""
        if not self.is_active:
            raise RunnerError(f"{self.name} is not active; use `with runner:` or runner.activate()")
        self._check_batch(batch)
        with self._lock:
            logits = self._infer(np.ascontiguousarray(batch))
        logits = np.asarray(logits, dtype=np.float32).reshape(-1)
        if logits.shape[0] != batch.shape[0]:
            raise RunnerError(f"{self.name} returned {logits.shape[0]} logits for {batch.shape[0]} images")
        return logits

    def infer_many(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Logits for each batch, in order. Backends that can overlap batches (TensorRT's
        streams) override this; here it is `infer` per batch, taking the lock per batch."""
        for batch in batches:
            yield self.infer(batch)

    def _check_batch(self, batch: np.ndarray) -> None:
        if not isinstance(batch, np.ndarray):
            raise TypeError(f"batch must be a numpy array, not {type(batch).__name__}")
        if batch.dtype != np.uint8:
            raise TypeError(f"batch must be uint8 pixels (dfx.images output), not {batch.dtype}")
        if batch.ndim != 4 or batch.shape[3] != 3 or batch.shape[0] == 0:
            raise ValueError(f"batch must be (N, H, W, 3) with N >= 1, got shape {batch.shape}")
        if self.input_size is not None and tuple(batch.shape[1:3]) != tuple(self.input_size):
            raise ValueError(f"{self.name} takes {self.input_size[0]}x{self.input_size[1]} images, got {batch.shape[1]}x{batch.shape[2]}")

    # ---- what a backend implements ---------------------------------------------------------------
    def _activate(self) -> None:
        raise NotImplementedError

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _deactivate(self) -> None:
        raise NotImplementedError

    def _load_source(self) -> Any:
        """The path as a string, or whatever the loader returns."""
        return self.source() if callable(self.source) else os.fspath(self.source)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "precision": self.precision, "name": self.name}


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else platform.processor(): speed
    figures and parity reports name the CPU they came from."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> list[str]:
    """The vector extensions that decide which kernels the frameworks pick (AVX2, AVX-512, VNNI, AMX)."""
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in wanted if flag in present]
    except OSError:
        pass
    return []


def physical_cores() -> int:
    """Physical cores, the default thread count of the CPU runners: hyper-threads share one
    core's vector units and slow conv kernels down."""
    try:
        import psutil  # optional

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def run_batches(runner: Runner, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Logits for an (N, H, W, 3) uint8 array, fed to an active runner in batches."""
    parts = [runner.infer(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0,), np.float32)
