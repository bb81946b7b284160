"""Input doors under hostile input (issue #15): load_image raises only ImageError with a reason a
person can act on, one pixel limit checked before decoding with one message, folder walks that
recognise images by content, and a results file that --resume reads without surprises."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dfx import images
from dfx.errors import DfxError
from dfx.images import ImageError, load_image


def _ifd(entries: list[tuple[int, int, int, int]], next_offset: int) -> bytes:
    out = struct.pack("<H", len(entries))
    for tag, kind, count, value in sorted(entries):
        out += struct.pack("<HHII", tag, kind, count, value)
    return out + struct.pack("<I", next_offset)


# A 1x1 8-bit grey TIFF: width, height, bits, compression, photometric, strip offset (the pixel
# at byte 8), samples, rows per strip, strip byte count. Types: 3 SHORT, 4 LONG, 5 RATIONAL.
_TIFF_1X1 = [(256, 3, 1, 1), (257, 3, 1, 1), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
             (273, 4, 1, 8), (277, 3, 1, 1), (278, 3, 1, 1), (279, 4, 1, 1)]


def tiff_second_frame_without_dimensions() -> bytes:
    """Frame 0 is fine; frame 1 has no width/height. Pillow raised TypeError("Missing
    dimensions") when load_image counted frames through `n_frames` (fuzzer find, issue #15)."""
    first_ifd = 10
    second_ifd = first_ifd + 2 + 12 * len(_TIFF_1X1) + 4
    return b"II*\x00" + struct.pack("<I", first_ifd) + b"\x80\x00" + _ifd(_TIFF_1X1, second_ifd) + _ifd([(259, 3, 1, 1)], 0)


def tiff_rational_strip_offset() -> bytes:
    """StripOffsets stored as a RATIONAL: Pillow raised TypeError("'IFDRational' object cannot
    be interpreted as an integer") while loading (fuzzer find, issue #15)."""
    rational_at = 10 + 2 + 12 * len(_TIFF_1X1) + 4
    entries = [(t, 5, c, rational_at) if t == 273 else (t, k, c, v) for t, k, c, v in _TIFF_1X1]
    return b"II*\x00" + struct.pack("<I", 10) + b"\x80\x00" + _ifd(entries, 0) + struct.pack("<II", 8, 1)


def png_declaring(width: int, height: int) -> bytes:
    """A 4x4 PNG whose header claims width x height (a decompression bomb's header)."""
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    ihdr = 16
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13])))
    return bytes(data)


