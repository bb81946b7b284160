"""The screening pipeline: decode in a pool of threads, batch, infer, one Result per input.

    sources ─► decode pool (dfx.images.load_image, threads) ─► bounded window ─► batches ─► Runner
                                                                                      ▼
                                         Results, in input order, exactly one per source

Threads suffice: Pillow releases the GIL while it decodes and resizes, and ONNX Runtime /
TensorRT release it while they compute, so decoding the next images overlaps inference on the
current batch. The window of submitted decodes is bounded (a few batches), so memory stays flat
however many inputs there are, and the runner never waits on an empty queue longer than one
decode takes.

Batches go through `runner.infer_many`, so a runner that overlaps batches (TensorRT: copy in of
batch i+1, compute of i, copy out of i-1 on separate streams) keeps several in flight; other
runners take them one `infer` at a time.

A row hook (`hook=`, dfx.runtime.scan.rows.RowHook; the provenance room's reads C2PA): the decode
worker reads a path's bytes once and hands the same bytes to the pixel path and the hook, so
nothing is read or decoded twice; the row factory then adds the hook's columns to the row.

Nothing is lost: an input that cannot be decoded becomes an error row; a batch the runner fails
on becomes error rows for that batch (for TensorRT, the few batches in flight with it), and the
scan goes on with a fresh `infer_many` over the remaining batches.
"""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from dfx.bundle import sigmoid
from dfx.errors import DfxError
from dfx.images import describe, load_image
from dfx.runtime.runners.base import Runner
from dfx.runtime.scan.results import Result
from dfx.runtime.scan.rows import RowFactory, RowHook, per_input


def default_workers() -> int:
    # Decoding a 300 px JPEG costs about as much as inferring it on a CPU backend, so one
    # decoder per core keeps the runner fed without starving it of cores.
    return max(2, min(8, os.cpu_count() or 2))


def _error_text(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)  # ImageError carries a clean reason; anything else is reported too
    return reason if reason else f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class FaceOptions:
    """Whole photos (dfx.faces): find the faces and screen each, instead of the image as one crop."""

    finder: Any  # dfx.faces.FaceFinder, or None where the bundle has none (then "auto" scores whole)
    mode: str = "auto"  # off | auto | all (dfx.faces.FACES_MODES)
    no_face: str = "no_face"  # no_face | score: a photo without a face gets `no_face`, or is scored whole


def face_options(bundle: Any, mode: str = "auto", no_face: str = "no_face", min_face: int | None = None) -> tuple[FaceOptions | None, str]:
    """(how this scan treats whole photos, a line saying so) for `--faces MODE --no-face POLICY`.

    The face finder travels in the bundle (`dfx export` adds face_finder.onnx, verified by hash
    like the model). Without one, `auto` scores every image whole, as before, and says so;
    `all` is refused."""
    from dfx.faces import FACES_MODES, NO_FACE_POLICIES, FaceFinder, FinderConfig, bundle_finder_file, min_face_for_window

    if mode not in FACES_MODES:
        raise DfxError(f"--faces must be one of {', '.join(FACES_MODES)}, not {mode!r}")
    if no_face not in NO_FACE_POLICIES:
        raise DfxError(f"--no-face must be one of {', '.join(NO_FACE_POLICIES)}, not {no_face!r}")
    if mode == "off":
        return None, "faces off: every image is scored whole, as one face crop"
    model = bundle_finder_file(bundle)  # verified against the manifest's sha256
    if model is None:
        if mode == "all":
            raise DfxError("--faces all needs a face finder, and this bundle has none",
                           hint="re-export it (`dfx export BUNDLE`: it adds face_finder.onnx), or use --faces off")
        return FaceOptions(None, mode, no_face), "faces auto: the bundle has no face finder, so every image is scored whole " \
            "(re-export it with `dfx export` to screen whole photos face by face)"
    if min_face is not None and min_face < 8:
        raise DfxError(f"--min-face must be at least 8 px, not {min_face}")
    smallest = min_face or min_face_for_window(bundle.input_size)
    finder = FaceFinder(model, config=FinderConfig(min_face=smallest))
    policy = "scored whole" if no_face == "score" else "reported as no_face"
    where = "images over 1024 px that are not close-ups" if mode == "auto" else "every image"
    return FaceOptions(finder, mode, no_face), (f"faces {mode}: faces of {smallest} px and more are found in {where}; "
                                                f"a photo without one is {policy}")


@dataclass(frozen=True)
class Windows:
    """One decoded input: the model windows to run, and the faces they are (None: the image whole)."""

    pixels: np.ndarray  # uint8 (K, H, W, 3); K = 1 for a whole image, 0 for a photo with no face
    boxes: list[Any] | None = None  # dfx.faces.FaceBox per window, or None for a whole image


def windows_of(source: Any, size: tuple[int, int], fit: str, faces: FaceOptions | None = None) -> Windows:
    """The model windows of one input: the pixel path's one window, or one per face found.
    An image scored whole always goes through load_image, so its pixels are those of the face-crop
    path whatever --faces says. Raises dfx.images.ImageError like load_image."""
    if faces is None or faces.mode == "off" or (faces.finder is None and faces.mode == "auto"):
        return Windows(load_image(source, size, fit)[None])
    from dfx.faces import face_windows, is_face_crop
    from dfx.images import header_size, read_bytes

    data = read_bytes(source) if isinstance(source, (str, os.PathLike)) else source
    if faces.mode == "auto" and is_face_crop(*header_size(data)):  # a face crop: the crop files' own path, no finder
        return Windows(load_image(data, size, fit)[None])
    found = face_windows(data, faces.finder, faces.mode, size, fit, no_face=faces.no_face)
    return Windows(found.windows, None if found.faces.whole else list(found.faces.boxes))


