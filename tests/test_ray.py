"""`dfx scan --engine ray` on a local Ray cluster (2 CPUs): the rows of `dfx scan`, error rows for
bad files, and a driver killed midway that --resume finishes with exactly one row per input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="the Ray engine needs the ray extra (pip install 'dfx[ray]')")
pytest.importorskip("pyarrow", reason="the Ray engine needs pyarrow (pip install 'dfx[ray]')")

from _blocked import run_blocked  # noqa: E402
from test_scan import make_mixed_folder  # noqa: E402

from dfx.cli import main  # noqa: E402
from dfx.errors import DfxError  # noqa: E402
from dfx.runtime.ray.scan import expand_inputs, read_shards  # noqa: E402
from dfx.runtime.scan.results import COLUMNS, read_results  # noqa: E402



@pytest.fixture(scope="module")
def ray_address():
    """One local Ray instance for the module (2 CPUs, no dashboard); its GCS address lets a
    subprocess driver join it, as a job joins a cluster."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _good(synth_data: Path, count: int) -> list[Path]:
    return sorted(p for p in Path(synth_data).rglob("*") if p.suffix in (".jpg", ".png"))[:count]


@pytest.fixture()
def inbox(synth_data, tmp_path) -> tuple[Path, dict[str, str]]:
    """24 good images (two folders) and bad files; (folder, {bad name: expected error words})."""
    folder = tmp_path / "inbox"
    return folder, make_mixed_folder(synth_data, folder, 24)


def _by_path(rows: list[dict]) -> dict[str, dict]:
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)), "a row was written twice"
    return {r["path"]: r for r in rows}


def _assert_same_rows(local: dict[str, dict], ray_rows: dict[str, dict]) -> None:
    assert ray_rows.keys() == local.keys()
    for path, want in local.items():
        got = ray_rows[path]
        exact = [c for c in COLUMNS if c not in ("logit", "probability")]  # error, decision, provenance, ...
        assert {c: got[c] for c in exact} == {c: want[c] for c in exact}, path
        if want["logit"] is not None:
            # Same file, same backend; only the thread count differs (float sums may reorder).
            assert got["logit"] == pytest.approx(want["logit"], abs=1e-5), path
            assert got["probability"] == pytest.approx(want["probability"], abs=1e-6), path
        else:
            assert got["logit"] is None and got["probability"] is None, path


def test_rows_equal_dfx_scan(exported_bundle, inbox, tmp_path, ray_address, capsys):
    folder, expected = inbox
    missing = tmp_path / "missing.jpg"
    local_out, ray_out = tmp_path / "local.jsonl", tmp_path / "shards"
    common = ["scan", str(exported_bundle), str(folder), str(missing), "--backend", "ort-cpu", "--batch", "4"]
    assert main(common + ["--out", str(local_out)]) == 0
    local_summary = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert main(common + ["--out", str(ray_out), "--engine", "ray"]) == 0
    summary = json.loads(capsys.readouterr().err.strip().splitlines()[-1])

    local = _by_path([r.to_dict() for r in read_results(local_out)])
    rows = read_shards(str(ray_out))
    got = _by_path(rows)
    _assert_same_rows(local, got)
    assert list(rows[0]) == list(COLUMNS)  # the same columns, in the same order, as dfx scan rows
    by_name = {Path(p).name: r for p, r in got.items()}
    for name, words in expected.items():
        assert words in by_name[name]["error"] and by_name[name]["logit"] is None, name
    assert by_name["missing.jpg"]["error"] == "no such file"
    assert "README.txt" not in by_name
    assert sum(r["error"] is None for r in rows) == 24
    assert summary["engine"] == "ray" and summary["images"] == len(local) and summary["errors"] == len(expected) + 1
    assert summary["skipped_non_image"] == 1 and summary["ray_startup_s"] == 0.0  # joined the running instance
    assert set(local_summary) <= set(summary)  # dfx scan's summary keys, plus the engine's own
    for key in ("images", "scored", "fake", "real", "errors", "skipped_non_image", "backend", "precision", "provenance", "verdicts"):
        assert summary[key] == local_summary[key], key

    # Finished: --resume has nothing left to do; without it the folder is refused.
    assert main(common + ["--out", str(ray_out), "--engine", "ray", "--resume"]) == 0
    again = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert again["images"] == 0 and again["skipped_done"] == len(local)
    assert main(common + ["--out", str(ray_out), "--engine", "ray", "--quiet"]) == 2
    assert "already holds" in capsys.readouterr().err