def _encode(fmt: str, size: tuple[int, int] = (12, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(buffer, fmt)
    return buffer.getvalue()


# ---- the two TIFF files the fuzzer found ----------------------------------------------------------


def test_tiff_with_a_broken_second_frame_decodes_its_first_frame():
    pixels = load_image(tiff_second_frame_without_dimensions(), 4, "crop")
    assert pixels.shape == (4, 4, 3) and pixels[1, 1].tolist() == [0x80] * 3 and int(pixels.sum()) == 3 * 0x80  # grey, centred


def test_tiff_broken_second_frame_through_a_pil_image():
    image = Image.open(io.BytesIO(tiff_second_frame_without_dimensions()))
    with pytest.raises(TypeError, match="Missing dimensions"):
        image.n_frames  # what load_image used to ask: Pillow walks every frame's header
    assert load_image(image, 4, "crop")[1, 1].tolist() == [0x80] * 3  # frame 0 is fine


def test_tiff_rational_strip_offset_is_an_image_error():
    with pytest.raises(ImageError) as info:
        load_image(tiff_rational_strip_offset(), 4)
    assert info.value.reason == (
        "cannot decode image (malformed TIFF data: TypeError: 'IFDRational' object cannot be interpreted as an integer)"
    )
    assert info.value.source == f"<{len(tiff_rational_strip_offset())} bytes>"


def test_the_same_bytes_from_a_file_name_the_file(tmp_path):
    path = tmp_path / "upload.tif"
    path.write_bytes(tiff_rational_strip_offset())
    with pytest.raises(ImageError, match="IFDRational") as info:
        load_image(path, 4)
    assert info.value.source == str(path)


def test_only_the_allowed_decoders_are_reached():
    ppm = _encode("PPM")
    assert Image.open(io.BytesIO(ppm)).format == "PPM"  # Pillow would decode it ...
    with pytest.raises(ImageError, match=r"^<\d+ bytes>: not an image \(unknown format\)$"):
        load_image(ppm, 4)  # ... dfx does not: every decoder is attack surface
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(ImageError, match="not an image"):
        load_image(eps, 4)  # EPS would hand the bytes to Ghostscript


def test_camera_multi_picture_jpegs_still_decode():
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(buffer, "MPO", save_all=True, append_images=[Image.new("RGB", (8, 8))])
    assert Image.open(io.BytesIO(buffer.getvalue())).format == "MPO"  # Pillow's JPEG plugin opens these
    assert load_image(buffer.getvalue(), 4)[0, 0, 0] > 240  # the first picture


def test_a_signature_with_a_broken_body_says_which_format():
    with pytest.raises(ImageError, match=r"not a valid PNG file"):
        load_image(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, 4)


# ---- one pixel limit ------------------------------------------------------------------------------


def _limit_message(pixels: int, dims: str, limit: int = images.MAX_PIXELS) -> str:
    return images.too_large_reason(pixels, limit, dims)


@pytest.mark.parametrize("width, height", [(10_000, 5_000), (20_000, 10_000), (100_000, 100_000)])
def test_bombs_get_one_message_with_our_limit_before_decoding(width, height, monkeypatch):
    # 50 MP is ours alone to refuse; 200 MP passes Pillow's warning, 10 GP its hard error.
    from PIL import ImageFile

    data = png_declaring(width, height)
    decoded: list[object] = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self) or real_load(self))
    with pytest.raises(ImageError) as info:
        load_image(data, 8)
    assert decoded == []  # refused from the header: no pixel was decoded
    assert info.value.reason == _limit_message(width * height, f"{width}x{height}") or (
        # Pillow's hard limit fires inside Image.open, before the size is exposed: the count
        # comes from its message, the words and the limit are ours.
        info.value.reason == images.too_large_reason(width * height, images.MAX_PIXELS)
    )
    assert "40,000,000 pixels" in info.value.reason and "DFX_MAX_PIXELS" in info.value.reason
    assert "178956970" not in info.value.reason and "bomb" not in info.value.reason.lower()


def test_the_limit_is_the_same_for_arrays_pil_images_and_files(tmp_path, monkeypatch):
    monkeypatch.setenv("DFX_MAX_PIXELS", "100")
    expected = _limit_message(11 * 10, "11x10", 100)
    sources = [np.zeros((10, 11, 3), np.uint8), Image.new("RGB", (11, 10)), _encode("PNG", (11, 10))]
    path = tmp_path / "x.jpg"
    path.write_bytes(_encode("JPEG", (11, 10)))
    for source in [*sources, path]:
        with pytest.raises(ImageError) as info:
            load_image(source, 4)
        assert info.value.reason == expected, source
    assert load_image(np.zeros((10, 10, 3), np.uint8), 4).shape == (4, 4, 3)  # exactly at the limit


def test_the_limit_is_configurable_and_checked(monkeypatch):
    data = png_declaring(10_000, 5_000)  # 50 MP: over the default
    monkeypatch.setenv("DFX_MAX_PIXELS", "60_000_000")
    with pytest.raises(ImageError, match="decode"):  # past the limit check: the 4x4 body is short
        load_image(data, 8)
    monkeypatch.setenv("DFX_MAX_PIXELS", "lots")
    with pytest.raises(ValueError, match="DFX_MAX_PIXELS must be a positive number"):
        load_image(data, 8)


# ---- files that are not what they seem -------------------------------------------------------------


