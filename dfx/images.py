"""The one pixel path: any image source -> uint8 RGB H×W×3, the model's input.

Training, calibration, evaluation and serving all call `load_image`, so the pixels a model
sees can never differ between them. Two fit policies are stored in the bundle:

- ``resize``: resize to H×W (the seed project's behaviour; blurs high-frequency traces).
- ``crop``: centre crop at native resolution, zero-padding what is smaller. Keeps the
  periodic upsampling traces that GAN images carry.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np

from dfx.errors import DfxError

FIT_POLICIES = ("resize", "crop")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")

# Guards against hostile or broken inputs. 40 MP covers any camera photo; a "decompression
# bomb" declares far more pixels than its bytes would suggest.
MAX_PIXELS = 40_000_000
MAX_FILE_BYTES = 64 * 1024 * 1024

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, np.ndarray, "PIL.Image.Image"]  # noqa: F821


class ImageError(DfxError):
    """An input could not be turned into model pixels. Carries the source and the reason."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


def _as_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def describe(source: object) -> str:
    """A short name for an image source, used in errors and result rows."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, np.ndarray):
        return f"<array {source.shape} {source.dtype}>"
    return f"<{type(source).__name__}>"


def load_image(source: ImageSource, size: int | tuple[int, int], fit: str = "resize") -> np.ndarray:
    """Decode `source` and fit it to `size` (H, W). Returns uint8 (H, W, 3), C-contiguous.

    `source` may be a path, encoded bytes, a PIL image or an array (H×W, H×W×1/3/4; uint8,
    uint16, or float in [0, 1]). Raises ImageError with the source and the reason on any
    unreadable, truncated, empty or oversized input.
    """
    if fit not in FIT_POLICIES:
        raise ValueError(f"fit must be one of {FIT_POLICIES}, not {fit!r}")
    height, width = _as_hw(size)
    name = describe(source)
    image = to_rgb(source)
    try:
        if fit == "resize":
            return _resize(image, height, width)
        return _centre_crop(np.asarray(image), height, width)
    except (OSError, ValueError) as exc:  # lazy decoders can fail late, in resize
        raise ImageError(name, f"cannot decode image ({exc})") from exc


def load_many(
    sources: list[ImageSource], size: int | tuple[int, int], fit: str = "resize", *,
    workers: int | None = None, desc: str | None = None, progress: bool = True, leave: bool = True,
) -> tuple[np.ndarray, list[int], list[ImageError]]:
    """Decode many sources with `load_image` on a pool of threads (Pillow releases the GIL
    while it decodes). Returns (uint8 (N, H, W, 3) of those that decoded, their indices in
    `sources`, the ImageError of each that did not), all in input order. An unreadable image
    is reported, never fatal: one broken file must not cost the others."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    height, width = _as_hw(size)

    def one(source: ImageSource) -> np.ndarray | ImageError:
        try:
            return load_image(source, (height, width), fit)
        except ImageError as exc:
            return exc

    pixels = np.empty((len(sources), height, width, 3), np.uint8)  # filled in place: no second copy
    kept: list[int] = []
    errors: list[ImageError] = []
    with ThreadPoolExecutor(max_workers=workers or 4) as pool:
        decoded = pool.map(one, sources)
        bar = tqdm(decoded, total=len(sources), desc=desc, unit="img", disable=None if progress else True, leave=leave)
        for index, result in enumerate(bar):
            if isinstance(result, ImageError):
                errors.append(result)
                continue
            pixels[len(kept)] = result
            kept.append(index)
    return pixels[: len(kept)], kept, errors


