"""`dfx serve`: a real uvicorn server on loopback, driven by real HTTP clients (httpx and the
official tritonclient), serving the session's exported 64 px bundle on ONNX Runtime CPU."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="dfx serve needs the serve extra (pip install 'dfx[serve]')")
pytest.importorskip("uvicorn", reason="dfx serve needs the serve extra (pip install 'dfx[serve]')")
httpx = pytest.importorskip("httpx", reason="the serve tests use httpx (pip install 'dfx[test]')")

from dfx.images import load_image  # noqa: E402
from dfx.runtime.scan.detector import Detector  # noqa: E402
from dfx.runtime.scan.results import COLUMNS  # noqa: E402
from dfx.runtime.serve.batcher import BatchConfig, DynamicBatcher, QueueFull  # noqa: E402
from dfx.runtime.serve.config import ServeConfig  # noqa: E402
from dfx.runtime.scan.model import load_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BACKEND = dict(backend="ort-cpu", precision="fp32")  # the same runner as the Detector reference
TOKEN = "s3cret-token-for-tests"


@contextlib.contextmanager
def running(config: ServeConfig) -> Iterator[tuple[str, object]]:
    """uvicorn serving create_app(config) in a thread, on a free loopback port; yields
    ("127.0.0.1:PORT", app) once the model is ready, and stops the server after."""
    import uvicorn

    from dfx.runtime.serve.app import create_app

    app = create_app(config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    address = "127.0.0.1:%d" % sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        _wait_ready(address, thread)
        yield address, app
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
    assert not thread.is_alive(), "the server did not stop"


def _wait_ready(address: str, alive: threading.Thread | subprocess.Popen, seconds: float = 60, **https: object) -> None:
    scheme = "https" if https else "http"
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if isinstance(alive, threading.Thread) and not alive.is_alive() or isinstance(alive, subprocess.Popen) and alive.poll() is not None:
            raise AssertionError("the server died while starting")
        try:
            if httpx.get(f"{scheme}://{address}/v2/health/ready", timeout=2, **https).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the server at {address} was not ready within {seconds} s")


def _metric(address: str, name: str, https: dict | None = None, **labels: str) -> float:
    """One sample of /metrics (0.0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{'https' if https else 'http'}://{address}/metrics", timeout=5, **(https or {})).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


@pytest.fixture(scope="module")
def images(synth_data) -> list[str]:
    real = sorted((Path(synth_data) / "real").rglob("*.jpg"))[:3]
    fake = sorted((Path(synth_data) / "fake").rglob("*.jpg"))[:3]
    return [str(p) for p in real + fake]


@pytest.fixture(scope="module")
def reference(exported_bundle, images) -> dict[str, float]:
    """Logits of the Detector (the `dfx scan` pipeline) on the same backend."""
    with Detector.load(exported_bundle, **BACKEND) as detector:
        return {r.path: r.logit for r in detector.predict(images)}


@pytest.fixture(scope="module")
def server(exported_bundle) -> Iterator[str]:
    """The default settings, with small limits the limit tests can reach, and no auth."""
    config = ServeConfig(bundle=str(exported_bundle), **BACKEND, max_images=8, max_body_bytes=200_000,
                         batch=BatchConfig(max_batch_size=8, max_queue_delay_us=2000, max_queue_images=64))
    with running(config) as (address, _):
        yield address


# ---- the Open Inference Protocol, with the official client ------------------------------------------


def test_tritonclient_bytes_and_uint8_score_like_dfx_scan(server, exported_bundle, images, reference, tmp_path):
    httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is in the test extra")
    from dfx import cli

    out = tmp_path / "scan.jsonl"
    assert cli.main(["scan", str(exported_bundle), *images, "--out", str(out), "--quiet", *sum((["--" + k, v] for k, v in BACKEND.items()), [])]) == 0
    scanned = {row["path"]: row for row in map(json.loads, out.read_text().splitlines())}
    expected = np.array([scanned[p]["logit"] for p in images], np.float32)
    np.testing.assert_allclose(expected, [reference[p] for p in images], atol=1e-5)

    # /v1/screen rows are dfx scan rows: every column (C2PA ones included) but the name.
    files = [("file", (Path(p).name, Path(p).read_bytes(), "image/jpeg")) for p in images]
    served = httpx.post(f"http://{server}/v1/screen", files=files, timeout=30).json()["results"]
    for path, row in zip(images, served):
        want = {k: v for k, v in scanned[path].items() if k != "path"}
        got = {k: v for k, v in row.items() if k != "path"}
        assert got.keys() == want.keys() and row["path"] == Path(path).name
        for key, value in want.items():
            assert got[key] == (pytest.approx(value, abs=1e-5) if isinstance(value, float) else value), key

    client = httpclient.InferenceServerClient(server)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("dfx")
    meta = client.get_model_metadata("dfx")
    assert {i["name"]: i["datatype"] for i in meta["inputs"]} == {"images": "BYTES", "pixels": "UINT8"}
    assert [o["name"] for o in meta["outputs"]] == ["logits", "probability", "decision", "error", "faces", "face_boxes"]

    # BYTES [N]: the files' bytes, sent in binary form (tritonclient's default), outputs binary.
    files = np.array([Path(p).read_bytes() for p in images], dtype=np.object_)
    encoded = httpclient.InferInput("images", [len(images)], "BYTES")
    encoded.set_data_from_numpy(files, binary_data=True)
    result = client.infer("dfx", [encoded])
    np.testing.assert_allclose(result.as_numpy("logits"), expected, atol=1e-5)
    np.testing.assert_allclose(result.as_numpy("probability"), [scanned[p]["probability"] for p in images], atol=1e-5)
    assert [d.decode() for d in result.as_numpy("decision")] == [scanned[p]["decision"] for p in images]

    # UINT8 [N, H, W, 3]: the pixels of the one pixel path, binary in and JSON out.
    bundle_input = json.loads((Path(exported_bundle) / "manifest.json").read_text())["input"]
    pixels = np.stack([load_image(p, (bundle_input["height"], bundle_input["width"]), bundle_input["fit"]) for p in images])
    raw = httpclient.InferInput("pixels", list(pixels.shape), "UINT8")
    raw.set_data_from_numpy(pixels, binary_data=True)
    asked = [httpclient.InferRequestedOutput("logits", binary_data=False), httpclient.InferRequestedOutput("decision", binary_data=True)]
    result = client.infer("dfx", [raw], outputs=asked, request_id="req-7")
    np.testing.assert_allclose(result.as_numpy("logits"), expected, atol=1e-5)
    response = result.get_response()
    assert response["id"] == "req-7" and [o["name"] for o in response["outputs"]] == ["logits", "decision"]
    assert "data" in response["outputs"][0] and "binary_data_size" in response["outputs"][1]["parameters"]

    # A bad element in the batch: its own NaN/error, the others scored.
    mixed = httpclient.InferInput("images", [3], "BYTES")
    mixed.set_data_from_numpy(np.array([files[0], b"not an image", files[5]], dtype=np.object_), binary_data=True)
    result = client.infer("dfx", [mixed])
    logits = result.as_numpy("logits")
    assert np.isnan(logits[1]) and result.as_numpy("decision")[1] == b"error"
    assert b"not an image" in result.as_numpy("error")[1]
    np.testing.assert_allclose(logits[[0, 2]], expected[[0, 5]], atol=1e-5)

    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match="unknown model"):
        client.infer("other", [encoded])
    client.close()


