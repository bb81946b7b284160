"""The one pixel path: any image source -> uint8 RGB H×W×3, the model's input.

Training, calibration, evaluation and serving all call `load_image`, so the pixels a model
sees can never differ between them. Two fit policies are stored in the bundle:

- ``resize``: resize to H×W (the seed project's behaviour; blurs high-frequency traces).
- ``crop``: centre crop at native resolution, zero-padding what is smaller. Keeps the
  periodic upsampling traces that GAN images carry.
"""

from __future__ import annotations

import functools
import io
import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, Union

import numpy as np

from dfx.errors import DfxError

if TYPE_CHECKING:
    import PIL.Image

FIT_POLICIES = ("resize", "crop")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".heif", ".avif")
# The Pillow decoders dfx lets near untrusted bytes. Every other plugin (EPS hands data to
# Ghostscript, and dozens of rarely-fuzzed legacy formats) is refused: less attack surface.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "AVIF", "HEIF")
# Phone formats whose decoder an install may lack, and what provides it. HEIF is what iPhones
# store (HEIC); its decoder is pi-heif (libheif + libde265, LGPL, in the `faces` extra).
OPTIONAL_FORMATS = {"AVIF": "Pillow built with AVIF (Pillow >= 11.2 wheels are)",
                    "HEIF": "pi-heif (pip install pi-heif, or the dfx[faces] extra)"}

# Guards against hostile or broken inputs. 40 MP covers any camera photo; a "decompression
# bomb" declares far more pixels than its bytes would suggest. One limit for every source kind,
# checked on the header before any pixel is decoded; DFX_MAX_PIXELS overrides it.
MAX_PIXELS = 40_000_000
PIXEL_LIMIT_ENV = "DFX_MAX_PIXELS"
MAX_FILE_BYTES = 64 * 1024 * 1024
_MAX_REASON = 240  # characters of an underlying library's message kept in a reason

# First bytes of each format in IMAGE_FORMATS: folder walks recognise images by content, so an
# upload stored under a bare hash name is scanned, not skipped.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
    (b"BM", "BMP"),
)
# ISO-BMFF brands (the `ftyp` box): AVIF's first, since AVIF files list HEIF's mif1 too.
_AVIF_BRANDS = {b"avif", b"avis"}
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}
SNIFF_BYTES = 32  # a BMFF ftyp box's major brand and its first compatible brands
# The MIME type of each sniffed format (C2PA readers take one).
MIME_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "TIFF": "image/tiff", "BMP": "image/bmp",
              "WEBP": "image/webp", "AVIF": "image/avif", "HEIF": "image/heif"}

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, np.ndarray, "PIL.Image.Image"]  # noqa: F821


class ImageError(DfxError):
    """An input could not be turned into model pixels. Carries the source and the reason."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


def header_size(source: Any) -> tuple[int, int]:
    """(height, width) of an encoded image (from its header only), an array or a PIL image; (0, 0)
    when the header cannot be read (decoding then says why). Face finding uses it to tell a face
    crop from a whole photo before anything is decoded."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        from PIL import Image

        try:
            with Image.open(io.BytesIO(source), formats=open_formats()) as image:
                return image.height, image.width
        except Exception:
            return 0, 0
    shape = getattr(source, "shape", None)
    if shape is not None:
        return int(shape[0]), int(shape[1])
    width, height = getattr(source, "size", (0, 0))
    return height, width


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


def pixel_limit() -> int:
    """The largest image (width × height) dfx decodes: $DFX_MAX_PIXELS, else MAX_PIXELS."""
    text = os.environ.get(PIXEL_LIMIT_ENV, "").strip()
    if not text:
        return MAX_PIXELS
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        # A configuration mistake, not a bad input: ValueError, like an unknown fit policy.
        raise ValueError(f"{PIXEL_LIMIT_ENV} must be a positive number of pixels, not {text!r}")
    return value


def too_large_reason(pixels: int, limit: int, dims: str = "") -> str:
    """The one message for an image over the pixel limit, whichever source or check found it."""
    shown = f"{dims} = {pixels:,} pixels" if dims else f"{pixels:,} pixels"
    return f"image too large ({shown}; the limit is {limit:,} pixels, set {PIXEL_LIMIT_ENV} to change it)"


def sniff(head: bytes) -> str | None:
    """The format (a name in IMAGE_FORMATS) that these first bytes announce, or None."""
    for magic, fmt in _SIGNATURES:
        if head.startswith(magic):
            return fmt
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if len(head) >= 12 and head[4:8] == b"ftyp":
        box = min(len(head), int.from_bytes(head[:4], "big"))
        brands = {head[8:12]} | {head[i:i + 4] for i in range(16, box - 3, 4)}  # 12:16 is the minor version
        if brands & _AVIF_BRANDS:
            return "AVIF"
        if brands & _HEIF_BRANDS:
            return "HEIF"
    return None


