"""The one pixel path, dfx.images.load_image."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dfx import images
from dfx.images import ImageError, load_image


def _gradient(w: int = 40, h: int = 30) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 77)], axis=2).astype(np.uint8)


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "WEBP"])
def test_lossless_formats_decode_exactly(fmt, tmp_path):
    pixels = _gradient()
    kw = {"lossless": True} if fmt == "WEBP" else {}
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(_encode(Image.fromarray(pixels), fmt, **kw))
    out = load_image(path, (30, 40), "crop")
    assert out.dtype == np.uint8 and out.shape == (30, 40, 3) and out.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(out, pixels)


def test_jpeg_and_every_source_kind_give_the_same_pixels(tmp_path):
    data = _encode(Image.fromarray(_gradient()), "JPEG", quality=95)
    path = tmp_path / "x.jpg"
    path.write_bytes(data)
    ref = load_image(path, 32, "resize")
    np.testing.assert_array_equal(load_image(data, 32, "resize"), ref)
    np.testing.assert_array_equal(load_image(Image.open(io.BytesIO(data)), 32, "resize"), ref)
    np.testing.assert_array_equal(load_image(np.asarray(Image.open(io.BytesIO(data))), 32, "resize"), ref)
    assert np.abs(ref.astype(int) - np.asarray(Image.fromarray(_gradient()).resize((32, 32), Image.Resampling.BILINEAR), dtype=int)).mean() < 3


def test_modes_grayscale_palette_alpha_cmyk_16bit():
    rgb = Image.fromarray(_gradient())
    for image in (rgb.convert("L"), rgb.convert("P"), rgb.convert("RGBA"), rgb.convert("CMYK"), rgb.convert("LA")):
        out = load_image(image, (30, 40), "crop")
        assert out.shape == (30, 40, 3) and out.dtype == np.uint8
    gray16 = (np.arange(30 * 40, dtype=np.uint16).reshape(30, 40) * 50)
    out = load_image(Image.fromarray(gray16), (30, 40), "crop")
    np.testing.assert_array_equal(out[:, :, 0], (gray16 >> 8).astype(np.uint8))
    floats = np.full((8, 8, 3), 0.5, np.float32)
    assert load_image(floats, 8, "crop").max() == 128


def test_exif_orientation_is_applied():
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # left half white
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = _encode(image, "JPEG", exif=exif.tobytes(), quality=95)
    out = load_image(data, (40, 20), "crop")
    assert out.shape == (40, 20, 3)
    assert out[:20].mean() > 200 and out[20:].mean() < 50  # white ends up on top


def test_first_gif_frame():
    frames = [Image.new("P", (16, 16), i) for i in (3, 9)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    a = load_image(buf.getvalue(), 16, "crop")
    b = load_image(_encode(frames[0], "GIF"), 16, "crop")
    np.testing.assert_array_equal(a, b)


def test_crop_keeps_native_pixels_and_pads_small_images():
    pixels = np.random.default_rng(0).integers(0, 256, (50, 60, 3), dtype=np.uint8)
    np.testing.assert_array_equal(load_image(pixels, (20, 30), "crop"), pixels[15:35, 15:45])
    out = load_image(pixels, (70, 60), "crop")
    assert out.shape == (70, 60, 3)
    assert not out[:10].any() and not out[60:].any()
    np.testing.assert_array_equal(out[10:60], pixels)


@pytest.mark.parametrize(
    "source, reason",
    [(b"", "empty"), (b"not an image at all", "not an image"), (np.zeros((0, 4, 3), np.uint8), "no pixels"),
     (np.zeros((4, 4, 2), np.uint8), "array must be")],
)
def test_bad_inputs_raise_one_typed_error(source, reason):
    with pytest.raises(ImageError, match=reason) as info:
        load_image(source, 8)
    assert info.value.reason and info.value.source


def test_truncated_missing_and_bomb(tmp_path, monkeypatch):
    data = _encode(Image.fromarray(_gradient(200, 200)), "PNG")
    with pytest.raises(ImageError, match="decode"):
        load_image(data[: len(data) // 2], 8)
    with pytest.raises(ImageError, match="no such file") as info:
        load_image(tmp_path / "missing.png", 8)
    assert "missing.png" in str(info.value)
    monkeypatch.setattr(images, "MAX_PIXELS", 100 * 100)
    with pytest.raises(ImageError, match="too large"):
        load_image(data, 8)
    with pytest.raises(ValueError):
        load_image(data, 8, fit="stretch")


def test_iter_image_files(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/1.jpg", "a/b/2.PNG", "a/notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    found = images.iter_image_files([tmp_path / "a", tmp_path / "a" / "notes.txt"])
    assert [p.replace(str(tmp_path), "") for p in found] == ["/a/1.jpg", "/a/b/2.PNG", "/a/notes.txt"]


def test_load_many_keeps_order_and_reports_the_unreadable():
    rng = np.random.default_rng(0)
    good = [rng.integers(0, 256, (20, 24, 3), dtype=np.uint8) for _ in range(3)]
    sources = [good[0], b"not an image", good[1], b"", good[2]]
    pixels, kept, errors = images.load_many(sources, (16, 16), "resize", workers=3, progress=False)
    assert kept == [0, 2, 4] and pixels.shape == (3, 16, 16, 3) and pixels.dtype == np.uint8
    for row, index in enumerate(kept):
        np.testing.assert_array_equal(pixels[row], load_image(sources[index], (16, 16), "resize"))
    assert [e.reason for e in errors] == ["not an image (unknown format)", "empty file"]


# ---- phone formats: HEIC (pi-heif) and AVIF (Pillow) ------------------------------------------------

DATA = Path(__file__).parent / "data"
needs_heif = pytest.mark.skipif("HEIF" not in images.open_formats(), reason="pi-heif is not installed (the dfx[faces] extra)")
needs_avif = pytest.mark.skipif("AVIF" not in images.open_formats(), reason="this Pillow has no AVIF plugin")


def _quadrants() -> np.ndarray:
    """What tests/data/quadrants*.heic hold: 64 wide, 48 high, green band on top, red left, blue right."""
    pixels = np.zeros((48, 64, 3), np.uint8)
    pixels[:, :32], pixels[:, 32:], pixels[:12] = (200, 30, 30), (30, 30, 200), (30, 200, 30)
    return pixels


def _near(decoded: np.ndarray, expected: np.ndarray) -> bool:
    """Lossy codecs at q90 on flat colours: close everywhere, not equal."""
    return decoded.shape == expected.shape and float(np.abs(decoded.astype(int) - expected).mean()) < 6


@needs_heif
def test_heic_decodes_and_is_turned_upright():
    plain = np.asarray(images.to_rgb(DATA / "quadrants.heic"))
    turned = np.asarray(images.to_rgb((DATA / "quadrants-orientation6.heic").read_bytes()))
    assert _near(plain, _quadrants())
    assert _near(turned, np.rot90(_quadrants(), -1))  # orientation 6: turned a quarter clockwise, as a JPEG would be
    assert load_image(DATA / "quadrants-orientation6.heic", 8).shape == (8, 8, 3)
    assert images.header_size((DATA / "quadrants.heic").read_bytes()) == (48, 64)


@needs_avif
def test_avif_decodes_and_is_turned_upright():
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(Image.fromarray(_quadrants()), "AVIF", quality=90, exif=exif.tobytes())
    assert images.sniff(data[: images.SNIFF_BYTES]) == "AVIF"
    assert _near(np.asarray(images.to_rgb(data)), np.rot90(_quadrants(), -1))


def test_a_heic_without_its_decoder_is_an_error_row_that_says_what_to_install(monkeypatch):
    data = (DATA / "quadrants.heic").read_bytes()
    assert images.sniff(data[: images.SNIFF_BYTES]) == "HEIF"
    monkeypatch.setattr(images, "open_formats", lambda: ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"))
    with pytest.raises(ImageError, match=r"HEIF needs pi-heif \(pip install pi-heif"):
        load_image(data, 8)


def test_bmff_sniffing_tells_heif_from_avif_and_from_video():
    def ftyp(major: bytes, *compatible: bytes) -> bytes:
        body = major + b"\x00\x00\x00\x00" + b"".join(compatible)
        return (8 + len(body)).to_bytes(4, "big") + b"ftyp" + body

    assert images.sniff(ftyp(b"heic", b"mif1", b"heic")) == "HEIF"
    assert images.sniff(ftyp(b"mif1", b"heic")) == "HEIF"
    assert images.sniff(ftyp(b"mif1", b"avif", b"miaf")) == "AVIF"  # AVIF files list HEIF's mif1 too
    assert images.sniff(ftyp(b"isom", b"iso2", b"mp41")) is None  # an MP4 video is not an image
    assert images.sniff(b"\x00\x00\x00\x18ftyp") is None  # cut short


@needs_heif
def test_walk_finds_phone_formats_by_suffix_and_by_content(tmp_path):
    heic = (DATA / "quadrants.heic").read_bytes()
    (tmp_path / "IMG_0001.HEIC").write_bytes(heic)
    (tmp_path / "9c1e2f").write_bytes(heic)  # an upload under a hash name
    files, skipped = images.walk_images([tmp_path])
    assert sorted(Path(f).name for f in files) == ["9c1e2f", "IMG_0001.HEIC"] and skipped == []


@needs_heif
def test_a_truncated_heic_is_an_error_not_a_crash():
    data = (DATA / "quadrants.heic").read_bytes()
    for cut in (40, len(data) - 1):
        with pytest.raises(ImageError, match="cannot decode image"):
            load_image(data[:cut], 8)