def test_oip_json_body_and_errors(server, images, reference):
    body = {"id": "j1", "inputs": [{"name": "images", "datatype": "BYTES", "shape": [2],
                                    "data": [base64.b64encode(Path(p).read_bytes()).decode() for p in images[:2]]}]}
    answer = httpx.post(f"http://{server}/v2/models/dfx/infer", json=body, timeout=30)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    outputs = {o["name"]: o for o in answer.json()["outputs"]}
    np.testing.assert_allclose(outputs["logits"]["data"], [reference[p] for p in images[:2]], atol=1e-5)
    assert outputs["decision"]["datatype"] == "BYTES" and outputs["logits"]["shape"] == [2]
    assert httpx.get(f"http://{server}/v2", timeout=5).json()["extensions"] == ["binary_tensor_data"]
    url = f"http://{server}/v2/models/dfx/versions/1/infer"
    bad = [
        (b"{not json", {}, 400),
        (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]}).encode(), {}, 400),
        (json.dumps({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 99}}]}).encode(),
         {"inference-header-content-length": "80"}, 400),
        (b"{}", {"content-type": "text/plain"}, 415),
        (json.dumps({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [9], "data": ["aa=="] * 9}]}).encode(), {}, 413),
    ]
    for content, headers, status in bad:
        answer = httpx.post(url, content=content, headers=headers, timeout=10)
        assert answer.status_code == status, (content[:60], answer.text)
        assert "error" in answer.json()
    assert httpx.get(f"http://{server}/v2/models/dfx/versions/2", timeout=5).status_code == 404


