"""Dynamic batching across requests, as Triton's `dynamic_batching` does it, in process.

    submit(sources) ─► decode pool (dfx.runtime.scan.pipeline.decode, threads) ─► queue of images
                                                                          │ worker thread: waits up to
                                                                          │ max_queue_delay_us after the
                                                                          ▼ first image, up to max_batch_size
    Future[list[Result]] ◄── one Result per source, in order ◄── runner.infer(batch)  (one Runner)

Many callers that send one image each therefore share batches: with 32 concurrent single-image
clients the runner sees batches of ~32, not 32 calls of one. No HTTP here: the service wraps it,
and a Python program can use it directly (`screen`).

Bounds, so overload never becomes a crash or a hang:
- admission counts images from `submit` until their Result is settled; past `max_queue_images`
  `submit` raises QueueFull at once (HTTP: 503 + Retry-After), so decode backlog and queue
  memory stay bounded however fast requests arrive;
- the worker keeps a moving average of the runner's seconds per image; a request that would wait
  longer than its deadline behind the images already admitted is refused at once (QueueFull),
  not left to time out in the queue, so overload answers fast 503s instead of slow 504s;
- every request has a deadline; images whose request expired (or will have, before their batch
  can finish) are dropped before they reach the runner, since their compute would be wasted,
  and the request's future fails with DeadlineExceeded;
- an image that does not decode becomes an error Result; a failed runner call becomes error
  Results for that batch. Every submitted image is settled exactly once, so every request
  resolves.
"""

from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np

from dfx.errors import DfxError
from dfx.images import describe
from dfx.runtime.scan.model import LoadedModel
from dfx.runtime.scan.pipeline import FaceOptions, Windows, decode, face_options
from dfx.runtime.scan.rows import per_input
from dfx.runtime.scan.results import Result
from dfx.runtime.scan.rows import RowHook


@dataclass(frozen=True)
class BatchConfig:
    max_batch_size: int = 32  # images per runner call (Triton: max_batch_size)
    # How long a batch may wait for more images (Triton: max_queue_delay_microseconds), counted
    # from its oldest image's arrival or from the end of the previous batch, whichever is
    # later. Longer: fuller batches, more latency for a lone request; about the time a caller
    # takes to send its next image after an answer merges concurrent callers into one batch.
    max_queue_delay_us: int = 50_000
    max_queue_images: int = 256  # images admitted and not yet answered; more -> QueueFull (503)
    timeout_s: float = 10.0  # a request's deadline from submission -> DeadlineExceeded (504)
    decode_workers: int | None = None  # decoder threads; None: one per core, 2..8 (as dfx scan)

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_queue_images < 1:
            raise ValueError("max_batch_size and max_queue_images must be >= 1")
        if self.max_queue_delay_us < 0 or self.timeout_s <= 0:
            raise ValueError("max_queue_delay_us must be >= 0 and timeout_s > 0")


class QueueFull(DfxError):
    """Admitting the request would exceed the queue bound, or the work queued ahead of it would
    outlast its deadline; try again after `retry_after_s` (the estimated time to drain)."""

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(DfxError):
    """The request's deadline passed before all of its images were scored."""


class NotReady(DfxError):
    """No model is loaded yet, or the batcher is draining / closed."""


class Observer(Protocol):
    """What the batcher reports (metrics.ServeMetrics implements it)."""

    def on_decode(self, seconds: float, ok: bool) -> None: ...

    def on_batch(self, size: int, queue_seconds: list[float], compute_seconds: float, ok: bool) -> None: ...

    def on_expired(self, images: int) -> None: ...


class _NullObserver:
    def on_decode(self, seconds: float, ok: bool) -> None:
        pass

    def on_batch(self, size: int, queue_seconds: list[float], compute_seconds: float, ok: bool) -> None:
        pass

    def on_expired(self, images: int) -> None:
        pass