@functools.cache
def open_formats() -> tuple[str, ...]:
    """The IMAGE_FORMATS this install decodes, for Image.open(formats=...) (which fails on a name
    no plugin registered). Registers pi-heif's HEIF decoder with Pillow where it is installed."""
    from PIL import Image

    Image.init()
    if "HEIF" not in Image.OPEN:
        try:
            import pi_heif

            pi_heif.register_heif_opener()
        except Exception:  # not installed (or its library will not load): HEIF inputs get error rows saying so
            pass
    return tuple(fmt for fmt in IMAGE_FORMATS if fmt in Image.OPEN)


def _missing_decoder_reason(fmt: str | None) -> str | None:
    """For a format dfx reads but this install cannot decode: the reason an error row gives."""
    if fmt in OPTIONAL_FORMATS and fmt not in open_formats():
        return f"cannot decode image ({fmt} needs {OPTIONAL_FORMATS[fmt]})"
    return None


def sniff_file(path: str | os.PathLike) -> str | None:
    """sniff() on a regular file's first bytes; None for anything unreadable or not a regular
    file (a FIFO or device would block or never end)."""
    import stat

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        with open(path, "rb") as handle:
            return sniff(handle.read(SNIFF_BYTES))
    except OSError:
        return None


def load_image(source: ImageSource, size: int | tuple[int, int], fit: str = "resize") -> np.ndarray:
    """Decode `source` and fit it to `size` (H, W). Returns uint8 (H, W, 3), C-contiguous.

    `source` may be a path, encoded bytes, a PIL image or an array (H×W, H×W×1/3/4; uint8,
    uint16, or float in [0, 1]). Any input that cannot become pixels (unreadable, truncated,
    empty, malformed, over the pixel limit) raises ImageError with the source and a reason,
    whatever Pillow or numpy raised underneath. ValueError only for a bad `fit`/`size` or
    $DFX_MAX_PIXELS (the caller's mistake, not the input's).
    """
    if fit not in FIT_POLICIES:
        raise ValueError(f"fit must be one of {FIT_POLICIES}, not {fit!r}")
    height, width = _as_hw(size)
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, not {size!r}")
    name = describe(source)
    pixel_limit()  # a bad $DFX_MAX_PIXELS is the caller's ValueError, never an input's ImageError
    image = to_rgb(source)
    try:
        if fit == "resize":
            return _resize(image, height, width)
        return _centre_crop(np.asarray(image), height, width)
    except Exception as exc:  # lazy decoders can fail late, in resize: still the input's fault
        raise ImageError(name, _decode_reason(exc, getattr(image, "format", None))) from exc


