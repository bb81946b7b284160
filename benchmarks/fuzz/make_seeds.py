"""Write the seed corpora (corpus/<door>/): small valid and broken inputs for each door, the
starting points the fuzzer mutates. Deterministic; rerun after changing a door's format:

    python benchmarks/fuzz/make_seeds.py

Every image seed starts with one control byte (the target's fit/size choice); results seeds
with one (.jsonl or .csv); serve seeds with one (JSON or binary extension, + header length).
"""

from __future__ import annotations

import base64
import io
import json
import struct
import sys
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

from targets import MODEL_SHA256, SIG_SEPARATOR, corpus_dir, signing_key  # noqa: E402


def _save(image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kw)
    return buffer.getvalue()


def image_seeds() -> dict[str, bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    seeds = {
        "rgb.jpg": _save(rgb, "JPEG", quality=80),
        "progressive.jpg": _save(rgb, "JPEG", quality=60, progressive=True),
        "gray.jpg": _save(rgb.convert("L"), "JPEG"),
        "cmyk.jpg": _save(rgb.convert("CMYK"), "JPEG"),
        "rgb.png": _save(rgb, "PNG"),
        "palette-alpha.png": _save(rgb.convert("P"), "PNG", transparency=3),
        "rgba.png": _save(rgb.convert("RGBA"), "PNG"),
        "gray16.png": _save(Image.fromarray((np.arange(48, dtype=np.uint16).reshape(6, 8) * 999)), "PNG"),
        "gray-alpha.png": _save(rgb.convert("LA"), "PNG"),
        "lossless.webp": _save(rgb, "WEBP", lossless=True),
        "lossy.webp": _save(rgb, "WEBP", quality=50),
        "rgb.bmp": _save(rgb, "BMP"),
        "rle.bmp": _save(rgb.convert("P"), "BMP"),
        "rgb.tif": _save(rgb, "TIFF"),
        "lzw.tif": _save(rgb, "TIFF", compression="tiff_lzw"),
        "deflate.tif": _save(rgb.convert("L"), "TIFF", compression="tiff_adobe_deflate"),
        "float.tif": _save(Image.fromarray(np.linspace(0, 1, 48, dtype=np.float32).reshape(6, 8)), "TIFF"),
        "still.gif": _save(rgb.convert("P"), "GIF"),
        "rgb.avif": _save(rgb, "AVIF", quality=60),
    }
    # HEIF: pi-heif ships no HEVC encoder, so the suite's two HEIC files (made once, see
    # tests/data/README.md) are the seeds; one of them carries a rotation.
    for name in ("quadrants.heic", "quadrants-orientation6.heic"):
        seeds[name] = (HERE.parents[1] / "tests" / "data" / name).read_bytes()
    frames = [Image.new("P", (8, 6), i) for i in (1, 7)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    seeds["animated.gif"] = buffer.getvalue()
    buffer = io.BytesIO()
    rgb.save(buffer, "TIFF", save_all=True, append_images=[rgb.convert("L").convert("RGB")])
    seeds["two-frames.tif"] = buffer.getvalue()
    exif = rgb.getexif()
    exif[0x0112] = 6
    seeds["exif-rotated.jpg"] = _save(rgb, "JPEG", exif=exif.tobytes())
    png = seeds["rgb.png"]
    seeds["truncated.png"] = png[: len(png) // 2]
    big = bytearray(png)
    big[16:24] = struct.pack(">II", 100_000, 100_000)
    big[29:33] = struct.pack(">I", zlib.crc32(bytes(big[12:29])))
    seeds["bomb-header.png"] = bytes(big)
    seeds["text.txt"] = b"not an image at all\n"
    return {name: bytes([i % 8]) + data for i, (name, data) in enumerate(sorted(seeds.items()))}


def bundle_seeds() -> dict[str, bytes]:
    from dfx.signing import sign_manifest

    def manifest(**changes) -> dict:
        doc = {
            "format": "dfx-bundle",
            "format_version": 1,
            "architecture": "seed_cnn",
            "input": {"height": 16, "width": 16, "channels": 3, "layout": "NHWC", "dtype": "float32", "range": [0, 255], "fit": "crop"},
            "labels": ["real", "fake"],
            "positive_label": "fake",
            "threshold": {"logit": 0.25, "method": "balanced-accuracy"},
            "files": {"model.onnx": {"sha256": MODEL_SHA256, "bytes": 38, "role": "onnx-fp32", "tools": {}}},
        }
        doc.update(changes)
        return doc

    def text(doc: dict) -> bytes:
        return (json.dumps(doc, indent=2) + "\n").encode()

    engines = manifest(files={
        "model.onnx": {"sha256": MODEL_SHA256, "role": "onnx-int8"},
        "model.int8.cpu.onnx": {"sha256": MODEL_SHA256, "role": "onnx-cpu-int8"},
        "engines/int8.engine": {"sha256": MODEL_SHA256, "role": "engine"},
    }, engines=[{"file": "engines/int8.engine", "precision": "int8", "compute_capability": "8.9",
                 "trt_version": "10.3.0", "lean": False, "max_batch": 64}])
    plain = text(manifest())
    seeds = {
        "plain.json": plain,
        "engines.json": text(engines),
        "keras-only.json": text(manifest(files={"model.onnx": {"sha256": MODEL_SHA256, "role": "keras"}})),
        "no-files.json": text(manifest(files={})),
        "traversal.json": text(manifest(files={"../model.onnx": {"sha256": MODEL_SHA256, "role": "onnx-fp32"}})),
        "wrong-hash.json": text(manifest(files={"model.onnx": {"sha256": "0" * 64, "role": "onnx-fp32"}})),
        "bad-types.json": text(manifest(input={"height": "16", "width": 1e9, "fit": None}, threshold=[], files=[])),
        "version-2.json": text(manifest(format_version=2)),
        "not-a-manifest.json": b'{"format": "something else"}\n',
    }
    key = signing_key()
    seeds["signed.json"] = plain + SIG_SEPARATOR + (json.dumps(sign_manifest(plain, key)) + "\n").encode()
    seeds["signed-engines.json"] = text(engines) + SIG_SEPARATOR + (json.dumps(sign_manifest(text(engines), key)) + "\n").encode()
    seeds["signature-of-another.json"] = text(engines) + SIG_SEPARATOR + (json.dumps(sign_manifest(plain, key)) + "\n").encode()
    return seeds


def results_seeds() -> dict[str, bytes]:
    from dfx.runtime.scan.results import Result, ResultWriter

    rows = [
        Result("a.jpg", 1.25, 0.777, "fake", "ort-cpu", "int8", "ab" * 32, None),
        Result("dir/b, with comma.png", -2.0, 0.119, "real", "openvino", "int8", "ab" * 32, None),
        Result("c.tif", None, None, None, "ort-cpu", "int8", "ab" * 32, 'cannot decode image ("quoted",\nnewline)'),
    ]
    seeds = {}
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for suffix, control in ((".jsonl", 0), (".csv", 1)):
            path = Path(tmp) / f"out{suffix}"
            with ResultWriter(path) as writer:
                writer.write_all(rows)
            data = path.read_bytes()
            seeds[f"rows{suffix}"] = bytes([control]) + data
            seeds[f"half-row{suffix}"] = bytes([control]) + data[: len(data) - 7]
    seeds["old-columns.csv"] = b"\x01path,logit,probability,decision,backend,precision,model_sha256,error\na.jpg,1.0,0.73,fake,ort-cpu,int8,abc,\n"
    seeds["empty.jsonl"] = b"\x00"
    seeds["not-rows.jsonl"] = b'\x00[1, 2]\n{"path": 3}\n'
    return seeds


def provenance_seeds() -> dict[str, bytes]:
    from PIL import Image

    jpeg = _save(Image.new("RGB", (8, 8), (90, 20, 200)), "JPEG")
    png = _save(Image.new("RGB", (8, 8), (90, 20, 200)), "PNG")
    # A JUMBF-looking APP11 segment (JPEG) and caBX chunk (PNG): the marker the reader looks for,
    # with a body c2pa-rs must refuse cleanly.
    jumbf = b"\x00\x00\x00\x20jumb\x00\x00\x00\x18jumdc2pa\x00\x11\x00\x10\x80\x00\xaa\x008\x9bq" + b"c2pa\x00"
    app11 = b"\xff\xeb" + struct.pack(">H", len(jumbf) + 10) + b"JP\x00\x01\x00\x00\x00\x01" + jumbf
    chunk = struct.pack(">I", len(jumbf)) + b"caBX" + jumbf + struct.pack(">I", zlib.crc32(b"caBX" + jumbf))
    return {
        "plain.jpg": jpeg,
        "plain.png": png,
        "jumbf-marker.jpg": jpeg[:2] + app11 + jpeg[2:],
        "cabx-marker.png": png[:33] + chunk + png[33:],
        "text.txt": b"jumb c2pa but not an image",
    }


def serve_seeds() -> dict[str, bytes]:
    from PIL import Image

    png = _save(Image.new("RGB", (4, 4), (1, 2, 3)), "PNG")
    as_json = {"id": "r1", "inputs": [{"name": "images", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(png).decode()]}],
               "outputs": [{"name": "logits"}, {"name": "decision", "parameters": {"binary_data": True}}],
               "parameters": {"timeout": 500000}}
    pixels = {"inputs": [{"name": "pixels", "shape": [1, 2, 2, 3], "datatype": "UINT8", "data": [[[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [10, 11, 12]]]]}]}
    element = struct.pack("<I", len(png)) + png
    header = json.dumps({"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": len(element)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    raw = bytes(range(12))
    header2 = json.dumps({"inputs": [{"name": "pixels", "shape": [1, 2, 2, 3], "datatype": "UINT8", "parameters": {"binary_data_size": 12}}]}).encode()
    return {
        "json-images.bin": b"\x00" + json.dumps(as_json).encode(),
        "json-pixels.bin": b"\x00" + json.dumps(pixels).encode(),
        "binary-images.bin": b"\x01" + struct.pack("<H", len(header)) + header + element,
        "binary-pixels.bin": b"\x01" + struct.pack("<H", len(header2)) + header2 + raw,
        "empty-inputs.bin": b'\x00{"inputs": []}',
    }


def http_seeds() -> dict[str, bytes]:
    """The serve seeds sent as HTTP bodies (kind 0: OIP JSON, 1: OIP binary), plus /v1/screen
    bodies (2: one image as octet-stream, 3: multipart files)."""
    from PIL import Image

    from targets import MULTIPART_BOUNDARY

    png = _save(Image.new("RGB", (4, 4), (1, 2, 3)), "PNG")
    jpeg = _save(Image.new("RGB", (4, 4), (200, 2, 3)), "JPEG")
    seeds = {name.replace(".bin", ".http"): data for name, data in serve_seeds().items()}
    seeds["screen-octet.http"] = b"\x02" + png
    parts = b""
    for i, (name, data, kind) in enumerate((("a.png", png, "image/png"), ("b.jpg", jpeg, "image/jpeg"))):
        parts += (f"--{MULTIPART_BOUNDARY}\r\nContent-Disposition: form-data; name=\"file{i}\"; filename=\"{name}\"\r\n"
                  f"Content-Type: {kind}\r\n\r\n").encode() + data + b"\r\n"
    parts += f"--{MULTIPART_BOUNDARY}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n".encode()
    seeds["screen-multipart.http"] = b"\x03" + parts + f"--{MULTIPART_BOUNDARY}--\r\n".encode()
    return seeds


def main() -> None:
    makers = {"images": image_seeds, "bundle": bundle_seeds, "results": results_seeds, "provenance": provenance_seeds,
              "serve": serve_seeds, "http": http_seeds}
    for door, make in makers.items():
        folder = corpus_dir(door)
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
        seeds = make()
        for name, data in seeds.items():
            (folder / name).write_bytes(data)
        print(f"{door}: {len(seeds)} seeds, {sum(map(len, seeds.values()))} bytes -> {folder}")


if __name__ == "__main__":
    main()