# ---- /v1/screen ---------------------------------------------------------------------------------


def _png_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A few hundred bytes of PNG whose header declares width x height pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b"")


def test_screen_rows_are_scan_rows_and_a_bad_image_is_its_own_row(server, images, reference):
    files = [("file", (Path(p).name, Path(p).read_bytes(), "image/jpeg")) for p in images[:2]]
    files.insert(1, ("file", ("broken.jpg", Path(images[2]).read_bytes()[:300], "image/jpeg")))
    files.append(("file", ("bomb.png", _png_bomb(), "image/png")))
    answer = httpx.post(f"http://{server}/v1/screen", files=files, timeout=30)
    assert answer.status_code == 200
    rows = answer.json()["results"]
    assert [tuple(r) for r in rows] == [COLUMNS] * 4  # the columns of a dfx scan row, whatever they are now
    assert [r["path"] for r in rows] == [Path(images[0]).name, "broken.jpg", Path(images[1]).name, "bomb.png"]
    assert rows[1]["error"] and rows[1]["logit"] is None
    assert "too large" in rows[3]["error"] and rows[3]["logit"] is None  # refused on its header, as dfx scan does
    assert rows[0]["error"] is None and rows[0]["logit"] == pytest.approx(reference[images[0]], abs=1e-5)
    assert rows[2]["logit"] == pytest.approx(reference[images[1]], abs=1e-5)
    assert rows[0]["backend"] == "ort-cpu" and len(rows[0]["model_sha256"]) == 64

    one = httpx.post(f"http://{server}/v1/screen", content=Path(images[3]).read_bytes(), headers={"content-type": "image/jpeg"}, timeout=30)
    assert one.status_code == 200 and one.json()["results"][0]["logit"] == pytest.approx(reference[images[3]], abs=1e-5)


def test_screen_limits_answer_413_415_400(server, images):
    url = f"http://{server}/v1/screen"
    jpeg = Path(images[0]).read_bytes()
    too_many = [("file", (f"{i}.jpg", jpeg, "image/jpeg")) for i in range(9)]  # max_images is 8
    assert httpx.post(url, files=too_many, timeout=30).status_code == 413
    big = httpx.post(url, content=b"\xff" * 300_000, headers={"content-type": "image/jpeg"}, timeout=30)  # > 200 kB
    assert big.status_code == 413 and "at most" in big.json()["error"]

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit is counted as the body streams in
        for _ in range(30):
            yield b"\0" * 10_000

    assert httpx.post(url, content=chunked(), headers={"content-type": "application/octet-stream"}, timeout=30).status_code == 413
    assert httpx.post(url, content=b"hello", headers={"content-type": "text/plain"}, timeout=30).status_code == 415
    assert httpx.post(url, content=b"", headers={"content-type": "image/png"}, timeout=30).status_code == 400
    assert httpx.get(f"http://{server}/v2/health/live", timeout=5).status_code == 200


# ---- queue bound, deadline, batching ----------------------------------------------------------------