def decode(source: Any, size: tuple[int, int], fit: str, hook: RowHook | None = None,
           faces: FaceOptions | None = None) -> tuple[Windows | str, dict[str, Any]]:
    """(the input's model windows or the error text, the hook's columns) from one read of the
    source's bytes. Never raises: a worker exception must not lose the input. Without a hook a
    path goes to the pixel path as it is; the columns are then {}."""
    from dfx.images import read_bytes

    if hook is None:
        try:
            return windows_of(source, size, fit, faces), {}
        except Exception as exc:
            return _error_text(exc), {}
    data: Any = None
    if isinstance(source, (str, os.PathLike)):
        try:
            data = read_bytes(source)
        except Exception as exc:  # no such file, too large, ...: the pixel path's own error text
            return _error_text(exc), hook.read(None)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = source
    try:
        pixels: Windows | str = windows_of(source if data is None else data, size, fit, faces)
    except Exception as exc:
        pixels = _error_text(exc)
    # PIL images and arrays carry no manifest: the hook gets no bytes.
    return pixels, hook.read(bytes(data) if isinstance(data, memoryview) else data)


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
    hook: RowHook | None = None,
    probability: Callable[[float], float] = sigmoid,
    faces: FaceOptions | None = None,
) -> Iterator[Result]:
    """Yield one Result per source, in input order. `runner` must be active.

    `sources` may be a lazy iterable (it is consumed as the window frees up). `threshold` is on
    the logit: logit >= threshold means "fake". With a `hook` each row also carries the hook's
    columns (the provenance room's: C2PA and the combined verdict); `probability` maps a logit to
    P(fake) (pass the bundle's calibrated `Bundle.probability`). With `faces` a whole photo is
    screened face by face (each face's window is one image of a batch) and its row lists them.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    workers = workers or default_workers()
    factory = RowFactory(runner.backend, runner.precision, model_sha256, threshold, probability, hook)

    def rows(pending: Pending, logits: np.ndarray | None, failure: str = "") -> Iterator[Result]:
        counts = [_windows(px) for _, px, _ in pending]
        scores = per_input(logits.tolist(), counts) if logits is not None else None
        for i, (name, px, columns) in enumerate(pending):
            if isinstance(px, str):
                yield factory.error(name, px, columns)
            elif scores is None and counts[i]:
                yield factory.error(name, failure, columns)
            else:  # scored, or a photo with no face (nothing was inferred, so nothing failed)
                yield factory.windowed(name, px.boxes, scores[i] if scores is not None else [], columns)

    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dfx-decode")
    queued: collections.deque[Pending] = collections.deque()  # batches handed to the runner, oldest first

    pulled = [0]  # batches taken from the feed: a runner that fails without taking any is broken

    def stacks(groups: Iterator[Pending]) -> Iterator[np.ndarray]:
        """The image stacks of the batches, in order; every batch is queued for its rows."""
        for pending in groups:
            pulled[0] += 1
            queued.append(pending)
            good = [px.pixels for _, px, _ in pending if _windows(px)]
            if good:
                yield np.concatenate(good)

    def has_images(pending: Pending) -> bool:
        return any(_windows(px) for _, px, _ in pending)

    try:
        batches = _batches(sources, executor, hw, fit, batch_size, window=2 * batch_size + workers, hook=hook, faces=faces)
        feed = stacks(batches)
        while True:
            before = pulled[0]
            outputs = runner.infer_many(feed)
            try:
                for logits in outputs:
                    while not has_images(queued[0]):  # error-only batches come out in their place
                        yield from rows(queued.popleft(), None)
                    yield from rows(queued.popleft(), logits)
            except Exception as exc:  # a failed batch costs the batches in flight, never the scan
                if pulled[0] == before:
                    raise  # it failed before taking a batch (e.g. not active): no row to blame
                failure = f"inference failed: {type(exc).__name__}: {exc}"
                while queued:
                    yield from rows(queued.popleft(), None, failure)
                continue  # a fresh infer_many over the rest of `feed`
            finally:
                close = getattr(outputs, "close", None)
                if close is not None:
                    close()
            while queued:  # trailing error-only batches
                yield from rows(queued.popleft(), None)
            break
    finally:
        # A consumer that stops early (or is killed) must not leave decoders running.
        executor.shutdown(wait=False, cancel_futures=True)


Pending = list  # [(name, Windows | error text, hook columns)] of one batch, in input order


def _windows(px: Windows | str) -> int:
    """How many model windows an input puts into its batch (0: an error, or a photo with no face)."""
    return 0 if isinstance(px, str) else len(px.pixels)


def _batches(
    sources: Iterable[Any], executor: ThreadPoolExecutor, hw: tuple[int, int], fit: str, batch_size: int, window: int,
    hook: RowHook | None = None, faces: FaceOptions | None = None,
) -> Iterator[Pending]:
    """Decode through the pool with at most `window` decodes in flight; group the results, in
    input order, into batches of about `batch_size` windows (an input's faces stay in one batch;
    rows without a window ride along in their place)."""
    inflight: collections.deque[tuple[str, Future]] = collections.deque()
    iterator = iter(sources)
    exhausted = False
    pending: Pending = []
    n_images = 0
    while True:
        while not exhausted and len(inflight) < window:
            try:
                source = next(iterator)
            except StopIteration:
                exhausted = True
                break
            inflight.append((describe(source), executor.submit(decode, source, hw, fit, hook, faces)))
        if not inflight:
            break
        name, future = inflight.popleft()
        pixels, columns = future.result()
        pending.append((name, pixels, columns))
        n_images += _windows(pixels)
        if n_images >= batch_size or n_images == 0:  # error rows with no image before them go now
            yield pending
            pending, n_images = [], 0
    if pending:
        yield pending