def load_many(
    sources: list[ImageSource], size: int | tuple[int, int], fit: str = "resize", *,
    workers: int | None = None, desc: str | None = None, progress: bool = True, leave: bool = True,
    alter: Callable[[Any], Any] | None = None,
) -> tuple[np.ndarray, list[int], list[ImageError]]:
    """Decode many sources with `load_image` on a pool of threads (Pillow releases the GIL
    while it decodes). Returns (uint8 (N, H, W, 3) of those that decoded, their indices in
    `sources`, the ImageError of each that did not), all in input order. An unreadable image
    is reported, never fatal: one broken file must not cost the others. `alter` (a source ->
    a PIL image or encoded bytes, e.g. the protocol's laundering) runs first, in the same threads."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    height, width = _as_hw(size)

    def one(source: ImageSource) -> np.ndarray | ImageError:
        try:
            return load_image(alter(source) if alter is not None else source, (height, width), fit)
        except ImageError as exc:
            return exc
        except OSError as exc:  # an alteration that could not read its file
            return ImageError(describe(source), str(exc))

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
    pixel_limit()  # raises ValueError on a bad $DFX_MAX_PIXELS, before any input is blamed
    if isinstance(source, np.ndarray):
        try:
            return Image.fromarray(_array_to_rgb8(source, name), "RGB")
        except ImageError:
            raise
        except Exception as exc:  # odd strides, object arrays, ...: still one error type
            raise ImageError(name, _decode_reason(exc, "array")) from exc
    if isinstance(source, Image.Image):
        try:
            return _pil_to_rgb(source, name)
        except ImageError:
            raise
        except Exception as exc:  # a caller's lazily opened image decodes here
            raise ImageError(name, _decode_reason(exc, source.format)) from exc
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) > MAX_FILE_BYTES:
            raise ImageError(name, f"input too large ({len(source)} bytes > {MAX_FILE_BYTES})")
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
            # Reads the header only; pixels are decoded by load(), after the size check.
            image = Image.open(io.BytesIO(data), formats=open_formats())
            _check_pixels(image.size, name)
            image.load()
            return _pil_to_rgb(image, name)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own (higher) bomb guard fired first: same message as ours, with our limit.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        raise ImageError(name, too_large_reason(int(found.group(1)) if found else 0, pixel_limit())) from exc
    except Image.UnidentifiedImageError as exc:
        fmt = sniff(data[:SNIFF_BYTES])
        reason = _missing_decoder_reason(fmt) or (f"cannot decode image (not a valid {fmt} file)" if fmt else "not an image (unknown format)")
        raise ImageError(name, reason) from exc
    except Exception as exc:  # crafted files reach TypeErrors etc. deep in Pillow: one error type
        raise ImageError(name, _decode_reason(exc, sniff(data[:SNIFF_BYTES]))) from exc


def _decode_reason(exc: BaseException, fmt: str | None) -> str:
    """A reason a person can act on, from whatever a decoder raised."""
    detail = " ".join(str(exc).split())[:_MAX_REASON] or type(exc).__name__
    if isinstance(exc, MemoryError):
        return "cannot decode image (out of memory while decoding)"
    if isinstance(exc, (OSError, ValueError, SyntaxError, EOFError)):
        # Pillow's usual words for broken data, e.g. "image file is truncated (3 bytes not processed)".
        return f"cannot decode image ({detail})"
    # Anything else means the decoder met a structure it did not expect: a crafted or corrupt file.
    return f"cannot decode image (malformed {fmt or 'image'} data: {type(exc).__name__}: {detail})"


def read_bytes(source: str | os.PathLike) -> bytes:
    """A file's bytes under load_image's limits and errors (ImageError: no such file, too large,
    ...). For readers that need the encoded bytes beside the pixels (C2PA provenance): read
    once, then hand the same bytes to load_image and to the other reader."""
    return _read_file(Path(source), describe(source))


def _read_file(path: Path, name: str) -> bytes:
    import stat

    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(name)
        if not stat.S_ISREG(info.st_mode):  # a FIFO or device would block or never end
            raise ImageError(name, "not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise ImageError(name, f"file too large ({info.st_size} bytes > {MAX_FILE_BYTES})")
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)  # bounded even if the file grows meanwhile
        if len(data) > MAX_FILE_BYTES:
            raise ImageError(name, f"file too large (over {MAX_FILE_BYTES} bytes)")
        return data
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
    limit = pixel_limit()
    if width * height > limit:
        raise ImageError(name, too_large_reason(width * height, limit, f"{width}x{height}"))


def _pil_to_rgb(image: "PIL.Image.Image", name: str) -> "PIL.Image.Image":  # noqa: F821
    from PIL import Image, ImageOps

    _check_pixels(image.size, name)
    # Animated GIF/WebP/TIFF: the first frame. Not via n_frames, which walks (and parses) every
    # frame's header: a crafted TIFF's later frames raise TypeErrors there.
    if image.tell() != 0:
        image.seek(0)
        _check_pixels(image.size, name)
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


def parse_extensions(text: str | None) -> tuple[str, ...] | None:
    """"jpg,.PNG, webp" -> (".jpg", ".png", ".webp"); None or "" -> None (no restriction)."""
    if not text or not text.strip():
        return None
    found = tuple(dict.fromkeys("." + e.strip().lower().lstrip(".") for e in text.split(",") if e.strip().strip(".")))
    if not found:
        raise ValueError(f"no extension in {text!r}")
    return found


def walk_images(
    paths: Sequence[str | os.PathLike], extensions: tuple[str, ...] | None = None
) -> tuple[list[str], list[str]]:
    """(inputs to scan, files skipped) for files and folders (folders walked recursively, sorted).

    Files named explicitly are kept whatever they hold, so a bad file given on purpose yields
    an error row instead of vanishing silently. Inside folders a file is scanned when its
    suffix is an image suffix or, when the suffix says nothing, when its first bytes are an
    image signature (uploads are often stored under bare hash names). `extensions` (e.g.
    (".jpg", ".png")) restricts folder walks to exactly those suffixes, content unread. Every
    other file (and anything not a regular file, such as a FIFO) is returned as skipped.
    """
    import stat

    found: list[str] = []
    skipped: list[str] = []
    for entry in paths:
        entry = os.fspath(entry)
        if not os.path.isdir(entry):
            found.append(entry)
            continue
        for folder, dirs, files in os.walk(entry):
            dirs.sort()
            for name in sorted(files):
                path = os.path.join(folder, name)
                lower = name.lower()
                if extensions is not None:
                    keep = lower.endswith(extensions)
                else:
                    keep = lower.endswith(IMAGE_SUFFIXES) or sniff_file(path) is not None
                if keep:
                    try:
                        keep = stat.S_ISREG(os.stat(path).st_mode)
                    except OSError:
                        keep = True  # vanished or unreadable: its error row says so
                (found if keep else skipped).append(path)
    return found, skipped


def iter_image_files(paths: list[str | os.PathLike], extensions: tuple[str, ...] | None = None) -> list[str]:
    """The inputs walk_images() would scan (files named explicitly always, folders by content or
    suffix)."""
    return walk_images(paths, extensions)[0]