def test_queue_full_is_503_with_retry_after_and_the_deadline_is_504(exported_bundle, images):
    # The batch waits 3 s for more images, the deadline is 0.6 s: the first request must time
    # out, and while its 4 images hold the queue (bound 4) a second one is refused.
    config = ServeConfig(bundle=str(exported_bundle), **BACKEND, max_images=4, retry_after_s=2,
                         batch=BatchConfig(max_batch_size=64, max_queue_delay_us=3_000_000, max_queue_images=4, timeout_s=0.6))
    with running(config) as (address, app):
        url = f"http://{address}/v1/screen"
        files = [("file", (f"{i}.jpg", Path(p).read_bytes(), "image/jpeg")) for i, p in enumerate(images[:4])]
        batcher = app.state.service.batcher
        first: list[tuple[httpx.Response, int]] = []  # (the answer, images still queued when it came)
        sender = threading.Thread(target=lambda: first.append((resp := httpx.post(url, files=files, timeout=30), batcher.admitted)))
        began = time.monotonic()
        sender.start()
        while batcher.admitted < 4 and time.monotonic() - began < 5:
            time.sleep(0.01)
        second = httpx.post(url, content=Path(images[4]).read_bytes(), headers={"content-type": "image/jpeg"}, timeout=30)
        assert second.status_code == 503 and second.headers["retry-after"] == "2"
        sender.join(timeout=30)
        assert first and first[0][0].status_code == 504 and "deadline" in first[0][0].json()["error"]
        assert first[0][1] == 4  # answered at its deadline, while its images still waited for their batch
        while batcher.admitted and time.monotonic() - began < 10:  # the expired images leave the queue...
            time.sleep(0.05)
        assert _metric(address, "dfx_images_total", outcome="expired") == 4  # ...without being computed
        assert _metric(address, "dfx_requests_total", endpoint="screen", code="503", outcome="unavailable") == 1
        assert _metric(address, "dfx_requests_total", endpoint="screen", code="504", outcome="deadline") == 1
        assert _metric(address, "dfx_batch_size_count") == 0
        # The queue admits again: accepted (not 503) and, since this config's 3 s batch wait
        # outlasts its 0.6 s deadline, answered 504 at the deadline (200s: the other tests).
        again = httpx.post(url, files=files[:1], timeout=30)
        assert again.status_code == 504 and "deadline" in again.json()["error"], again.text
        assert _metric(address, "dfx_requests_total", endpoint="screen", code="503", outcome="unavailable") == 1


def test_batcher_coalesces_concurrent_single_image_requests(exported_bundle, images, reference):
    """No HTTP: 16 callers at once, one image each, share batches; every caller gets its row."""

    class Record:
        def __init__(self) -> None:
            self.sizes: list[int] = []

        def on_decode(self, seconds: float, ok: bool) -> None:
            pass

        def on_batch(self, size: int, queue_seconds: list[float], compute_seconds: float, ok: bool) -> None:
            self.sizes.append(size)

        def on_expired(self, images: int) -> None:
            pass

    record = Record()
    model = load_model(exported_bundle, **BACKEND)
    sources = [images[i % len(images)] for i in range(16)]
    with DynamicBatcher(BatchConfig(max_batch_size=16, max_queue_delay_us=500_000, max_queue_images=16), model, record) as batcher:
        futures = [batcher.submit([s]) for s in sources]
        with pytest.raises(QueueFull):
            batcher.submit([sources[0]])  # 16 admitted: the bound holds
        rows = [f.result(timeout=30)[0] for f in futures]
        assert batcher.screen([images[0], b"junk"])[1].error  # the blocking form, a bad image as its own row
        for _ in range(3):
            batcher.screen(images[:2])  # past the warm-up batches: the runner's time per image is known
        with pytest.raises(QueueFull, match="deadline"):
            batcher.submit([images[0]], timeout_s=1e-7)  # would outlast its deadline: refused at once, not queued
        assert batcher.admitted == 0
    assert [r.path for r in rows] == sources
    np.testing.assert_allclose([r.logit for r in rows], [reference[s] for s in sources], atol=1e-5)
    assert sum(record.sizes[:-4]) == 16 and max(record.sizes) >= 8, record.sizes  # coalesced, not 16 calls of one
    assert not model.runner.is_active  # closing the batcher closed its model