def test_special_files_never_block(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(fifo, 4)  # opening a FIFO for reading would wait for a writer forever
    files, skipped = images.walk_images([tmp_path])
    assert files == [] and skipped == [str(fifo)]


def test_oversized_bytes_are_refused_before_decoding(monkeypatch):
    monkeypatch.setattr(images, "MAX_FILE_BYTES", 100)
    with pytest.raises(ImageError, match=r"input too large \(\d+ bytes > 100\)"):
        load_image(_encode("PNG", (64, 64)) + b"\x00" * 100, 4)


# ---- content sniffing -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "AVIF"])  # HEIF: tests/test_images.py
def test_sniff_knows_every_format_dfx_reads(fmt):
    assert images.sniff(_encode(fmt)[: images.SNIFF_BYTES]) == fmt
    assert fmt in images.IMAGE_FORMATS


def test_walk_finds_extensionless_uploads_and_counts_the_rest(tmp_path):
    inbox = tmp_path / "inbox"
    (inbox / "sub").mkdir(parents=True)
    (inbox / "3f9a0c").write_bytes(_encode("JPEG"))  # hash names, no suffix
    (inbox / "sub" / "b71e").write_bytes(_encode("PNG"))
    (inbox / "photo.webp").write_bytes(_encode("WEBP"))
    (inbox / "empty.jpg").write_bytes(b"")  # image suffix: scanned, becomes an error row
    (inbox / "notes.txt").write_text("hello")
    (inbox / "d41d8c").write_bytes(b"\x00\x01 not an image")
    files, skipped = images.walk_images([inbox])
    rel = lambda paths: sorted(os.path.relpath(p, inbox) for p in paths)  # noqa: E731
    assert rel(files) == ["3f9a0c", "empty.jpg", "photo.webp", "sub/b71e"]
    assert rel(skipped) == ["d41d8c", "notes.txt"]
    for path in files:
        if not path.endswith("empty.jpg"):
            assert load_image(path, 8).shape == (8, 8, 3)

    only = images.parse_extensions("JPG, .webp")
    assert only == (".jpg", ".webp")
    files, skipped = images.walk_images([inbox], only)
    assert rel(files) == ["empty.jpg", "photo.webp"]  # restricted: content is not read
    assert rel(skipped) == ["3f9a0c", "d41d8c", "notes.txt", "sub/b71e"]
    assert images.iter_image_files([inbox / "notes.txt"]) == [str(inbox / "notes.txt")]  # named: always


def test_scan_reports_extensionless_images_and_skipped_files(tmp_path, capsys):
    """dfx scan on a tiny ONNX bundle: a PNG stored without a suffix gets a score, a text file
    is counted as skipped, and --extensions restricts the walk."""
    from dfx.cli import main
    from dfx.runtime.scan.results import read_results
    from _hardening_bundle import make_onnx_bundle

    bundle = make_onnx_bundle(tmp_path / "bundle")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a1b2c3").write_bytes(_encode("PNG"))
    (inbox / "x.jpg").write_bytes(_encode("JPEG"))
    (inbox / "readme").write_text("not an image")
    out = tmp_path / "rows.jsonl"
    assert main(["scan", str(bundle), str(inbox), "--out", str(out), "--backend", "ort-cpu"]) == 0
    rows = {Path(r.path).name: r for r in read_results(out)}
    assert sorted(rows) == ["a1b2c3", "x.jpg"] and all(r.ok for r in rows.values())
    err = capsys.readouterr().err
    summary = [line for line in err.splitlines() if line.startswith("{")][-1]
    assert '"skipped_non_image": 1' in summary and "dfx scan: bundle is unsigned" in err
    assert main(["scan", str(bundle), str(inbox), "--out", str(out), "--overwrite", "--backend", "ort-cpu",
                 "--extensions", "jpg"]) == 0
    assert [Path(r.path).name for r in read_results(out)] == ["x.jpg"]
    assert '"skipped_non_image": 2' in capsys.readouterr().err


# ---- the results file --resume reads ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text, why",
    [
        ('{"path": "a", "logit": 1e999999}\n', "finite number"),  # json reads it as inf: no runner wrote it
        ('{"path": "a", "logit": NaN}\n', "finite number"),
        ('{"path": "a", "logit": ' + "9" * 400 + "}\n", "too large"),  # an int too large for a float
        ("[" * 100_000 + "\n", "recursion"),  # nesting deep enough to exhaust the recursion limit
        ('"just a string"\n', "expected an object"),
        ('{"path": {"nested": 1}}\n', "no path"),
        ('{"path": "a\\u0000b", "logit": 1}\n', "NUL"),
    ],
)
def test_hostile_jsonl_rows_are_refused_with_a_dfx_error(tmp_path, text, why):
    from dfx.runtime.scan.results import read_results

    path = tmp_path / "r.jsonl"
    path.write_text(text)
    with pytest.raises(DfxError, match="is not a dfx result row") as info:
        read_results(path)
    assert why in str(info.value) and f"{path}:1" in str(info.value)


