"""The screening pipeline: decode in a pool of threads, batch, infer, one Result per input.

    sources ─► decode pool (dfx.images.load_image, threads) ─► bounded window ─► batches ─► Runner
                                                                                      ▼
                                         Results, in input order, exactly one per source

Threads suffice: Pillow releases the GIL while it decodes and resizes, and ONNX Runtime /
TensorRT release it while they compute, so decoding the next images overlaps inference on the
current batch. The window of submitted decodes is bounded (a few batches), so memory stays flat
however many inputs there are, and the runner never waits on an empty queue longer than one
decode takes.

Nothing is lost: an input that cannot be decoded becomes an error row; a batch the runner fails
on becomes error rows for that batch only, and the scan goes on.
"""

from __future__ import annotations

import collections
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterable, Iterator

import numpy as np

from dfx.bundle import sigmoid
from dfx.images import describe, load_image
from dfx.runtime.base import Runner
from dfx.runtime.results import Result


def default_workers() -> int:
    # Decoding a 300 px JPEG costs about as much as inferring it on a CPU backend, so one
    # decoder per core keeps the runner fed without starving it of cores.
    return max(2, min(8, os.cpu_count() or 2))


def _decode(source: Any, size: tuple[int, int], fit: str) -> np.ndarray | str:
    """Pixels, or the error text. Never raises: a worker exception must not lose the input."""
    try:
        return load_image(source, size, fit)
    except Exception as exc:  # ImageError carries a clean reason; anything else is reported too
        reason = getattr(exc, "reason", None)
        return reason if reason else f"{type(exc).__name__}: {exc}"


def iter_results(
    sources: Iterable[Any],
    runner: Runner,
    *,
    size: int | tuple[int, int],
    fit: str,
    threshold: float,
    batch_size: int = 32,
    workers: int | None = None,
    model_sha256: str = "",
) -> Iterator[Result]:
    """Yield one Result per source, in input order. `runner` must be active.

    `sources` may be a lazy iterable (it is consumed as the window frees up). `threshold` is on
    the logit: logit >= threshold means "fake".
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    workers = workers or default_workers()
    window = 2 * batch_size + workers  # decodes in flight: the next batch is ready when this one ends
    backend, precision = runner.backend, runner.precision

    def error_row(name: str, error: str) -> Result:
        return Result(name, None, None, None, backend, precision, model_sha256, error)

    def run_batch(pending: list[tuple[str, np.ndarray | str]]) -> Iterator[Result]:
        good = [i for i, (_, px) in enumerate(pending) if isinstance(px, np.ndarray)]
        logits: np.ndarray | None = None
        failure = ""
        if good:
            try:
                logits = runner.infer(np.stack([pending[i][1] for i in good]))  # type: ignore[misc]
            except Exception as exc:  # a failed batch costs that batch, never the scan
                failure = f"inference failed: {type(exc).__name__}: {exc}"
        scores = dict(zip(good, logits.tolist())) if logits is not None else {}
        for i, (name, px) in enumerate(pending):
            if isinstance(px, str):
                yield error_row(name, px)
            elif i in scores:
                logit = float(scores[i])
                decision = "fake" if logit >= threshold else "real"
                yield Result(name, logit, sigmoid(logit), decision, backend, precision, model_sha256, None)
            else:
                yield error_row(name, failure)

    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dfx-decode")
    inflight: collections.deque[tuple[str, Future]] = collections.deque()
    iterator = iter(sources)
    exhausted = False
    try:
        pending: list[tuple[str, np.ndarray | str]] = []
        n_images = 0
        while True:
            while not exhausted and len(inflight) < window:
                try:
                    source = next(iterator)
                except StopIteration:
                    exhausted = True
                    break
                inflight.append((describe(source), executor.submit(_decode, source, hw, fit)))
            if not inflight:
                break
            name, future = inflight.popleft()
            pixels = future.result()
            pending.append((name, pixels))
            if isinstance(pixels, np.ndarray):
                n_images += 1
            if n_images >= batch_size or n_images == 0:  # error rows with no image before them go now
                yield from run_batch(pending)
                pending, n_images = [], 0
        if pending:
            yield from run_batch(pending)
    finally:
        # A consumer that stops early (or is killed) must not leave decoders running.
        executor.shutdown(wait=False, cancel_futures=True)
