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
- `Photo.regions(boxes)`: the full-resolution pixels of a few regions (the face crops), without
  decoding the whole photo where a YCbCr JPEG allows it, by the cheapest of:
  1. **region decoding** (`dfx/_jpegregion.c`, built at install where libjpeg-turbo's headers
     are): libjpeg-turbo decodes only the region's columns (`jpeg_crop_scanline`, one guard
     column each side) and rows (`jpeg_skip_scanlines` above; nothing below is read), ~7-21 ms on
     12 MP by the face's height in the photo instead of ~30 for a cut and ~45 for the whole
     decode. Used while the rows the regions read add up to less than 1.5 images (several faces
     low in a photo are cheaper as one cut).
  2. **lossless cuts** with PyTurboJPEG and the system's libturbojpeg (`tjTransform`: one entropy
     decode for all regions, ~30 ms on 12 MP) with one MCU of guard band on each side, and only
     the cuts decoded.
  3. slices of `full()`.
  Fancy upsampling reads one neighbouring chroma sample, so inside the guards the pixels are
  those of `full()` exactly, whichever way (tests/test_faces.py).

EXIF orientation is applied to both views, so boxes found on `small` map onto `full()` by the
scale alone. Inputs that cannot be decoded raise dfx.images.ImageError with load_image's words.
"""

from __future__ import annotations

import functools
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


@functools.cache  # resolved once per process, like _partial_decoder
def _turbo() -> Any:
    """PyTurboJPEG's handle on the system libturbojpeg, or None when either is missing."""
    try:
        from turbojpeg import TurboJPEG

        return TurboJPEG()
    except Exception:  # not installed, or no libturbojpeg.so on this machine
        return None


def region_decode_available() -> bool:
    """Whether Photo.regions can avoid the whole decode (region decoding or lossless cuts)."""
    return _partial_decoder() is not None or _turbo() is not None


@functools.cache
def _partial_decoder() -> Any:
    """dfx._jpegregion.decode_region, or None where the extension was not built."""
    try:
        from dfx import _jpegregion  # type: ignore[attr-defined]  # a C extension, built at install where it can be
    except ImportError:
        return None
    return _jpegregion.decode_region


# MCU size (width, height) per TurboJPEG subsampling code: 4:4:4, 4:2:2, 4:2:0, grey, 4:4:0, 4:1:1.
_MCU = {0: (8, 8), 1: (16, 8), 2: (16, 16), 3: (8, 8), 4: (8, 16), 5: (32, 8)}