# ---- operations: auth, reload, metrics, drain ---------------------------------------------------------


def test_bearer_token_guards_all_but_probes_and_metrics(exported_bundle, images, tmp_path, monkeypatch):
    from dfx.errors import DfxError
    from dfx.runtime.serve.commands import read_token

    (tmp_path / "token").write_text(TOKEN + "\n")
    assert read_token(str(tmp_path / "token"), None) == TOKEN
    monkeypatch.setenv("DFX_TEST_TOKEN", TOKEN)
    assert read_token(None, "DFX_TEST_TOKEN") == TOKEN
    monkeypatch.setenv("DFX_EMPTY_TOKEN", " ")
    with pytest.raises(DfxError, match="unset or empty"):
        read_token(None, "DFX_EMPTY_TOKEN")

    config = ServeConfig(bundle=str(exported_bundle), **BACKEND, token=TOKEN)
    with running(config) as (address, _):
        url = f"http://{address}/v1/screen"
        jpeg = {"content": Path(images[0]).read_bytes(), "timeout": 30}
        none = httpx.post(url, headers={"content-type": "image/jpeg"}, **jpeg)
        assert none.status_code == 401 and none.headers["www-authenticate"].startswith("Bearer")
        assert httpx.post(url, headers={"content-type": "image/jpeg", "authorization": "Bearer wrong"}, **jpeg).status_code == 401
        good = httpx.post(url, headers={"content-type": "image/jpeg", "authorization": f"Bearer {TOKEN}"}, **jpeg)
        assert good.status_code == 200 and good.json()["results"][0]["error"] is None
        assert httpx.get(f"http://{address}/v2/models/dfx", timeout=5).status_code == 401
        for open_path in ("/v2/health/live", "/v2/health/ready", "/metrics"):
            assert httpx.get(f"http://{address}{open_path}", timeout=5).status_code == 200
        httpclient = pytest.importorskip("tritonclient.http")
        client = httpclient.InferenceServerClient(address)
        assert client.get_model_metadata("dfx", headers={"Authorization": f"Bearer {TOKEN}"})["name"] == "dfx"
        client.close()
        assert _metric(address, "dfx_requests_total", endpoint="screen", code="401", outcome="unauthorized") == 2


def test_failed_reload_keeps_the_old_model_and_shows_in_metrics(exported_bundle, images, reference, tmp_path):
    bundle = Path(shutil.copytree(exported_bundle, tmp_path / "bundle"))
    config = ServeConfig(bundle=str(bundle), **BACKEND, token=TOKEN)
    auth = {"authorization": f"Bearer {TOKEN}"}
    with running(config) as (address, app):
        before = app.state.service.model
        with open(bundle / "model.onnx", "ab") as handle:  # the file no longer matches the manifest
            handle.write(b"tampered")
        answer = httpx.post(f"http://{address}/v1/admin/reload", headers=auth, timeout=60)
        assert answer.status_code == 422 and "old model keeps serving" in answer.json()["error"]
        assert app.state.service.model is before and before.runner.is_active
        row = httpx.post(f"http://{address}/v1/screen", content=Path(images[0]).read_bytes(),
                         headers={"content-type": "image/jpeg", **auth}, timeout=30).json()["results"][0]
        assert row["logit"] == pytest.approx(reference[images[0]], abs=1e-5) and row["model_sha256"] == before.sha256
        assert httpx.get(f"http://{address}/v2/health/ready", timeout=5).status_code == 200
        assert _metric(address, "dfx_model_reload_failed") == 1
        assert _metric(address, "dfx_model_reloads_total", outcome="failed") == 1
        assert "does not match the manifest" in httpx.get(f"http://{address}/metrics", timeout=5).text

        # A good bundle (the original) swaps in; the old runner is closed after the swap.
        answer = httpx.post(f"http://{address}/v1/admin/reload", headers=auth, json={"bundle": str(exported_bundle)}, timeout=60)
        assert answer.status_code == 200 and answer.json()["model"]["bundle"] == str(exported_bundle)
        assert app.state.service.model is not before and not before.runner.is_active
        assert _metric(address, "dfx_model_reload_failed") == 0
        assert _metric(address, "dfx_model_reloads_total", outcome="ok") == 1
        assert httpx.post(f"http://{address}/v1/admin/reload", timeout=5).status_code == 401