@pytest.mark.parametrize(
    "text, why",
    [
        ("path,logit\n" + "a" * 200_000 + ",1\n", "field larger than field limit"),
        ('path,logit\n"a\x00b",1\n', "NUL"),
        ("path,logit\na,inf\n", "finite number"),
    ],
)
def test_hostile_csv_is_refused_with_a_dfx_error(tmp_path, text, why):
    from dfx.runtime.scan.results import read_results

    path = tmp_path / "r.csv"
    path.write_text(text)
    with pytest.raises(DfxError) as info:
        read_results(path)
    assert str(path) in str(info.value) and why in str(info.value)


def test_an_unterminated_last_csv_row_is_a_cut_off_row_not_an_error(tmp_path):
    """A quote left open at the end is what a scan killed mid-write leaves: not a row, no error."""
    from dfx.runtime.scan.results import read_results

    path = tmp_path / "r.csv"
    path.write_text('path,logit\nok,1\n"unterminated\n')
    assert [r.path for r in read_results(path)] == ["ok"]
    read_results(path, repair=True)
    assert path.read_text() == "path,logit\nok,1\n"


# ---- bundle folders from elsewhere -----------------------------------------------------------------


def _bundle_with(tmp_path: Path, **changes) -> Path:
    """A bundle folder with one real file and a manifest changed as asked (None deletes a key)."""
    import hashlib
    import json

    root = tmp_path / "bundle"
    root.mkdir()
    (root / "model.onnx").write_bytes(b"model")
    manifest = {
        "format": "dfx-bundle", "format_version": 1,
        "input": {"height": 16, "width": 16, "fit": "crop"},
        "threshold": {"logit": 0.5},
        "files": {"model.onnx": {"sha256": hashlib.sha256(b"model").hexdigest(), "role": "onnx-fp32"}},
    }
    for key, value in changes.items():
        if value is None:
            manifest.pop(key)
        else:
            manifest[key] = value
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


GOOD_HASH = "9b4e8b4f3ebbf1d5e8e4b7ba1d3b2fbd1a2a98cb21c0c8c9bd3df9e0e0a9fbdb"


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"files": {"../../etc/passwd": {"sha256": GOOD_HASH}}}, "plain relative path"),
        ({"files": {"/etc/passwd": {"sha256": GOOD_HASH}}}, "plain relative path"),
        ({"files": {"a/./b": {"sha256": GOOD_HASH}}}, "plain relative path"),
        ({"files": ["model.onnx"]}, "files must be an object"),
        ({"files": {"model.onnx": {"sha256": 7}}}, "64 lowercase hex"),
        ({"files": {"model.onnx": "abc"}}, "must be an object"),
        ({"input": {"height": 10**9, "width": 16, "fit": "crop"}}, "input.height must be an integer in 1..2048"),
        ({"input": {"height": True, "width": 16, "fit": "crop"}}, "input.height"),
        ({"input": {"height": 16, "width": 16, "fit": "stretch"}}, "input.fit"),
        ({"input": None}, "input is missing"),
        ({"threshold": {"logit": "0.5"}}, "threshold.logit must be a finite number"),
        ({"calibration": {"scale": "x"}}, "calibration.scale"),
        ({"engines": {"file": "x"}}, "engines must be a list"),
        ({"engines": [{"file": "../x.engine", "precision": "int8"}]}, "engines[0].file"),
        ({"engines": [{"file": "x.engine", "trt_version": "1" * 5000}]}, "engines[0].trt_version"),
        ({"engines": [{"file": "x.engine", "max_batch": 10**9}]}, "engines[0].max_batch"),
        ({"format_version": {"a": 1}}, "bundle format"),
    ],
)
def test_hostile_manifests_raise_only_bundle_errors(tmp_path, changes, words):
    from dfx.bundle import Bundle, BundleError

    root = _bundle_with(tmp_path, **changes)
    with pytest.raises(BundleError) as info:
        Bundle.open(root)
    assert words in str(info.value)