class _Job:
    """One request: its rows, filled in as images settle, and the future its caller waits on."""

    def __init__(self, names: list[str], deadline: float):
        self.names = names
        self.deadline = deadline  # time.monotonic() seconds
        self.results: list[Result | None] = [None] * len(names)
        self.remaining = len(names)
        self.future: Future[list[Result]] = Future()
        self.lock = threading.Lock()
        self.cancelled = False  # the caller stopped waiting (its own timeout or disconnect)
        self.future.add_done_callback(self._on_done)

    def _on_done(self, future: Future) -> None:
        if future.cancelled():
            self.cancelled = True

    def expired(self, now: float) -> bool:
        return self.cancelled or now >= self.deadline

    def fail(self, exc: BaseException) -> None:
        try:
            self.future.set_exception(exc)
        except InvalidStateError:  # already resolved or cancelled by the caller
            pass

    def settle(self, index: int, result: Result | None) -> bool:
        """Record image `index` (None: dropped, expired). True when it was the last one."""
        with self.lock:
            self.results[index] = result
            self.remaining -= 1
            last = self.remaining == 0
        if last and not self.future.done():
            if any(r is None for r in self.results):
                self.fail(DeadlineExceeded(f"the deadline passed before all {len(self.names)} images were scored"))
            else:
                try:
                    self.future.set_result(list(self.results))  # type: ignore[arg-type]
                except InvalidStateError:
                    pass
        return last


@dataclass
class _Item:
    job: _Job
    index: int
    windows: Windows  # the model windows (one, or one per face) at the input size of the model that decoded it
    enqueued: float  # time.monotonic() when it joined the queue
    columns: Any = None  # the row hook's columns read from the image's bytes (provenance), None: none


