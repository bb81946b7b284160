"""Whole-photo test data with known face boxes: real face crops pasted onto large textures.

No whole-photo set with face boxes can be downloaded here, so this module makes one from the
shared face-crop folders (../shared/data/faces*):

- Backgrounds (`background`): smooth gradients, blurred noise at several scales, a synthetic
  landscape (sky, hills, grass), and up-scaled corners of real face photos (hair, walls, sky;
  the corner 22% of a portrait crop holds no face), each with camera-like fine noise so a q90
  JPEG weighs about what a phone photo does.
- Faces (`paste_face`): a crop is scaled so that its *reference face box* has the requested
  width, and pasted through a feathered ellipse so no rectangle edge is left around it. The
  reference box is the face finder's own box on the crop alone (`reference_boxes`), so the
  ground truth is in the same convention as the boxes compared to it; the detector-neutral
  match rule of `matches` (centre inside the truth, width within 0.5x..2x) is used for the
  three-detector comparison, IoU for box accuracy.
- Faceless images: the same backgrounds, nothing pasted.

Face size means the width of the face box in full-resolution pixels (forehead to chin is
about the same); the pasted crop is ~1.6x larger.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass

import numpy as np

SHARED = os.environ.get("DFX_SHARED_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
# Real photo sources only: a detector's recall should not be measured on one generator's faces.
FACE_FOLDERS = ("faces/real/unsplash", "faces-more/real/ffhq", "faces-more/real/utkface", "faces-more/real/web", "faces-aaf/real/aaf")
BACKGROUND_KINDS = ("gradient", "blurred_noise", "landscape", "upscaled_corner")
SIZE_BINS = ((40, 60), (60, 100), (100, 200), (200, 400), (400, 1000))


def face_files(shared: str = SHARED, per_folder: int = 40, seed: int = 0) -> list[str]:
    """Up to `per_folder` crops from each real-face folder present (deterministic)."""
    rng = np.random.default_rng(seed)
    found: list[str] = []
    for folder in FACE_FOLDERS:
        files = sorted(glob.glob(os.path.join(shared, folder, "*.jpg")))
        if files:
            pick = rng.choice(len(files), size=min(per_folder, len(files)), replace=False)
            found += [files[i] for i in sorted(pick)]
    return found


@dataclass(frozen=True)
class Pasted:
    """One face placed on a canvas: its ground-truth box (x0, y0, x1, y1) in canvas pixels."""

    source: str
    box: tuple[float, float, float, float]
    size: float  # box width in pixels

    def region(self) -> tuple[int, int, int, int]:
        return tuple(int(round(v)) for v in self.box)  # type: ignore[return-value]


def _resize(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(pixels).resize((width, height), Image.Resampling.BICUBIC))


def _blurred_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    small = rng.uniform(0, 255, (max(2, h // cell), max(2, w // cell), 3)).astype(np.uint8)
    return _resize(small, w, h).astype(np.float32)


def background(rng: np.random.Generator, h: int, w: int, kind: str, corners: list[str] | None = None) -> np.ndarray:
    """A faceless uint8 (h, w, 3) image of one of BACKGROUND_KINDS."""
    from PIL import Image

    if kind == "gradient":
        c0, c1 = rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)
        t = np.linspace(0, 1, w, dtype=np.float32)[None, :, None] * rng.uniform(0.3, 1)
        t = t + np.linspace(0, 1, h, dtype=np.float32)[:, None, None] * rng.uniform(0, 0.7)
        img = c0 + (c1 - c0) * np.clip(t, 0, 1)
        img = img + 0.25 * (_blurred_noise(rng, h, w, 200) - 128)
    elif kind == "blurred_noise":
        img = 0.6 * _blurred_noise(rng, h, w, int(rng.choice([40, 120, 400]))) + 0.4 * _blurred_noise(rng, h, w, 12)
    elif kind == "landscape":
        sky = np.array([110, 160, 225], np.float32) * rng.uniform(0.7, 1.1)
        ground = np.array([70, 110, 50], np.float32) * rng.uniform(0.6, 1.3)
        xs = np.arange(w, dtype=np.float32)
        horizon = h * rng.uniform(0.4, 0.65) + sum(
            rng.uniform(20, 200) * np.sin(xs / rng.uniform(200, 1500) + rng.uniform(0, 6)) for _ in range(3))
        rows = np.arange(h, dtype=np.float32)[:, None]
        mask = (rows > horizon[None, :]).astype(np.float32)[..., None]
        shade = (rows / h)[..., None]
        img = sky * (1 - 0.3 * shade) * (1 - mask) + ground * (0.7 + 0.5 * shade) * mask
        img = img + 0.35 * (_blurred_noise(rng, h, w, 6) - 128) * mask + 0.1 * (_blurred_noise(rng, h, w, 300) - 128)
    elif kind == "upscaled_corner":
        if not corners:
            return background(rng, h, w, "blurred_noise")
        with Image.open(corners[int(rng.integers(len(corners)))]) as src:
            crop = np.asarray(src.convert("RGB"))
        side = max(8, int(min(crop.shape[:2]) * 0.22))  # a portrait's corner: hair, wall, sky, never a face
        y = 0 if rng.random() < 0.5 else crop.shape[0] - side
        x = 0 if rng.random() < 0.5 else crop.shape[1] - side
        img = _resize(np.ascontiguousarray(crop[y : y + side, x : x + side]), w, h).astype(np.float32)
        img = img + 0.3 * (_blurred_noise(rng, h, w, 8) - 128)
    else:
        raise ValueError(f"unknown background kind {kind!r}; expected one of {BACKGROUND_KINDS}")
    img = img + rng.normal(0, 3.0, (h, w, 1)).astype(np.float32)  # sensor noise (luma)
    return np.clip(img, 0, 255).astype(np.uint8)


def paste_face(canvas: np.ndarray, crop: np.ndarray, ref_box: tuple[float, float, float, float], face_size: float,
               x: int, y: int) -> Pasted:
    """Scale `crop` so that its reference face box is `face_size` px wide and paste it with its
    top-left corner at (x, y) through a feathered ellipse. Returns the face's box on the canvas."""
    scale = face_size / (ref_box[2] - ref_box[0])
    ch, cw = crop.shape[:2]
    nw, nh = max(1, int(round(cw * scale))), max(1, int(round(ch * scale)))
    face = _resize(crop, nw, nh).astype(np.float32)
    yy, xx = np.mgrid[0:nh, 0:nw].astype(np.float32)
    r = np.sqrt(((xx + 0.5) / nw - 0.5) ** 2 + ((yy + 0.5) / nh - 0.5) ** 2) * 2  # 0 centre, 1 edge midpoints
    alpha = np.clip((1.05 - r) / 0.2, 0, 1)[..., None]  # opaque inside r < 0.85: the whole face
    region = canvas[y : y + nh, x : x + nw].astype(np.float32)
    canvas[y : y + nh, x : x + nw] = np.clip(face * alpha + region * (1 - alpha), 0, 255).astype(np.uint8)
    sx, sy = nw / cw, nh / ch
    box = (x + ref_box[0] * sx, y + ref_box[1] * sy, x + ref_box[2] * sx, y + ref_box[3] * sy)
    return Pasted("", box, box[2] - box[0])


