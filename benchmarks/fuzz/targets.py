"""One fuzz target per input door: bytes in, the door's own error type swallowed, anything else
raised (that is a finding). Shared by the atheris harnesses (fuzz_*.py), the bounded CI test
(tests/test_fuzz.py) and the reproducer replay.

    door         entry point                                   the only error it may raise
    images       dfx.images.load_image(bytes)                   ImageError
    bundle       Bundle.open(folder) + backend choice           BundleError (SelectError/DfxError from the choice)
    results      runtime.results.read_results (--resume)        DfxError
    provenance   runtime.provenance.read_provenance(bytes)      none: it returns Provenance(error=...)
    serve        runtime.serve.oip.parse_infer_request          OipError (HTTP 4xx)
    http         the service's app, in process: OIP JSON and    an answer: 2xx or 4xx, never 5xx, always JSON
                 binary, /v1/screen octet-stream and multipart
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable

DOORS = ("images", "bundle", "results", "provenance", "serve", "http")


class Finding(AssertionError):
    """A door broke its contract in a way that raised nothing (a property, not an exception)."""


# ---- images --------------------------------------------------------------------------------------


def images(data: bytes) -> None:
    """Any bytes -> pixels or ImageError. The first byte picks the fit policy and the size, so
    both code paths (resize, crop with padding) see every input shape."""
    import numpy as np

    from dfx.images import ImageError, load_image

    fit = "crop" if data[:1] and data[0] & 1 else "resize"
    size = 8 + (data[0] % 4) * 8 if data else 16
    try:
        pixels = load_image(data[1:], size, fit)
    except ImageError as exc:
        if not exc.reason or not isinstance(exc.reason, str):
            raise Finding(f"ImageError without a reason: {exc!r}") from exc
        return
    if pixels.shape != (size, size, 3) or pixels.dtype != np.uint8 or not pixels.flags["C_CONTIGUOUS"]:
        raise Finding(f"load_image returned {pixels.shape} {pixels.dtype}")


# ---- bundle folder -------------------------------------------------------------------------------

# A bundle folder the fuzzer's manifests point into: a tiny "model" whose hash seeds can name,
# an engine file, and a key pair, so the hash, engine and signature paths are all reachable.
MODEL_BYTES = b"not really onnx, but hashed like one\n"
MODEL_SHA256 = hashlib.sha256(MODEL_BYTES).hexdigest()
SIG_SEPARATOR = b"\n--manifest.sig--\n"
_SIGNING_SEED = bytes(range(32))  # a fixed Ed25519 key: seeds carry signatures made with it
_bundle_root: Path | None = None


def _bundle_folder() -> Path:
    global _bundle_root
    if _bundle_root is None:
        _bundle_root = Path(tempfile.mkdtemp(prefix="dfx-fuzz-bundle-"))
        (_bundle_root / "model.onnx").write_bytes(MODEL_BYTES)
        (_bundle_root / "engines").mkdir()
        (_bundle_root / "engines" / "int8.engine").write_bytes(MODEL_BYTES)
    return _bundle_root


def signing_key():  # noqa: ANN201 - cryptography's key type, imported lazily
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519.Ed25519PrivateKey.from_private_bytes(_SIGNING_SEED)


def bundle(data: bytes) -> None:
    """Bytes -> manifest.json (and, after SIG_SEPARATOR, manifest.sig) of a folder; open it with
    and without the trusted key, read every view a reader uses, and plan a backend."""
    from dfx.bundle import Bundle, BundleError
    from dfx.errors import DfxError
    from dfx.runtime.scan.select import plan, usable_engines

    root = _bundle_folder()
    manifest, _, signature = data.partition(SIG_SEPARATOR)
    (root / "manifest.json").write_bytes(manifest)
    sig = root / "manifest.sig"
    if signature:
        sig.write_bytes(signature)
    else:
        sig.unlink(missing_ok=True)
    try:
        opened = Bundle.open(root, public_key=signing_key().public_key() if signature else None)
    except BundleError:
        return
    if signature and not opened.signature.startswith("verified"):
        raise Finding(f"a bundle opened with a key but not verified: {opened.signature}")
    opened.input_size, opened.fit, opened.threshold  # noqa: B018 - the views must not raise
    for name in list(opened.manifest["files"]):
        path = opened.file(name).resolve()
        if root.resolve() not in path.parents:
            raise Finding(f"{name!r} resolves outside the bundle: {path}")
    for backend in ("ort-cpu", "openvino", "keras"):
        try:
            plan(opened, backend)
        except DfxError:
            pass
    usable_engines(opened, ("int8", "fp16", "fp32"), "8.9", "10.3.0")


# ---- results file (--resume) ---------------------------------------------------------------------

_results_dir: Path | None = None


def results(data: bytes) -> None:
    """Bytes -> an earlier scan's output (.jsonl or .csv by the first byte); read it as --resume
    does (cutting a half-written row), then append a row and read it back: whatever an earlier
    run left, a resumed scan must either refuse with DfxError or append rows that read back."""
    from dfx.errors import DfxError
    from dfx.runtime.scan.results import Result, ResultWriter, read_results

    global _results_dir
    if _results_dir is None:
        _results_dir = Path(tempfile.mkdtemp(prefix="dfx-fuzz-results-"))
    suffix = ".csv" if data[:1] and data[0] & 1 else ".jsonl"
    path = _results_dir / f"out{suffix}"
    path.write_bytes(data[1:])
    try:
        before = read_results(path, repair=True)
        row = Result("new.jpg", 1.5, 0.8, "fake", "ort-cpu", "int8", "ab" * 32, None)
        with ResultWriter(path, append=True) as writer:
            writer.write(row)
        after = read_results(path)
    except DfxError:
        return
    if len(after) != len(before) + 1 or after[-1].path != row.path or after[-1].logit != row.logit:
        raise Finding(f"a resumed append did not read back: {len(before)} rows, then {len(after)}")


# ---- C2PA provenance -----------------------------------------------------------------------------

_reader = None


def provenance(data: bytes) -> None:
    """Any bytes -> a Provenance; the reader never raises."""
    from dfx.runtime.provenance.c2pa import Provenance, ProvenanceReader, read_provenance

    global _reader
    if _reader is None:
        _reader = ProvenanceReader()
    result = read_provenance(data, reader=_reader)
    if not isinstance(result, Provenance):
        raise Finding(f"read_provenance returned {type(result).__name__}")


# ---- the service's request parsing ---------------------------------------------------------------


def serve(data: bytes) -> None:
    """Bytes -> an Open Inference Protocol request body (JSON, or a JSON header plus binary
    tensors when the first byte says so). Parsing raises only OipError (a 4xx answer)."""
    from dfx.runtime.serve.oip import OipError, parse_infer_request

    header: int | None = None
    body = data[1:]
    if data[:1] and data[0] & 1:
        header = int.from_bytes(data[1:3].ljust(2, b"\0"), "little") % (len(data) + 2)
        body = data[3:]
    try:
        parse_infer_request(body, header, max_images=16)
    except OipError as exc:
        if not 400 <= exc.status < 500:
            raise Finding(f"a malformed request answered {exc.status}") from exc


_client = None
MULTIPART_BOUNDARY = "dfxfuzzboundary"


def _http_client():  # noqa: ANN202 - starlette's TestClient, imported lazily
    """The service app on the tiny brightness bundle, driven in process (no socket)."""
    global _client
    if _client is None:
        import time
        import warnings

        with warnings.catch_warnings():  # starlette's note about httpx versions is not a finding
            warnings.simplefilter("ignore")
            from starlette.testclient import TestClient

        from dfx.benchmarks.fuzz.tiny_bundle import make_onnx_bundle
        from dfx.runtime.serve.app import create_app
        from dfx.runtime.serve.config import ServeConfig

        root = make_onnx_bundle(Path(tempfile.mkdtemp(prefix="dfx-fuzz-serve-")) / "bundle")
        _client = TestClient(create_app(ServeConfig(bundle=str(root), backend="ort-cpu", threads=1, max_images=8)),
                             raise_server_exceptions=False)
        _client.__enter__()  # runs the lifespan: the model loads in the background
        for _ in range(600):
            if _client.get("/v2/health/ready").status_code == 200:
                break
            time.sleep(0.05)
    return _client


def http(data: bytes) -> None:
    """Bytes -> a request body for one of the service's doors (first byte picks which). Whatever
    the body, the answer is JSON with a 2xx or 4xx status: never a 5xx, never a hang."""
    from dfx.runtime.serve.config import DEFAULT_MODEL_NAME

    client = _http_client()
    kind, body = (data[0] % 4 if data else 0), data[1:]
    infer = f"/v2/models/{DEFAULT_MODEL_NAME}/infer"
    if kind == 0:
        response = client.post(infer, content=body, headers={"content-type": "application/json"})
    elif kind == 1:
        length = int.from_bytes(body[:2].ljust(2, b"\0"), "little") % (len(body) + 2)
        response = client.post(infer, content=body[2:], headers={"content-type": "application/octet-stream",
                                                                  "inference-header-content-length": str(length)})
    elif kind == 2:
        response = client.post("/v1/screen", content=body, headers={"content-type": "application/octet-stream"})
    else:
        response = client.post("/v1/screen", content=body,
                               headers={"content-type": f"multipart/form-data; boundary={MULTIPART_BOUNDARY}"})
    if response.status_code >= 500:
        raise Finding(f"kind {kind}: HTTP {response.status_code}: {response.text[:300]}")
    if response.status_code >= 400 or "json" in response.headers.get("content-type", ""):
        response.json()  # every error and every JSON answer parses


TARGETS: dict[str, Callable[[bytes], None]] = {
    "images": images, "bundle": bundle, "results": results, "provenance": provenance, "serve": serve, "http": http,
}


def available(door: str) -> str | None:
    """None when the door's code and extras are here, else why not (for skips and the runner)."""
    import importlib.util

    needs = {"provenance": ("c2pa", "dfx.runtime.provenance.c2pa"), "serve": ("dfx.runtime.serve.oip",), "bundle": ("cryptography",),
             "http": ("dfx.runtime.serve.app", "fastapi", "httpx", "onnx", "onnxruntime")}
    for module in needs.get(door, ()):
        try:
            if importlib.util.find_spec(module) is None:
                return f"{module} is not available"
        except ModuleNotFoundError:
            return f"{module} is not available"
    return None


def corpus_dir(door: str) -> Path:
    return Path(__file__).resolve().parent / "corpus" / door


def reproducers_dir(door: str) -> Path:
    return Path(__file__).resolve().parent / "reproducers" / door


def replay(door: str, folders: list[Path] | None = None) -> int:
    """Run every file of the door's seed corpus and reproducers through its target; returns how
    many ran. Raises what the target raises (a finding)."""
    target = TARGETS[door]
    count = 0
    for folder in folders or [corpus_dir(door), reproducers_dir(door)]:
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                target(path.read_bytes())
                count += 1
    return count


if __name__ == "__main__":  # pragma: no cover - `python targets.py DOOR` replays the corpus
    import sys

    for door in sys.argv[1:] or DOORS:
        print(door, available(door) or f"{replay(door)} inputs replayed", file=sys.stderr)
    os._exit(0)
