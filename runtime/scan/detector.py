"""The Python API that moderation and provenance pipelines embed.

    from dfx.runtime.scan.detector import Detector

    with Detector.load("bundles/faces") as detector:      # picks TensorRT/ORT/OpenVINO, says why
        print(detector.reason)
        for result in detector.predict(["a.jpg", jpeg_bytes, pil_image, array]):
            if result.error:      ...                       # unreadable input: its own row
            elif result.is_fake:  ...                       # logit >= the bundle's threshold

`predict` returns one Result per input, in order; `scan` yields them as batches finish (a lazy
iterable is consumed as it goes). With the `c2pa` extra installed each Result also carries the
input's C2PA provenance and the combined `verdict` (the provenance room's row hook;
`provenance=False` skips reading;
`trust_anchors=` a PEM file of trusted roots lets manifests read `trusted`). One Detector may be shared between threads: each call runs
its own decode pool, and the Runner serialises access to the model.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Iterable, Iterator

from dfx.bundle import Bundle
from dfx.runtime.scan.model import LoadedModel, load_model
from dfx.runtime.scan.pipeline import FaceOptions, face_options, iter_results
from dfx.runtime.scan.results import Result
from dfx.runtime.scan.rows import RowHook


def _from_model(name: str, doc: str = "") -> Any:
    return property(lambda self: getattr(self.model, name), doc=doc or f"the loaded model's {name}")


class Detector:
    """A bundle's model, activated on the best backend here, with its decision threshold."""

    def __init__(
        self,
        model: LoadedModel,
        *,
        batch_size: int = 32,
        workers: int | None = None,
        hook: RowHook | None = None,
        faces: FaceOptions | None = None,
    ):
        self.model = model
        self.faces = faces  # how whole photos are screened (None: every image whole)
        self.hook = hook  # the row hook (provenance columns), or None
        self.batch_size = batch_size
        self.workers = workers
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def load(
        cls,
        bundle: Bundle | str | os.PathLike,
        backend: str = "auto",
        precision: str | None = None,
        *,
        threshold: float | None = None,
        batch_size: int = 32,
        workers: int | None = None,
        threads: int | None = None,
        provenance: bool | RowHook = True,
        trust_anchors: str | os.PathLike | None = None,
        public_key: Any = None,
        check_parity: bool = False,
        faces: str = "auto",
        no_face: str = "no_face",
        min_face: int | None = None,
    ) -> "Detector":
        """Open (and verify) the bundle, choose a backend, activate it.

        `public_key` (a PEM file path, PEM bytes or key object; default $DFX_PUBLIC_KEY) makes
        the load refuse a bundle that is unsigned or not signed by that key (BundleError with
        the reason). Without one any intact bundle loads; `bundle.signature` says which it was.
        `check_parity` runs the bundle's parity sample through the chosen backend first and
        raises ParityCheckError when it misses its tolerance on this machine. `provenance`:
        True reads C2PA manifests when the `c2pa` extra is installed, False leaves the columns
        null, or a row hook of your own. `faces` ("auto", "all", "off") and `no_face` ("no_face",
        "score") screen whole photos face by face as `dfx scan --faces --no-face` does; each row
        then carries `faces` and `face_boxes`. `min_face` (px, as `--min-face`; default: the face
        whose crop covers the model window) is the smallest face looked for.
        """
        if isinstance(provenance, bool):
            from dfx.runtime.provenance.hook import ProvenanceHook  # the default hook, composed here

            hook: RowHook = ProvenanceHook.maybe(provenance, trust_anchors)
        else:
            hook = provenance
        model = load_model(bundle, backend, precision, threads=threads, threshold=threshold, public_key=public_key,
                           check=False, check_parity=check_parity)
        try:
            options, _ = face_options(model.bundle, faces, no_face, min_face)
        except BaseException:
            model.close()
            raise
        return cls(model, batch_size=batch_size, workers=workers, hook=hook, faces=options)

    # The loaded model's identity, read through: the Detector adds batching and the row hook.
    bundle = _from_model("bundle")
    runner = _from_model("runner")
    reason = _from_model("reason", "why this backend was chosen, for logs")
    threshold = _from_model("threshold", "on the logit")
    model_sha256 = _from_model("sha256", "of the model file every row carries")
    backend = _from_model("backend")
    precision = _from_model("precision")

    def scan(self, images: Iterable[Any]) -> Iterator[Result]:
        """Yield one Result per image (path, bytes, PIL image or array) as batches finish."""
        if self._closed:
            from dfx.runtime.runners.base import RunnerError

            raise RunnerError("this Detector is closed")
        return iter_results(
            images,
            self.runner,
            size=self.bundle.input_size,
            fit=self.bundle.fit,
            threshold=self.threshold,
            batch_size=self.batch_size,
            workers=self.workers,
            model_sha256=self.model_sha256,
            hook=self.hook,
            probability=self.bundle.probability,
            faces=self.faces,
        )
    def predict(self, images: Iterable[Any] | Any) -> list[Result]:
        """Results for `images`, in order. A single path/bytes/PIL image/array gives a list of one."""
        if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview)) or not _is_iterable(images):
            images = [images]
        elif getattr(images, "ndim", 0) in (2, 3):
            images = [images]  # one H×W(×C) array, not a sequence of rows; (N, H, W, C) is N images
        return list(self.scan(images))

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self.model.close()

    def __enter__(self) -> "Detector":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Detector({self.bundle.root}, backend={self.backend}, precision={self.precision}, threshold={self.threshold:g})"


def _is_iterable(value: Any) -> bool:
    try:
        iter(value)
    except TypeError:
        return False
    return not hasattr(value, "getpixel")  # a PIL image is one image, not a sequence