def make_photo(rng: np.random.Generator, h: int, w: int, faces: list[tuple[np.ndarray, tuple, str]],
               sizes: list[float], corners: list[str] | None = None, kind: str | None = None) -> tuple[np.ndarray, list[Pasted]]:
    """A canvas with one face per entry of `sizes` (crops drawn from `faces`: (pixels,
    reference box, source)), placed without overlap (faces that do not fit are left out)."""
    kind = kind or BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))]
    canvas = background(rng, h, w, kind, corners)
    placed: list[tuple[int, int, int, int]] = []
    pasted: list[Pasted] = []
    for size in sorted(sizes, reverse=True):  # big ones first, while there is room
        crop, ref, source = faces[int(rng.integers(len(faces)))]
        scale = size / (ref[2] - ref[0])
        nh, nw = int(round(crop.shape[0] * scale)), int(round(crop.shape[1] * scale))
        if nh >= h or nw >= w:
            continue
        for _ in range(50):
            x, y = int(rng.integers(0, w - nw)), int(rng.integers(0, h - nh))
            if all(x + nw <= a or a2 <= x or y + nh <= b or b2 <= y for a, b, a2, b2 in placed):
                placed.append((x, y, x + nw, y + nh))
                p = paste_face(canvas, crop, ref, size, x, y)
                pasted.append(Pasted(source, p.box, p.size))
                break
    return canvas, pasted


def matches(found: list[tuple[float, float, float, float]], truth: Pasted) -> bool:
    """Detector-neutral: some box's centre lies inside the true box and its width is 0.5x..2x."""
    x0, y0, x1, y1 = truth.box
    for b in found:
        cx, cy, bw = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2, b[2] - b[0]
        if x0 <= cx <= x1 and y0 <= cy <= y1 and 0.5 * truth.size <= bw <= 2 * truth.size:
            return True
    return False


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def size_bin(size: float) -> str:
    for lo, hi in SIZE_BINS:
        if lo <= size < hi:
            return f"{lo}-{hi}"
    return f">={SIZE_BINS[-1][1]}" if size >= SIZE_BINS[-1][1] else f"<{SIZE_BINS[0][0]}"


def encode_jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()