def test_killed_driver_resumes_to_one_row_per_input(exported_bundle, inbox, synth_data, tmp_path, ray_address):
    folder, _ = inbox
    for i, src in enumerate(_good(synth_data, 400)):  # long enough to kill midway
        dst = folder / "bulk" / f"{i:04d}{src.suffix}"
        dst.parent.mkdir(exist_ok=True)
        os.link(src, dst)
    local_out, out = tmp_path / "local.jsonl", tmp_path / "shards"
    assert main(["scan", str(exported_bundle), str(folder), "--backend", "ort-cpu", "--out", str(local_out), "--quiet"]) == 0
    local = _by_path([r.to_dict() for r in read_results(local_out)])

    cmd = [sys.executable, "-m", "dfx", "scan", str(exported_bundle), str(folder), "--engine", "ray", "--ray-address", ray_address,
           "--backend", "ort-cpu", "--batch", "2", "--format", "jsonl", "--out", str(out), "--quiet"]
    process = subprocess.Popen(cmd)
    deadline = time.monotonic() + 240
    written = 0
    while time.monotonic() < deadline and process.poll() is None:
        written = sum(p.read_bytes().count(b"\n") for p in out.glob("*.jsonl")) if out.exists() else 0
        if written >= 40:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 0 < written < len(local), f"the driver was not stopped midway ({written} rows of {len(local)})"
    with open(out / "zz-cut.jsonl", "wb") as handle:  # as if a writer died mid-row: half a row, no newline
        handle.write(b'{"path": "/half/written", "logit": 0.1')

    done = subprocess.run(cmd + ["--resume"], timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same_rows(local, _by_path(read_shards(str(out))))
    assert (out / "zz-cut.jsonl").read_bytes() == b""  # the cut-off row was removed from its shard


def test_cut_off_parquet_shard_is_dropped_on_resume(exported_bundle, inbox, tmp_path, ray_address):
    folder, _ = inbox
    out = tmp_path / "shards"
    args = ["scan", str(exported_bundle), str(folder), "--engine", "ray", "--backend", "ort-cpu", "--out", str(out), "--quiet"]
    assert main(args) == 0
    first = read_shards(str(out))
    shard = sorted(out.glob("*.parquet"))[0]
    lost = len(read_shards(str(out), only=[str(shard)]))
    shard.write_bytes(shard.read_bytes()[:100])  # a writer killed mid-file: no footer
    assert len(read_shards(str(out))) == len(first) - lost
    assert main(args + ["--resume"]) == 0
    assert not shard.exists()  # removed, and its inputs scanned again
    assert _by_path(read_shards(str(out))).keys() == _by_path(first).keys()


def test_config_errors_are_clear(exported_bundle, inbox, tmp_path, ray_address, capsys):
    folder, _ = inbox
    base = ["scan", str(exported_bundle), str(folder), "--engine", "ray", "--out", str(tmp_path / "o")]
    assert main(base + ["--actors", "2", "--threads", "1"]) == 2  # 2 actors + 1 decode CPU > 2 CPUs: would hang
    err = capsys.readouterr().err
    assert "exceed the cluster's 2 CPUs" in err and "hint:" in err and "Traceback" not in err
    (tmp_path / "file").write_text("x")
    assert main(base[:-1] + [str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_expand_inputs_globs_manifests_and_folders(inbox, tmp_path):
    folder, _ = inbox
    listing = tmp_path / "uris.txt"
    listing.write_text(f"# a manifest\n{folder / 'empty.jpg'}\n\nfile://{folder / 'text.png'}\n")
    found = expand_inputs([str(folder / "nested"), str(folder / "good_*.jpg"), f"@{listing}", str(tmp_path / "none_*.jpg")])
    nested = sorted(str(p) for p in (folder / "nested").iterdir())
    assert found.files[: len(nested)] == nested
    assert str(folder / "empty.jpg") in found.files and str(folder / "text.png") in found.files  # file:// is local
    assert str(tmp_path / "none_*.jpg") in found.files  # a glob matching nothing: an error row, not silence
    assert found.scheme == "" and len(found.files) == len(set(found.files))
    with pytest.raises(DfxError, match="inputs mix filesystems"):
        expand_inputs([str(folder), "s3://bucket/key.jpg"])


def test_without_ray_the_cli_names_the_extra(exported_bundle, inbox, tmp_path):
    folder, _ = inbox
    result = run_blocked(
        f"""
        import dfx.runtime.ray.scan
        assert "ray" not in sys.modules, "dfx.runtime.ray.scan imported ray at module level"
        from dfx import cli
        sys.exit(cli.main(["scan", {str(exported_bundle)!r}, {str(folder)!r}, "--engine", "ray", "--out", {str(tmp_path / "o")!r}]))
        """,
        ("ray",),
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "pip install 'dfx[ray]'" in result.stderr and "Traceback" not in result.stderr


def test_dfx_serve_app_on_ray_serve(exported_bundle, inbox, tmp_path, ray_address):
    """The `dfx serve` app deployed on Ray Serve (one replica) answers /v1/screen with the
    row `dfx scan` writes for the same image."""
    pytest.importorskip("fastapi", reason="dfx serve needs the serve extra (pip install 'dfx[serve]')")
    import socket
    import urllib.request

    from ray import serve

    from dfx.runtime.ray.deployment import application
    from dfx.runtime.serve.config import ServeConfig

    folder, _ = inbox
    image = sorted(folder.glob("good_*.jpg"))[0]
    local_out = tmp_path / "one.jsonl"
    assert main(["scan", str(exported_bundle), str(image), "--backend", "ort-cpu", "--threads", "1", "--out", str(local_out), "--quiet"]) == 0
    want = read_results(local_out)[0]

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(application(ServeConfig(bundle=str(exported_bundle), backend="ort-cpu"), replicas=1, threads=1),
                  name="dfx", route_prefix="/", blocking=False)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:  # the replica loads the model in the app's lifespan; readiness says when
            try:
                with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the Serve replica never became ready"
            time.sleep(0.5)
        request = urllib.request.Request(f"{base}/v1/screen", data=image.read_bytes(), method="POST",
                                         headers={"Content-Type": "image/jpeg", "X-Filename": str(image)})
        with urllib.request.urlopen(request, timeout=30) as response:
            got = json.loads(response.read())["results"][0]
    finally:
        serve.shutdown()
    assert got["error"] is None and got["decision"] == want.decision and got["backend"] == "ort-cpu"
    assert got["logit"] == pytest.approx(want.logit, abs=1e-5)
    assert got["model_sha256"] == want.model_sha256