def test_metrics_count_requests_images_batches_and_name_the_model(server, images):
    httpx.post(f"http://{server}/v1/screen", files=[("f", ("a.jpg", Path(images[0]).read_bytes(), "image/jpeg")),
                                                   ("f", ("b.jpg", b"junk", "image/jpeg"))], timeout=30)
    text = httpx.get(f"http://{server}/metrics", timeout=5).text
    for name in ("dfx_queue_duration_seconds_bucket", "dfx_compute_duration_seconds_bucket", "dfx_batch_size_bucket",
                 "dfx_decode_duration_seconds_bucket", "dfx_request_duration_seconds_bucket", "dfx_queue_images", "dfx_ready 1.0"):
        assert name in text, name
    assert _metric(server, "dfx_requests_total", endpoint="screen", outcome="ok", code="200") >= 1
    assert _metric(server, "dfx_images_total", outcome="scored") >= 1 and _metric(server, "dfx_images_total", outcome="error") >= 1
    assert _metric(server, "dfx_compute_duration_seconds_count") >= 1
    info = next(line for line in text.splitlines() if line.startswith("dfx_model_info{"))
    assert 'backend="ort-cpu"' in info and 'precision="fp32"' in info and 'name="dfx"' in info
    assert len(info.split('sha256="')[1].split('"')[0]) == 64


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 and its key (PEM files)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_sighup_reloads_and_sigterm_drains_in_flight_requests_and_exits_0(exported_bundle, images, tmp_path):
    """A real `dfx serve` process over TLS: SIGHUP reloads the bundle; then requests wait in a 2 s
    batch window when SIGTERM arrives; all of them are answered 200, and the process exits 0."""
    import ssl

    pytest.importorskip("cryptography", reason="the TLS certificate is made with cryptography (test extra)")
    cert, key = _self_signed(tmp_path)
    tls = {"verify": ssl.create_default_context(cafile=str(cert))}
    command = [sys.executable, "-m", "dfx", "serve", str(exported_bundle), "--port", "0", "--backend", "ort-cpu",
               "--precision", "fp32", "--max-batch", "64", "--max-delay-us", "2000000",
               "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    try:
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(process.stderr.readline, "")), daemon=True)
        reader.start()
        end = time.monotonic() + 60
        while not any("listening on" in line for line in lines) and time.monotonic() < end and process.poll() is None:
            time.sleep(0.05)
        address = next(line for line in lines if "listening on" in line).strip().rsplit("//", 1)[1]
        assert any("listening on https://" in line for line in lines)
        _wait_ready(address, process, **tls)
        process.send_signal(signal.SIGHUP)
        while _metric(address, "dfx_model_reloads_total", tls, outcome="ok") < 1 and time.monotonic() < end:
            time.sleep(0.05)
        assert _metric(address, "dfx_model_reloads_total", tls, outcome="ok") == 1 and process.poll() is None
        answers: list[httpx.Response] = []

        def send(path: str) -> None:
            answers.append(httpx.post(f"https://{address}/v1/screen", content=Path(path).read_bytes(),
                                      headers={"content-type": "image/jpeg"}, timeout=30, **tls))

        senders = [threading.Thread(target=send, args=(p,)) for p in images[:3]]
        for thread in senders:
            thread.start()
        while _metric(address, "dfx_queue_images", tls) < 3 and time.monotonic() < end:
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        for thread in senders:
            thread.join(timeout=30)
        assert process.wait(timeout=40) == 0
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert all(a.json()["results"][0]["error"] is None for a in answers)
        reader.join(timeout=5)
        assert any("draining" in line for line in lines), lines[-5:]
        access = [json.loads(line) for line in lines if line.startswith("{")]  # the structured access log
        screened = [entry for entry in access if entry["endpoint"] == "screen"]
        assert len(screened) == 3 and all(e["status"] == 200 and e["images"] == 1 and e["ms"] > 0 for e in screened)
        assert not any("Traceback" in line for line in lines), "".join(lines[-30:])
        with pytest.raises(httpx.TransportError):
            httpx.get(f"https://{address}/v2/health/live", timeout=2, **tls)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()


