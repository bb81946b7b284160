"""The one pixel path, dfx.images.load_image."""

from __future__ import annotations

import io

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
