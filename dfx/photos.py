"""Decoding whole photos twice cheaply: a reduced-scale view for the face finder, the full
resolution only where faces are cut.

A 12 MP q90 JPEG costs ~90 ms to decode with Pillow on one core here, ~40 ms with
libjpeg-turbo through simplejpeg (same library, fewer copies), and ~25 ms at 1/4 scale: JPEG
DCT scaling decodes an 8×8 block straight to 2×2 pixels (benchmarks/whole_photo.py). So:

- `Photo.small`: the DCT-scaled decode (1/2, 1/4 or 1/8) the finder reads; never shown to the
  deepfake model.
- `Photo.full()`: the full-resolution decode, made once and only when asked (a photo with no
  face never pays for it). simplejpeg when installed, Pillow otherwise: both run libjpeg-turbo's
  accurate integer IDCT with fancy upsampling, so their pixels are identical (tests/test_faces.py
  asserts it); anything but a plain YCbCr/grey JPEG goes through Pillow (dfx.images.to_rgb).

EXIF orientation is applied to both views, so boxes found on `small` map onto `full()` by the
scale alone. Inputs that cannot be decoded raise dfx.images.ImageError with load_image's words.
"""

from __future__ import annotations

import io
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dfx.images import ImageError, describe, read_bytes, to_rgb

# ImageOps.exif_transpose's table, as numpy views: orientation -> function on (H, W, 3).
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}


def fast_jpeg_available() -> bool:
    from dfx.faces import _importable

    return _importable("simplejpeg")


@dataclass
class Photo:
    """One decoded input: its upright full-resolution size, a reduced view, the full pixels on demand."""

    name: str
    height: int
    width: int
    small: np.ndarray  # uint8 (h, w, 3): the reduced-scale decode (== full when not reduced)
    scale: float  # full-resolution pixels per pixel of `small` (width ratio)
    _full: Any = field(repr=False, default=None)  # a zero-argument decoder, then the array
    _lock: threading.Lock = field(repr=False, default_factory=threading.Lock)

    def full(self) -> np.ndarray:
        """uint8 (height, width, 3), decoded on first call."""
        with self._lock:
            if callable(self._full):
                self._full = self._full()
            return self._full


def decode_photo(source: Any, finder_scale: int | None = 4, *, fast: bool | None = None) -> Photo:
    """Decode `source` (path, bytes, PIL image or array) for face finding.

    `finder_scale`: the DCT reduction of `small` (1, 2, 4, 8; None: no reduced view, `small` is
    the full image). `fast`: use simplejpeg for JPEGs (default: when installed)."""
    name = describe(source)
    if isinstance(source, (str, os.PathLike)):
        data: Any = read_bytes(source)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:  # PIL images and arrays: already pixels
        full = np.asarray(to_rgb(source))
        return _from_full(name, full, finder_scale)
    fast = fast_jpeg_available() if fast is None else fast
    header = _jpeg_header(data, name)
    if header is None:  # not a plain JPEG: the general path, reduced by box filtering
        return _from_full(name, np.asarray(to_rgb(data)), finder_scale)
    width, height, orientation = header
    reduction = finder_scale or 1
    full_decoder = (lambda: _fast_full(data, orientation, name)) if fast else (lambda: np.asarray(to_rgb(data)))
    if reduction == 1:
        full = full_decoder()
        return Photo(name, full.shape[0], full.shape[1], full, 1.0, full)
    small = _fast_scaled(data, reduction, orientation, name) if fast else _pil_scaled(data, reduction, name)
    up_h, up_w = (width, height) if orientation in (5, 6, 7, 8) else (height, width)
    return Photo(name, up_h, up_w, small, up_w / small.shape[1], full_decoder)


def _from_full(name: str, full: np.ndarray, finder_scale: int | None) -> Photo:
    from PIL import Image

    reduction = finder_scale or 1
    if reduction == 1:
        return Photo(name, full.shape[0], full.shape[1], full, 1.0, full)
    small = np.asarray(Image.fromarray(full).reduce(reduction))
    return Photo(name, full.shape[0], full.shape[1], small, full.shape[1] / small.shape[1], full)


def _jpeg_header(data: bytes, name: str) -> tuple[int, int, int] | None:
    """(width, height, EXIF orientation) of a plain YCbCr or grey JPEG within the pixel limit;
    None for anything the general path should take (other formats, CMYK, odd EXIF)."""
    from PIL import Image

    from dfx.images import _check_pixels

    if not data.startswith(b"\xff\xd8\xff"):
        return None
    try:
        with Image.open(io.BytesIO(data), formats=("JPEG",)) as image:
            if image.mode not in ("RGB", "L"):
                return None
            _check_pixels(image.size, name)
            try:
                orientation = int(image.getexif().get(0x0112, 1) or 1)
            except Exception:  # a corrupt EXIF block: load_image keeps the image as stored
                orientation = 1
            return image.size[0], image.size[1], orientation if orientation in _ORIENT else 1
    except ImageError:
        raise
    except Exception:
        return None  # let the general path word the error


def _fast_full(data: bytes, orientation: int, name: str) -> np.ndarray:
    import simplejpeg

    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=False, fastupsample=False)
    except Exception:  # truncated or odd: Pillow decides and words the error
        return np.asarray(to_rgb(data))
    return np.ascontiguousarray(_ORIENT[orientation](pixels)) if orientation != 1 else pixels


def _fast_scaled(data: bytes, reduction: int, orientation: int, name: str) -> np.ndarray:
    import simplejpeg

    try:
        height, width = simplejpeg.decode_jpeg_header(data)[:2]
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=-(-height // reduction),
                                        min_width=-(-width // reduction), min_factor=reduction)
    except Exception:
        return _pil_scaled(data, reduction, name)
    return np.ascontiguousarray(_ORIENT[orientation](pixels)) if orientation != 1 else pixels


def _pil_scaled(data: bytes, reduction: int, name: str) -> np.ndarray:
    """Pillow's draft mode: the JPEG decoder's own DCT scaling, then EXIF orientation."""
    from PIL import Image, ImageOps

    try:
        image = Image.open(io.BytesIO(data), formats=("JPEG",))
        width, height = image.size
        # Pillow picks the largest power-of-two scale with original // requested >= it, so
        # request the floor: 811 px at 1/4 asks for 202 and gets libjpeg's ceil(811 / 4) = 203.
        image.draft("RGB", (max(1, width // reduction), max(1, height // reduction)))
        image.load()
        upright: Image.Image = image
        try:
            upright = ImageOps.exif_transpose(image)
        except Exception:
            pass
        return np.asarray(upright.convert("RGB"))
    except Exception:
        full = np.asarray(to_rgb(data))  # raises the ImageError load_image would
        return np.asarray(Image.fromarray(full).reduce(reduction))