def test_not_ready_while_loading_or_draining(exported_bundle, images):
    from dfx.runtime.serve.batcher import NotReady
    from dfx.runtime.serve.service import Service

    service = Service(ServeConfig(bundle=str(exported_bundle), **BACKEND))
    assert service.live and not service.ready
    with pytest.raises(NotReady, match="loading"):
        service.batcher.submit([images[0]])
    service.start(background=False)
    assert service.ready and service.batcher.screen([images[0]])[0].error is None
    service.begin_drain()
    assert service.live and not service.ready
    with pytest.raises(NotReady, match="draining"):
        service.batcher.submit([images[0]])
    service.close()
    assert not service.live and not service.model.runner.is_active


# ---- the command line ------------------------------------------------------------------------------


def test_cli_errors_are_one_line(tmp_path, exported_bundle):
    from dfx import cli

    env_var = "DFX_SERVE_TEST_UNSET_TOKEN"
    os.environ.pop(env_var, None)
    result = subprocess.run([sys.executable, "-m", "dfx", "serve", str(tmp_path / "nope"), "--port", "0"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "does not exist" in result.stderr and "Traceback" not in result.stderr
    assert cli.main(["serve", str(exported_bundle), "--token-env", env_var]) == 2
    assert cli.main(["serve", str(exported_bundle), "--max-images", "500", "--max-queue", "100"]) == 2


def test_serve_without_the_extra_names_it():
    from _blocked import run_blocked

    result = run_blocked(
        """
        from dfx import cli
        try:
            cli.main(["serve", "--help"])
        except SystemExit as exc:
            assert exc.code == 0
        sys.exit(cli.main(["serve", "somewhere"]))
        """,
        ("fastapi", "uvicorn", "prometheus_client", "tensorflow"),
    )
    assert result.returncode == 2, result.stderr
    assert "pip install 'dfx[serve]'" in result.stderr and "Traceback" not in result.stderr
    assert "/v1/screen" in result.stdout


def _trusted_key(tmp_path: Path):
    pytest.importorskip("cryptography", reason="signed bundles need cryptography (pip install 'dfx[sign]')")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    public = tmp_path / "trusted.pub.pem"
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key, public


def test_public_key_refuses_an_unsigned_bundle_before_binding(exported_bundle, tmp_path, capsys):
    from dfx.cli import main

    _, public = _trusted_key(tmp_path)
    assert main(["serve", str(exported_bundle), "--public-key", str(public), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "unsigned and a trusted key" in err and "Traceback" not in err


def test_public_key_serves_the_signed_bundle_and_refuses_an_unsigned_reload(exported_bundle, images, tmp_path):
    from dfx.bundle import Bundle

    key, public = _trusted_key(tmp_path)
    signed = Path(shutil.copytree(exported_bundle, tmp_path / "signed"))
    Bundle.open(signed).sign(key)
    auth = {"authorization": f"Bearer {TOKEN}"}
    with running(ServeConfig(bundle=str(signed), **BACKEND, token=TOKEN, public_key=str(public))) as (address, app):
        before = app.state.service.model
        assert before.bundle.signature.startswith("verified: ed25519")
        # A reload to an unsigned bundle is refused with the reason; the signed one keeps serving.
        answer = httpx.post(f"http://{address}/v1/admin/reload", headers=auth, json={"bundle": str(exported_bundle)}, timeout=60)
        assert answer.status_code == 422 and "unsigned" in answer.json()["error"]
        assert app.state.service.model is before
        row = httpx.post(f"http://{address}/v1/screen", content=Path(images[0]).read_bytes(),
                         headers={"content-type": "image/jpeg", **auth}, timeout=30).json()["results"][0]
        assert row["error"] is None and row["model_sha256"] == before.sha256