class DynamicBatcher:
    """Coalesces images from concurrent requests into batches for one model's runner.

    `model` may be None at first (the service loads it in the background); `swap` installs a
    model atomically between batches and returns the old one for the caller to close.
    """

    def __init__(self, config: BatchConfig, model: LoadedModel | None = None, observer: Observer | None = None,
                 hook: RowHook | None = None, faces: str = "auto", no_face: str = "no_face", min_face: int | None = None):
        from dfx.runtime.scan.pipeline import default_workers

        self.config = config
        # Whole photos, as `dfx scan --faces --no-face`: each model brings its own face finder,
        # so the options are made with the model (here and in swap).
        self.faces, self.no_face, self.min_face = faces, no_face, min_face
        self._faces: FaceOptions | None = face_options(model.bundle, faces, no_face, min_face)[0] if model is not None else None
        # The row hook (the provenance room's): encoded images get its columns read from the
        # same bytes in the decode thread, as `dfx scan` does; None: no hook columns.
        self.hook = hook
        self.observer: Observer = observer or _NullObserver()
        self._model = model
        self._model_lock = threading.Lock()  # held while a batch runs: swap waits for it
        self._cond = threading.Condition()  # guards the queue, admission and state below
        self._queue: collections.deque[_Item] = collections.deque()
        self._admitted = 0  # images submitted and not yet settled
        self._accepting = True
        self._flush = False  # draining: run what is queued without waiting for fuller batches
        self._closed = False
        self._free_since = 0.0  # time.monotonic() when the last batch finished
        self._seconds_per_image: float | None = None  # moving average of runner time, after warm-up
        self._batches_seen = 0
        self._pool = ThreadPoolExecutor(max_workers=config.decode_workers or default_workers(), thread_name_prefix="dfx-serve-decode")
        self._worker = threading.Thread(target=self._run, name="dfx-serve-batcher", daemon=True)
        self._worker.start()

    # ---- the model --------------------------------------------------------------------------------
    @property
    def model(self) -> LoadedModel | None:
        return self._model

    def swap(self, model: LoadedModel) -> LoadedModel | None:
        """Serve `model` from the next batch on; returns the previous model (not closed)."""
        options, _ = face_options(model.bundle, self.faces, self.no_face, self.min_face)  # before the swap: a refusal keeps the old model
        with self._model_lock:
            old, self._model, self._faces = self._model, model, options
        return old

    # ---- admission -------------------------------------------------------------------------------
    @property
    def admitted(self) -> int:
        """Images submitted and not yet answered (decoding, queued or computing)."""
        return self._admitted

    @property
    def queued(self) -> int:
        """Images decoded and waiting for a batch."""
        return len(self._queue)

    def submit(self, sources: Sequence[Any], names: Sequence[str] | None = None, timeout_s: float | None = None) -> Future:
        """Admit one request. Returns a Future of one Result per source, in order.

        Raises QueueFull when the queue bound would be exceeded, NotReady when no model is
        loaded or the batcher is draining. `timeout_s` (default: the config's) sets the deadline.
        """
        names = [describe(s) for s in sources] if names is None else list(names)
        if len(names) != len(sources):
            raise ValueError(f"{len(sources)} sources but {len(names)} names")
        timeout_s = self.config.timeout_s if timeout_s is None else min(timeout_s, self.config.timeout_s)
        job = _Job(names, time.monotonic() + timeout_s)
        if not sources:
            job.future.set_result([])
            return job.future
        with self._cond:
            if not self._accepting:
                raise NotReady("the service is draining: no new requests")
            model = self._model
            if model is None:
                raise NotReady("the model is still loading")
            ahead = self._admitted + len(sources)
            per_image = self._seconds_per_image
            drain = ahead * per_image if per_image else 0.0
            if ahead > self.config.max_queue_images:
                raise QueueFull(f"the queue is full ({self._admitted} of {self.config.max_queue_images} images admitted)",
                                retry_after_s=max(1.0, drain))
            if drain > timeout_s:
                raise QueueFull(f"the {self._admitted} images queued ahead need about {drain:.1f} s, more than the "
                                f"{timeout_s:g} s deadline", retry_after_s=max(1.0, drain - timeout_s))
            self._admitted += len(sources)
        for index, source in enumerate(sources):
            self._pool.submit(self._decode, job, index, source, model)
        return job.future

    def screen(self, sources: Sequence[Any], names: Sequence[str] | None = None, timeout_s: float | None = None) -> list[Result]:
        """Blocking `submit`: one Result per source, or DeadlineExceeded."""
        future = self.submit(sources, names, timeout_s)
        wait = self.config.timeout_s if timeout_s is None else min(timeout_s, self.config.timeout_s)
        try:
            return future.result(timeout=wait + 0.05)  # the worker fails it on time; this is the backstop
        except TimeoutError:
            future.cancel()
            raise DeadlineExceeded(f"no answer within {wait:g} s") from None

    # ---- decode (pool threads) ----------------------------------------------------------------------
    def _decode(self, job: _Job, index: int, source: Any, model: LoadedModel) -> None:
        try:
            if job.expired(time.monotonic()):
                self._settle([(job, index, None)], expired=1)
                return
            began = time.perf_counter()
            faces = self._faces  # after a reload in between: the new bundle's finder; the windows still take `model`'s size
            decoded, columns = decode(source, model.input_size, model.fit, self.hook, faces)  # never raises
            self.observer.on_decode(time.perf_counter() - began, not isinstance(decoded, str))
            if isinstance(decoded, str):
                self._settle([(job, index, model.error_row(job.names[index], decoded, columns, self.hook))])
                return
            if decoded.boxes is not None and not decoded.boxes:  # a photo with no face: nothing to infer
                self._settle([(job, index, model.rows(self.hook).windowed(job.names[index], [], [], columns))])
                return
            with self._cond:
                self._queue.append(_Item(job, index, decoded, time.monotonic(), columns))
                self._cond.notify()
        except BaseException as exc:  # never lose an image: settle it as an error
            self._settle([(job, index, model.error_row(job.names[index], f"internal error: {type(exc).__name__}: {exc}", hook=self.hook))])

    # ---- the worker thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            items = self._next_batch()
            if items is None:
                return
            try:
                self._compute(items)
                self._batch_done()
            except BaseException as exc:  # the worker must survive anything one batch does
                model = self._model
                rows = [(it.job, it.index, model.error_row(it.job.names[it.index], f"internal error: {exc}", hook=self.hook) if model else None)
                        for it in items]
                self._settle(rows)

    def _next_batch(self) -> list[_Item] | None:
        cfg = self.config
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            # Wait for a full batch, but no longer than the delay after the oldest queued image
            # arrived (Triton's rule) or after the runner became free, whichever is later: the
            # images that queued while the last batch ran may wait that long for the callers
            # that batch just answered, so concurrent callers share one batch instead of
            # alternating between two half batches. The runner idles at most the delay.
            until = max(self._queue[0].enqueued, self._free_since) + cfg.max_queue_delay_us / 1e6
            while len(self._queue) < cfg.max_batch_size and not self._flush:
                left = until - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            take = min(cfg.max_batch_size, len(self._queue))
            return [self._queue.popleft() for _ in range(take)]

    def _batch_done(self) -> None:
        with self._cond:
            self._free_since = time.monotonic()

    def _compute(self, items: list[_Item]) -> None:
        # Drop what will be past its deadline before this batch can finish: nobody would get it.
        now = time.monotonic() + len(items) * (self._seconds_per_image or 0.0)
        live = [it for it in items if not it.job.expired(now)]
        if len(live) < len(items):
            self._settle([(it.job, it.index, None) for it in items if it.job.expired(now)], expired=len(items) - len(live))
        if not live:
            return
        with self._model_lock:
            model = self._model
            assert model is not None  # items exist only once a model was loaded; swap never unsets it
            # A reload to another input size while these waited: their pixels no longer fit.
            misfit = [it for it in live if it.windows.pixels.shape[1:3] != tuple(model.input_size)]
            if misfit:
                reloaded = "the model was reloaded with another input size while this image waited; send it again"
                self._settle([(it.job, it.index, model.error_row(it.job.names[it.index], reloaded, it.columns, self.hook)) for it in misfit])
                live = [it for it in live if it.windows.pixels.shape[1:3] == tuple(model.input_size)]
                if not live:
                    return
            began = time.monotonic()
            waits = [began - it.enqueued for it in live]
            try:
                logits = model.runner.infer(np.concatenate([it.windows.pixels for it in live])).tolist()
                failure = ""
            except Exception as exc:  # a failed batch costs its images, never the service
                logits, failure = [], f"inference failed: {type(exc).__name__}: {exc}"
            compute = time.monotonic() - began
        if not failure:
            self._learn(compute / len(live))
        self.observer.on_batch(len(live), waits, compute, not failure)
        if failure:
            self._settle([(it.job, it.index, model.error_row(it.job.names[it.index], failure, it.columns, self.hook)) for it in live])
        else:
            rows = model.rows(self.hook)
            scores = per_input(logits, [len(it.windows.pixels) for it in live])  # one logit, or one per face
            self._settle([(it.job, it.index, rows.windowed(it.job.names[it.index], it.windows.boxes, mine, it.columns))
                          for it, mine in zip(live, scores)])

    def _learn(self, seconds_per_image: float) -> None:
        """Moving average of the runner's time per image; the first batches (warm-up: graph
        compilation, allocation) are not trusted for refusing requests."""
        self._batches_seen += 1
        if self._batches_seen <= 2:
            return
        previous = self._seconds_per_image
        self._seconds_per_image = seconds_per_image if previous is None else 0.8 * previous + 0.2 * seconds_per_image

    def _settle(self, rows: list[tuple[_Job, int, Result | None]], expired: int = 0) -> None:
        if expired:
            self.observer.on_expired(expired)
        for job, index, result in rows:
            job.settle(index, result)
        with self._cond:
            self._admitted -= len(rows)
            self._cond.notify_all()  # wakes `drain`

    # ---- drain and close ---------------------------------------------------------------------------
    def stop_accepting(self) -> None:
        """Refuse new requests (NotReady) and run what is queued without waiting for fuller batches."""
        with self._cond:
            self._accepting = False
            self._flush = True
            self._cond.notify_all()

    def drain(self, timeout_s: float) -> bool:
        """Stop accepting and wait until every admitted image is answered. True when drained."""
        self.stop_accepting()
        end = time.monotonic() + timeout_s
        with self._cond:
            while self._admitted > 0:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout_s: float = 30.0) -> LoadedModel | None:
        """Drain, stop the worker and decoders; returns the model (not closed) for the caller."""
        self.drain(timeout_s)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._worker.join(timeout=max(1.0, timeout_s))
        self._pool.shutdown(wait=False, cancel_futures=True)
        return self._model

    def __enter__(self) -> "DynamicBatcher":
        return self

    def __exit__(self, *exc_info: object) -> None:
        model = self.close()
        if model is not None:
            model.close()
