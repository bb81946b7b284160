"""The Open Inference Protocol (KServe V2) REST encoding: requests in, tensors out. No HTTP here.

Inputs (exactly one per request):
    images  BYTES [N]          one encoded image file per element (JPEG, PNG, ...)
    pixels  UINT8 [N, H, W, 3] RGB pixels; fitted to the model's size by dfx.images like a file
Outputs (all by default, or those the request names):
    logits       FP32  [N]  the model's score; >= threshold means fake (NaN for an image that failed)
    probability  FP32  [N]  the bundle's calibrated P(fake) of the logit
    decision     BYTES [N]  "fake" | "real" | "no_face" | "error"
    error        BYTES [N]  "" or why the image has no score (does not decode, too large, ...)
    faces        INT32 [N]  faces found in a whole photo; -1 when the image was scored whole (a face crop)
    face_boxes   BYTES [N]  JSON list of the faces (box, face_score, logit, probability, decision); "" when whole

The binary tensor data extension: a body may be a JSON header of `Inference-Header-Content-Length`
bytes followed by raw tensors, each input saying its size in `parameters.binary_data_size`.
BYTES elements are a 4-byte little-endian length and the bytes. Outputs come back binary when
the request asks (`parameters.binary_data` per output, or `binary_data_output` for all), as
tritonclient does by default. In JSON, BYTES image elements are base64 strings (JSON cannot
carry raw image bytes).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dfx.errors import DfxError
from dfx.runtime.scan.results import Result

BYTES_INPUT, PIXELS_INPUT = "images", "pixels"
OUTPUTS = ("logits", "probability", "decision", "error", "faces", "face_boxes")
_DTYPES = {"logits": "FP32", "probability": "FP32", "decision": "BYTES", "error": "BYTES", "faces": "INT32", "face_boxes": "BYTES"}


class OipError(DfxError):
    """A malformed inference request (HTTP 400); `status` may say otherwise (413)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class InferRequest:
    id: str | None
    sources: list[Any]  # encoded image bytes, or uint8 (H, W, 3) arrays
    names: list[str]  # per image, for rows and errors: "images[3]"
    outputs: list[tuple[str, bool]] = field(default_factory=list)  # (name, binary) in the order asked
    timeout_s: float | None = None  # the request's own `timeout` parameter (microseconds, as Triton)


def server_metadata(version: str) -> dict[str, Any]:
    return {"name": "dfx", "version": version, "extensions": ["binary_tensor_data"]}


def model_metadata(name: str, input_size: tuple[int, int], backend: str) -> dict[str, Any]:
    height, width = input_size
    return {
        "name": name,
        "versions": ["1"],
        "platform": f"dfx-{backend}",
        "inputs": [
            {"name": BYTES_INPUT, "datatype": "BYTES", "shape": [-1]},
            {"name": PIXELS_INPUT, "datatype": "UINT8", "shape": [-1, height, width, 3]},
        ],
        "outputs": [{"name": n, "datatype": _DTYPES[n], "shape": [-1]} for n in OUTPUTS],
    }


def parse_infer_request(body: bytes, header_length: int | None, max_images: int) -> InferRequest:
    """Parse a JSON or binary-extension inference request. Raises OipError (only)."""
    try:
        return _parse_infer_request(body, header_length, max_images)
    except (RecursionError, OverflowError) as exc:
        # JSON nested thousands deep, or numbers no integer type holds: the client's mistake (400).
        raise OipError(f"the inference request is malformed ({type(exc).__name__}: {str(exc)[:120]})") from None


def _parse_infer_request(body: bytes, header_length: int | None, max_images: int) -> InferRequest:
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise OipError(f"Inference-Header-Content-Length {header_length} is outside the body ({len(body)} bytes)")
        header, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        header, binary = body, memoryview(b"")
    try:
        request = json.loads(header)
    except (UnicodeDecodeError, ValueError) as exc:
        raise OipError(f"the inference header is not JSON ({exc})") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise OipError("the inference request needs an 'inputs' list")
    inputs = request["inputs"]
    if len(inputs) != 1:
        raise OipError(f"send exactly one input, '{BYTES_INPUT}' (BYTES [N]) or '{PIXELS_INPUT}' (UINT8 [N,H,W,3]); got {len(inputs)}")
    tensor = inputs[0]
    if not isinstance(tensor, dict):
        raise OipError("an input must be an object with name, shape, datatype")
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise OipError(f"input {name!r}: shape must be a list of non-negative integers, not {shape!r}")
    params = _parameters(tensor, f"input {name!r}")
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or size > len(binary):
            raise OipError(f"input {name!r}: binary_data_size {size!r} does not fit the {len(binary)} binary bytes")
        raw: memoryview | None = binary[:size]
    else:
        raw = None
        if "data" not in tensor:
            raise OipError(f"input {name!r} has neither data nor binary_data_size")
    count = shape[0] if shape else 0
    if count > max_images:
        raise OipError(f"{count} images in one request; at most {max_images}", status=413)
    if name == BYTES_INPUT:
        if datatype != "BYTES" or len(shape) != 1:
            raise OipError(f"input '{BYTES_INPUT}' must be BYTES with shape [N], not {datatype} {shape}")
        sources = _bytes_elements(raw, count) if raw is not None else _json_bytes(tensor["data"], count)
    elif name == PIXELS_INPUT:
        if datatype != "UINT8" or len(shape) != 4 or shape[3] != 3:
            raise OipError(f"input '{PIXELS_INPUT}' must be UINT8 with shape [N, H, W, 3], not {datatype} {shape}")
        sources = list(_pixels(raw, tensor.get("data"), shape))
    else:
        raise OipError(f"unknown input {name!r}: this model takes '{BYTES_INPUT}' (BYTES [N]) or '{PIXELS_INPUT}' (UINT8 [N,H,W,3])")
    return InferRequest(
        id=str(request["id"]) if request.get("id") is not None else None,
        sources=sources,
        names=[f"{name}[{i}]" for i in range(len(sources))],
        outputs=_requested_outputs(request),
        timeout_s=_timeout(request),
    )