def _upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Stored pixels turned by their EXIF orientation, contiguous (a no-op copy-wise when they are)."""
    return np.ascontiguousarray(_ORIENT[orientation](pixels) if orientation != 1 else pixels)


def _stored_region(region: tuple[int, int, int, int], orientation: int, stored_w: int, stored_h: int) -> tuple[int, int, int, int]:
    """An upright (x0, y0, x1, y1) region as a region of the stored (un-rotated) image."""
    x0, y0, x1, y1 = region
    corners = [(x0, y0), (x1 - 1, y1 - 1)]
    W, H = stored_w, stored_h
    mapped = {  # upright (x, y) -> stored (x, y), the inverse of _ORIENT
        1: lambda x, y: (x, y), 2: lambda x, y: (W - 1 - x, y), 3: lambda x, y: (W - 1 - x, H - 1 - y),
        4: lambda x, y: (x, H - 1 - y), 5: lambda x, y: (y, x), 6: lambda x, y: (y, H - 1 - x),
        7: lambda x, y: (W - 1 - y, H - 1 - x), 8: lambda x, y: (W - 1 - y, x),
    }[orientation]
    xs, ys = zip(*(mapped(x, y) for x, y in corners))
    return min(xs), min(ys), max(xs) + 1, max(ys) + 1


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

    _jpeg: Any = field(repr=False, default=None)  # (bytes, orientation, stored w, stored h) of a YCbCr JPEG

    def full(self) -> np.ndarray:
        """uint8 (height, width, 3), decoded on first call."""
        with self._lock:
            if callable(self._full):
                self._full = self._full()
            return self._full

    def regions(self, regions: list[tuple[int, int, int, int]]) -> list[np.ndarray]:
        """uint8 pixels of each upright (x0, y0, x1, y1) region (inside the image) at full
        resolution: decoded alone or cut from the JPEG without decoding the rest where this
        install can (the module's docstring), else sliced from `full()`. The pixels are the same
        every way."""
        with self._lock:
            decoded = not callable(self._full)
        if self._jpeg is not None and not decoded and regions:
            data, orientation, stored_w, stored_h = self._jpeg
            stored = [_stored_region(r, orientation, stored_w, stored_h) for r in regions]
            partial = _partial_decoder()
            # Region decoding entropy-decodes each region's rows down to its bottom.
            if partial is not None and sum(y1 for _, _, _, y1 in stored) < 1.5 * stored_h:
                try:
                    return _decode_regions(partial, data, orientation, stored)
                except Exception:  # corrupt data on the way: the next way decides, the whole decode words the error
                    pass
            turbo = _turbo()
            if turbo is not None:
                try:
                    return _cut(turbo, data, orientation, stored_w, stored_h, stored)
                except Exception:  # an odd file libturbojpeg refuses: the whole decode decides
                    pass
        full = self.full()
        return [np.ascontiguousarray(full[y0:y1, x0:x1]) for x0, y0, x1, y1 in regions]


def _decode_regions(decode_region: Any, data: bytes, orientation: int, stored: list[tuple[int, int, int, int]]) -> list[np.ndarray]:
    """Each stored region decoded alone by dfx._jpegregion (columns widened to an iMCU), trimmed, upright."""
    out = []
    for x0, y0, x1, y1 in stored:
        rgb, out_x, _, out_w, out_h = decode_region(data, x0, y0, x1 - x0, y1 - y0)
        pixels = np.frombuffer(rgb, np.uint8).reshape(out_h, out_w, 3)[:, x0 - out_x:x1 - out_x]
        out.append(_upright(pixels, orientation))
    return out


def _cut(turbo: Any, data: bytes, orientation: int, stored_w: int, stored_h: int,
         stored: list[tuple[int, int, int, int]]) -> list[np.ndarray]:
    """Lossless cuts of the stored regions (MCU-aligned, one MCU of guard band), decoded, trimmed and turned upright."""
    from turbojpeg import TJFLAG_ACCURATEDCT, TJPF_RGB

    subsampling = turbo.decode_header(data)[2]
    mcu_w, mcu_h = _MCU.get(subsampling, (32, 16))
    cuts, trims = [], []
    for x0, y0, x1, y1 in stored:
        cx0, cy0 = max(0, (x0 - mcu_w) // mcu_w * mcu_w), max(0, (y0 - mcu_h) // mcu_h * mcu_h)
        cx1, cy1 = min(stored_w, x1 + mcu_w), min(stored_h, y1 + mcu_h)
        cuts.append((cx0, cy0, cx1 - cx0, cy1 - cy0))
        trims.append((x0 - cx0, y0 - cy0, x1 - cx0, y1 - cy0))
    out = []
    for piece, (tx0, ty0, tx1, ty1) in zip(turbo.crop_multiple(data, cuts, copynone=True), trims):
        pixels = turbo.decode(piece, pixel_format=TJPF_RGB, flags=TJFLAG_ACCURATEDCT)[ty0:ty1, tx0:tx1]
        out.append(_upright(pixels, orientation))
    return out


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
    width, height, orientation, header_mode = header
    reduction = finder_scale or 1
    full_decoder = (lambda: _fast_full(data, orientation, name)) if fast else (lambda: np.asarray(to_rgb(data)))
    if reduction == 1:
        full = full_decoder()
        return Photo(name, full.shape[0], full.shape[1], full, 1.0, full)
    small = _fast_scaled(data, reduction, orientation, name) if fast else _pil_scaled(data, reduction, name)
    up_h, up_w = (width, height) if orientation in (5, 6, 7, 8) else (height, width)
    jpeg = (data, orientation, width, height) if header_mode == "RGB" else None
    return Photo(name, up_h, up_w, small, up_w / small.shape[1], full_decoder, _jpeg=jpeg)


def _from_full(name: str, full: np.ndarray, finder_scale: int | None) -> Photo:
    from PIL import Image

    reduction = finder_scale or 1
    if reduction == 1:
        return Photo(name, full.shape[0], full.shape[1], full, 1.0, full)
    small = np.asarray(Image.fromarray(full).reduce(reduction))
    return Photo(name, full.shape[0], full.shape[1], small, full.shape[1] / small.shape[1], full)


def _jpeg_header(data: bytes, name: str) -> tuple[int, int, int, str] | None:
    """(width, height, EXIF orientation, "RGB" or "L") of a plain YCbCr or grey JPEG within the pixel limit;
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
            return image.size[0], image.size[1], orientation if orientation in _ORIENT else 1, image.mode
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
    return _upright(pixels, orientation)


def _fast_scaled(data: bytes, reduction: int, orientation: int, name: str) -> np.ndarray:
    import simplejpeg

    try:
        height, width = simplejpeg.decode_jpeg_header(data)[:2]
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=-(-height // reduction),
                                        min_width=-(-width // reduction), min_factor=reduction)
    except Exception:
        return _pil_scaled(data, reduction, name)
    return _upright(pixels, orientation)


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