def to_rgb(source: ImageSource) -> "PIL.Image.Image":  # noqa: F821
    """Decode any source into an upright 8-bit RGB PIL image (EXIF orientation applied)."""
    from PIL import Image

    name = describe(source)
    if isinstance(source, np.ndarray):
        return Image.fromarray(_array_to_rgb8(source, name), "RGB")
    if isinstance(source, Image.Image):
        return _pil_to_rgb(source, name)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        data = _read_file(Path(source), name)
    else:
        raise ImageError(name, "not an image source (expected a path, bytes, PIL image or array)")
    if not data:
        raise ImageError(name, "empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            _check_pixels(image.size, name)
            image.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(name, f"image too large ({exc})") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageError(name, "not an image (unknown format)") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        # PIL raises OSError("image file is truncated ...") for cut-off files.
        raise ImageError(name, f"cannot decode image ({exc})") from exc
    return _pil_to_rgb(image, name)


def _read_file(path: Path, name: str) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ImageError(name, f"file too large ({size} bytes > {MAX_FILE_BYTES})")
        return path.read_bytes()
    except ImageError:
        raise
    except FileNotFoundError as exc:
        raise ImageError(name, "no such file") from exc
    except IsADirectoryError as exc:
        raise ImageError(name, "is a directory") from exc
    except OSError as exc:
        raise ImageError(name, f"cannot read file ({exc.strerror or exc})") from exc


def _check_pixels(size: tuple[int, int], name: str) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(name, f"image has no pixels ({width}x{height})")
    if width * height > MAX_PIXELS:
        raise ImageError(name, f"image too large ({width}x{height} > {MAX_PIXELS} pixels)")


def _pil_to_rgb(image: "PIL.Image.Image", name: str) -> "PIL.Image.Image":  # noqa: F821
    from PIL import Image, ImageOps

    _check_pixels(image.size, name)
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)  # animated GIF/WebP/TIFF: the first frame
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a corrupt EXIF block must not cost the image; keep it as stored
        pass
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(_array_to_rgb8(np.asarray(image), name), "RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    # Alpha is dropped, not composited: the colour channels are what a generator produced.
    return image.convert("RGB")


def _array_to_rgb8(array: np.ndarray, name: str) -> np.ndarray:
    """Scale an integer/float array to uint8 and give it three channels."""
    if array.ndim == 3 and array.shape[2] in (1, 3, 4):
        pass
    elif array.ndim != 2:
        raise ImageError(name, f"array must be H×W or H×W×(1|3|4), got shape {array.shape}")
    if array.size == 0:
        raise ImageError(name, "array has no pixels")
    _check_pixels((array.shape[1], array.shape[0]), name)
    if array.dtype == np.uint8:
        pixels = array
    elif array.dtype == np.uint16:
        pixels = (array >> 8).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.integer):
        # 32-bit "I" images hold 16-bit data in practice; scale by what the data spans.
        top = 65535 if array.max(initial=0) > 255 else 255
        pixels = (np.clip(array, 0, top).astype(np.float64) * (255 / top) + 0.5).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        values = np.nan_to_num(array.astype(np.float64))
        scale = 255.0 if values.max(initial=0) <= 1.0 else 1.0  # [0, 1] floats, else 0..255
        pixels = (np.clip(values * scale, 0, 255) + 0.5).astype(np.uint8)
    else:
        raise ImageError(name, f"unsupported array dtype {array.dtype}")
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return np.ascontiguousarray(pixels[:, :, :3])


def _resize(image: "PIL.Image.Image", height: int, width: int) -> np.ndarray:  # noqa: F821
    from PIL import Image

    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


def _centre_crop(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre crop to (height, width); zero-pad (centred) any side that is smaller."""
    src_h, src_w = pixels.shape[:2]
    top, left = max(0, (src_h - height) // 2), max(0, (src_w - width) // 2)
    crop = pixels[top : top + height, left : left + width]
    if crop.shape[:2] == (height, width):
        return np.ascontiguousarray(crop)
    out = np.zeros((height, width, 3), dtype=np.uint8)
    oy, ox = (height - crop.shape[0]) // 2, (width - crop.shape[1]) // 2
    out[oy : oy + crop.shape[0], ox : ox + crop.shape[1]] = crop
    return out


def is_image_path(path: str | os.PathLike) -> bool:
    """True when the suffix names an image format dfx reads."""
    return os.fspath(path).lower().endswith(IMAGE_SUFFIXES)


def iter_image_files(paths: list[str | os.PathLike]) -> list[str]:
    """Expand files and folders (recursively, sorted) into image paths.

    Files named explicitly are kept whatever their suffix, so a bad file given on purpose
    yields an error row instead of vanishing silently.
    """
    found: list[str] = []
    for entry in paths:
        entry = os.fspath(entry)
        if os.path.isdir(entry):
            for folder, dirs, files in os.walk(entry):
                dirs.sort()
                found.extend(os.path.join(folder, f) for f in sorted(files) if is_image_path(f))
        else:
            found.append(entry)
    return found