@pytest.mark.parametrize("text", ["[" * 100_000, "{\"format\": \"dfx-bundle\", \"format_version\": 1", "\xff\xfe", "NaN"])
def test_unparsable_manifests_are_bundle_errors(tmp_path, text):
    from dfx.bundle import Bundle, BundleError

    root = _bundle_with(tmp_path)
    (root / "manifest.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(BundleError):
        Bundle.open(root)


def test_an_oversized_manifest_is_refused_unread(tmp_path, monkeypatch):
    from dfx import bundle as bundle_module
    from dfx.bundle import Bundle, BundleError

    root = _bundle_with(tmp_path)
    monkeypatch.setattr(bundle_module, "MAX_MANIFEST_BYTES", 100)
    with pytest.raises(BundleError, match="over 100 bytes"):
        Bundle.open(root)


def test_a_good_manifest_still_opens(tmp_path):
    from dfx.bundle import Bundle

    bundle = Bundle.open(_bundle_with(tmp_path, calibration={"scale": 1.5, "offset": -0.2}))
    assert bundle.input_size == (16, 16) and bundle.threshold == 0.5 and bundle.signature == "unsigned"


def test_soak_script_runs_briefly(tmp_path):
    """benchmarks/soak.py, seconds instead of minutes, on the tiny bundle: one Detector shared by
    4 threads answers every input, broken ones as error rows, and the report carries the bar."""
    from dfx.benchmarks.soak import soak_detector
    from _hardening_bundle import make_onnx_bundle

    report = soak_detector(str(make_onnx_bundle(tmp_path / "b")), seconds=3, threads=4, window=1, backend="ort-cpu", batch=4)
    assert report["errors"] == 0 and report["inputs"] > 16 and report["alive_threads_after_stop"] == 0
    assert report["bad_inputs_answered_as_error_rows"] >= 1 and report["rss_start_mb"] > 0 and report["drift"] is not None


def test_atomic_writes_leave_the_old_file_when_the_writer_fails_and_break_hard_links(tmp_path):
    from dfx.atomic import atomic_path, write_atomic

    target = tmp_path / "manifest.json"
    write_atomic(target, "old\n")
    linked = tmp_path / "other.json"
    os.link(target, linked)  # another run's copy (cp -al)

    def half_then_crash(handle):
        handle.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_atomic(target, half_then_crash)
    assert target.read_text() == "old\n"
    write_atomic(target, b"new\n")
    assert target.read_text() == "new\n" and linked.read_text() == "old\n"  # replaced, not rewritten
    with atomic_path(tmp_path / "ae.weights.h5") as tmp:
        assert tmp.name.endswith(".weights.h5") and tmp.parent == tmp_path  # Keras checks the suffix
        tmp.write_bytes(b"w")
    assert (tmp_path / "ae.weights.h5").read_bytes() == b"w"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ae.weights.h5", "manifest.json", "other.json"]
    (tmp_path / "plain").write_bytes(b"")
    assert target.stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777  # open()'s permissions, not mkstemp's 0600