def _parameters(owner: dict[str, Any], what: str) -> dict[str, Any]:
    """`owner["parameters"]`, which the protocol makes an object (fuzz find: a list was a 500)."""
    params = owner.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise OipError(f"{what}: parameters must be an object, not {type(params).__name__}")
    return params


def _timeout(request: dict[str, Any]) -> float | None:
    value = _parameters(request, "the request").get("timeout")  # microseconds, as Triton's
    if value is None:
        return None
    if not isinstance(value, (int, float)) or value <= 0:
        raise OipError(f"parameters.timeout must be a positive number of microseconds, not {value!r}")
    return float(value) / 1e6


def _requested_outputs(request: dict[str, Any]) -> list[tuple[str, bool]]:
    binary_all = bool(_parameters(request, "the request").get("binary_data_output", False))
    asked = request.get("outputs")
    if not asked:
        return [(n, binary_all) for n in OUTPUTS]
    if not isinstance(asked, list):
        raise OipError("'outputs' must be a list")
    chosen = []
    for out in asked:
        name = out.get("name") if isinstance(out, dict) else None
        if name not in OUTPUTS:
            raise OipError(f"unknown output {name!r}; this model has {', '.join(OUTPUTS)}")
        chosen.append((name, bool(_parameters(out, f"output {name!r}").get("binary_data", binary_all))))
    return chosen


def _bytes_elements(raw: memoryview, count: int) -> list[bytes]:
    """Triton's binary BYTES: per element a uint32 little-endian length, then the bytes."""
    out, offset = [], 0
    for index in range(count):
        if offset + 4 > len(raw):
            raise OipError(f"BYTES input ends before element {index} of {count}")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise OipError(f"BYTES element {index} claims {length} bytes; only {len(raw) - offset} remain")
        out.append(bytes(raw[offset : offset + length]))
        offset += length
    if offset != len(raw):
        raise OipError(f"BYTES input has {len(raw) - offset} bytes after its {count} elements")
    return out


def _json_bytes(data: Any, count: int) -> list[bytes]:
    flat = list(_flatten(data))
    if len(flat) != count:
        raise OipError(f"BYTES input has {len(flat)} elements, its shape says {count}")
    out = []
    for index, element in enumerate(flat):
        if not isinstance(element, str):
            raise OipError(f"BYTES element {index} must be a base64 string in JSON")
        try:
            out.append(base64.b64decode(element, validate=True))
        except (binascii.Error, ValueError):
            raise OipError(f"BYTES element {index} is not base64 (send images as base64 in JSON, or use binary data)") from None
    return out


def _pixels(raw: memoryview | None, data: Any, shape: list[int]) -> np.ndarray:
    expected = math.prod(shape)
    if raw is not None:
        if len(raw) != expected:
            raise OipError(f"UINT8 input of shape {shape} needs {expected} bytes, got {len(raw)}")
        return np.frombuffer(raw, np.uint8).reshape(shape)
    flat = list(_flatten(data))
    if len(flat) != expected:
        raise OipError(f"UINT8 input has {len(flat)} values, its shape {shape} needs {expected}")
    try:
        values = np.asarray(flat, dtype=np.int64)
    except (TypeError, ValueError):
        raise OipError("UINT8 data must be integers") from None
    if values.size and (values.min() < 0 or values.max() > 255):
        raise OipError("UINT8 data must be in 0..255")
    return values.astype(np.uint8).reshape(shape)


def _flatten(data: Any):
    if isinstance(data, list):
        for item in data:
            yield from _flatten(item)
    else:
        yield data


def encode_infer_response(model_name: str, request: InferRequest, results: list[Result]) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of the response: JSON, or JSON + binary outputs when any is asked binary."""
    n = len(results)
    columns: dict[str, Any] = {
        "logits": np.array([r.logit if r.logit is not None else np.nan for r in results], np.float32),
        "probability": np.array([r.probability if r.probability is not None else np.nan for r in results], np.float32),
        "decision": [r.decision if r.error is None else "error" for r in results],
        "error": [r.error or "" for r in results],
        # Whole photos: faces found (-1: the image was scored whole) and each face's box and scores (JSON, "" when whole)
        "faces": np.array([-1 if r.faces is None else r.faces for r in results], np.int32),
        "face_boxes": ["" if r.face_boxes is None else json.dumps(r.face_boxes, separators=(",", ":")) for r in results],
    }
    outputs, blobs = [], []
    for name, binary in request.outputs:
        value = columns[name]
        entry: dict[str, Any] = {"name": name, "datatype": _DTYPES[name], "shape": [n]}
        if binary:
            blob = value.tobytes() if isinstance(value, np.ndarray) else b"".join(
                struct.pack("<I", len(e)) + e for e in (s.encode("utf-8") for s in value))
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = value.tolist() if isinstance(value, np.ndarray) else list(value)
        outputs.append(entry)
    response: dict[str, Any] = {"model_name": model_name, "model_version": "1", "outputs": outputs}
    if request.id is not None:
        response["id"] = request.id
    header = json.dumps(response).encode("utf-8")  # NaN for failed images: Python's and tritonclient's json read it
    if not blobs:
        return header, {"content-type": "application/json"}
    return header + b"".join(blobs), {"content-type": "application/octet-stream", "inference-header-content-length": str(len(header))}
