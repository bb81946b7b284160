"""`dfx scan`: one row per input whatever the input, and a killed scan resumed gives the same
rows as one uninterrupted scan."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from dfx.cli import main
from dfx.images import open_formats
from dfx.runtime.scan.results import ResultWriter, read_results


def _good_images(synth_data: Path, count: int) -> list[Path]:
    return sorted(p for p in Path(synth_data).rglob("*") if p.suffix in (".jpg", ".png"))[:count]


def _huge_png() -> bytes:
    """A valid PNG whose header declares 100000 x 100000 pixels (a decompression bomb)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    ihdr = 8 + 8  # signature, then length + b"IHDR"
    data[ihdr : ihdr + 8] = struct.pack(">II", 100_000, 100_000)
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13])))
    return bytes(data)


def make_mixed_folder(synth_data: Path, folder: Path, count: int) -> dict[str, str]:
    """`count` good images (in `folder` and `folder/nested`) plus bad files and a README;
    returns {bad file name: expected error words}."""
    (folder / "nested").mkdir(parents=True)
    good = _good_images(synth_data, count)
    for i, src in enumerate(good):
        shutil.copy(src, (folder if i % 2 else folder / "nested") / f"good_{i}{src.suffix}")
    jpeg = next(p for p in good if p.suffix == ".jpg").read_bytes()
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "text.png").write_text("this is not an image\n")
    (folder / "bomb.png").write_bytes(_huge_png())
    (folder / "README.txt").write_text("not scanned: no image suffix\n")  # skipped, not a row
    return {"empty.jpg": "empty file", "truncated.jpg": "cannot decode", "text.png": "not an image", "bomb.png": "too large"}


@pytest.fixture()
def mixed_folder(synth_data, tmp_path) -> tuple[Path, dict[str, str]]:
    """Good images plus bad files; returns (folder, {bad file name: expected error words})."""
    folder = tmp_path / "inbox"
    return folder, make_mixed_folder(synth_data, folder, 9)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_scan_mixed_folder_one_row_per_input(exported_bundle, mixed_folder, tmp_path, capsys, suffix):
    folder, expected = mixed_folder
    out = tmp_path / f"rows{suffix}"
    missing = tmp_path / "missing.jpg"
    code = main(["scan", str(exported_bundle), str(folder), str(missing), "--out", str(out), "--batch", "4", "--backend", "ort-cpu"])
    assert code == 0
    rows = read_results(out)
    names = [Path(r.path).name for r in rows]
    assert len(rows) == 9 + len(expected) + 1 == len(set(r.path for r in rows))  # one row each, none twice
    assert "README.txt" not in names
    by_name = {Path(r.path).name: r for r in rows}
    for name, words in expected.items():
        assert by_name[name].error and words in by_name[name].error, (name, by_name[name].error)
        assert by_name[name].logit is None and by_name[name].decision is None
    assert "no such file" in by_name["missing.jpg"].error
    good = [r for r in rows if r.error is None]
    assert len(good) == 9
    for r in good:
        assert r.decision == ("fake" if r.logit >= json.loads((Path(exported_bundle) / "manifest.json").read_text())["threshold"]["logit"] else "real")
        assert 0.0 <= r.probability <= 1.0
        assert r.backend == "ort-cpu" and r.precision == "int8" and len(r.model_sha256) == 64
    err = capsys.readouterr().err
    assert "backend ort-cpu int8" in err
    summary = json.loads(err.strip().splitlines()[-1])  # not a TTY: one JSON line
    assert summary["images"] == len(rows) and summary["errors"] == len(expected) + 1
    assert summary["skipped_non_image"] == 1


def test_scan_exit_codes(exported_bundle, mixed_folder, tmp_path):
    folder, _ = mixed_folder
    out = tmp_path / "bad.jsonl"
    assert main(["scan", str(exported_bundle), str(folder / "empty.jpg"), str(folder / "text.png"), "--out", str(out), "--quiet"]) == 1
    assert main(["scan", str(exported_bundle), str(folder), "--out", str(out), "--quiet"]) == 2  # exists: refuse
    assert main(["scan", str(exported_bundle), str(folder), "--out", str(tmp_path / "x.txt"), "--quiet"]) == 2
    assert main(["scan", str(exported_bundle), str(tmp_path / "nothing-here"), "--out", str(tmp_path / "y.jsonl"), "--quiet"]) == 1


def _rows_by_path(path: Path) -> dict[str, tuple]:
    rows = read_results(path)
    assert len(rows) == len({r.path for r in rows}), "a row was written twice"
    return {r.path: (r.logit, r.decision, r.error) for r in rows}


def _same_rows(a: dict[str, tuple], b: dict[str, tuple]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        (la, da, ea), (lb, db, eb) = a[key], b[key]
        assert ea == eb, key
        if la is not None:
            assert lb == pytest.approx(la, abs=1e-5) and da == db, key


@pytest.fixture()
def many_inputs(synth_data, mixed_folder, tmp_path) -> Path:
    """~400 synthetic images (hard links) and the bad files: long enough to kill a scan midway."""
    folder, _ = mixed_folder
    for i, src in enumerate(_good_images(synth_data, 400)):
        dst = folder / "bulk" / f"{i:04d}{src.suffix}"
        dst.parent.mkdir(exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy(src, dst)
    return folder


def test_killed_scan_resumes_to_the_same_rows(exported_bundle, many_inputs, tmp_path):
    base = [sys.executable, "-m", "dfx", "scan", str(exported_bundle), str(many_inputs), "--backend", "ort-cpu", "--batch", "2", "--workers", "1", "--quiet"]
    full, part = tmp_path / "full.jsonl", tmp_path / "part.jsonl"
    assert subprocess.run(base + ["--out", str(full)], timeout=300).returncode == 0
    expected = _rows_by_path(full)
    assert len(expected) > 400

    # Killed midway by construction, not by timing: the scan writes into a pipe that the test
    # stops reading after 40 rows, so once the pipe's buffer (64 KiB at most, far less than the
    # whole output) is full the scan blocks on its next row and cannot finish, however fast the CPU.
    assert full.stat().st_size > 2 * 65536
    pipe = tmp_path / "pipe.jsonl"
    os.mkfifo(pipe)
    process = subprocess.Popen(base + ["--out", str(pipe), "--overwrite"])
    try:
        reader = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)  # never blocks, even if the scan fails to start
        received = _read_pipe(reader, process, until_rows=40)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        received += _read_pipe(reader, process, until_rows=None)  # what it wrote before it died
        os.close(reader)
    finally:
        process.kill()
    part.write_bytes(received)
    written = received.count(b"\n")
    assert 40 <= written < len(expected), "the scan was not stopped midway"
    with open(part, "ab") as handle:  # as if killed mid-write: half a row, no newline
        handle.write(b'{"path": "/half/written", "logit": 0.1')

    assert subprocess.run(base + ["--out", str(part), "--resume"], timeout=300).returncode == 0
    _same_rows(expected, _rows_by_path(part))


def _read_pipe(fd: int, process: subprocess.Popen, until_rows: int | None) -> bytes:
    """Bytes from a non-blocking pipe: until `until_rows` lines arrived, or (None) until EOF
    after the writer died. Bounded: fails after 120 s rather than hanging."""
    import select

    data = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        chunk = os.read(fd, 65536) if ready else b""
        data += chunk
        if until_rows is not None and data.count(b"\n") >= until_rows:
            return data
        if ready and not chunk:
            if until_rows is None or process.poll() is not None:
                return data  # EOF: the writer is gone
            time.sleep(0.01)  # no writer yet (the scan is starting): select reports EOF at once
    raise AssertionError(f"the pipe gave {len(data.splitlines())} rows in 120 s")


def test_stopped_generator_resumes_in_process(exported_bundle, mixed_folder, tmp_path):
    """Stop the row stream midway (no subprocess), then --resume: same rows as one full scan."""
    from dfx.bundle import Bundle
    from dfx.images import iter_image_files
    from dfx.runtime.scan.pipeline import iter_results
    from dfx.runtime.scan.select import choose_runner

    folder, _ = mixed_folder
    full, part = tmp_path / "full.csv", tmp_path / "part.csv"
    assert main(["scan", str(exported_bundle), str(folder), "--out", str(full), "--batch", "3", "--quiet"]) == 0
    bundle = Bundle.open(exported_bundle)
    runner, choice = choose_runner(bundle)
    with runner, ResultWriter(part) as writer:
        stream = iter_results(iter_image_files([folder]), runner, size=bundle.input_size, fit=bundle.fit,
                              threshold=bundle.threshold, batch_size=3, model_sha256=choice.sha256)
        for _, result in zip(range(5), stream):
            writer.write(result)
        stream.close()  # the consumer stops: decoders are cancelled, nothing else is written
    assert len(read_results(part)) == 5
    assert main(["scan", str(exported_bundle), str(folder), "--out", str(part), "--resume", "--batch", "3", "--quiet"]) == 0
    _same_rows(_rows_by_path(full), _rows_by_path(part))


def test_runner_failure_becomes_error_rows(exported_bundle, mixed_folder):
    """A runner that rejects every batch (wrong input size) costs rows, not the scan."""
    from dfx.bundle import Bundle
    from dfx.images import iter_image_files
    from dfx.runtime.runners.ort import OrtRunner
    from dfx.runtime.scan.pipeline import iter_results

    folder, expected = mixed_folder
    bundle = Bundle.open(exported_bundle)
    files = iter_image_files([folder])
    h, w = bundle.input_size
    with OrtRunner(str(bundle.file("model.onnx")), input_size=(h, w)) as runner:
        rows = list(iter_results(files, runner, size=(h + 8, w + 8), fit="resize", threshold=0.0, batch_size=4))
    assert [r.path for r in rows] == files
    assert all(r.error for r in rows)
    assert sum("inference failed" in r.error for r in rows) == 9
    assert np.all([r.logit is None for r in rows])


def test_one_failed_batch_costs_its_rows_and_later_rows_stay_aligned(exported_bundle, mixed_folder):
    """The runner fails on its second batch only: exactly that batch's images become error rows,
    and every other row carries the logit a clean run gives the same input."""
    from dfx.bundle import Bundle
    from dfx.images import iter_image_files
    from dfx.runtime.runners.ort import OrtRunner
    from dfx.runtime.scan.pipeline import iter_results

    class FailsOnce(OrtRunner):
        calls = 0

        def _infer(self, batch: np.ndarray) -> np.ndarray:
            FailsOnce.calls += 1
            if FailsOnce.calls == 2:
                raise RuntimeError("the device dropped this batch")
            return super()._infer(batch)

    folder, _ = mixed_folder
    bundle = Bundle.open(exported_bundle)
    files = iter_image_files([folder])
    settings = dict(size=bundle.input_size, fit=bundle.fit, threshold=bundle.threshold, batch_size=3, workers=2)
    with OrtRunner(str(bundle.file("model.onnx")), input_size=bundle.input_size) as runner:
        clean = list(iter_results(files, runner, **settings))
    with FailsOnce(str(bundle.file("model.onnx")), input_size=bundle.input_size) as runner:
        rows = list(iter_results(files, runner, **settings))
    assert [r.path for r in rows] == [r.path for r in clean] == files
    failed = [r for r in rows if r.error and "the device dropped this batch" in r.error]
    scored_clean = [r for r in clean if r.logit is not None]
    assert [r.path for r in failed] == [r.path for r in scored_clean[3:6]]  # the second batch, whole
    after = rows[rows.index(failed[-1]) + 1:]
    assert any(r.logit is not None for r in after)  # the scan went on after the failure
    for got, want in zip(rows, clean):
        if got.path in {r.path for r in failed}:
            assert got.logit is None and got.decision is None
        else:
            assert got.error == want.error and got.decision == want.decision
            assert (got.logit is None) == (want.logit is None)
            if want.logit is not None:
                assert got.logit == pytest.approx(want.logit, abs=1e-6)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_resume_reading_cuts_a_half_written_row(tmp_path, suffix):
    from dfx.runtime.scan.results import Result, done_paths

    out = tmp_path / f"rows{suffix}"
    rows = [Result("a.jpg", 1.5, 0.82, "fake", "ort-cpu", "int8", "f" * 64), Result("b,\"odd\".jpg", None, None, None, "ort-cpu", "int8", "f" * 64, "empty file")]
    with ResultWriter(out) as writer:
        writer.write_all(rows)
    with open(out, "ab") as handle:
        handle.write(b"c.jpg" if suffix == ".csv" else b'{"path": "c.jpg", "lo')  # killed mid-row
    assert read_results(out) == rows  # the partial row is ignored...
    assert done_paths(out) == {"a.jpg", 'b,"odd".jpg'}
    with ResultWriter(out, append=True) as writer:  # ...and cut, so appending stays clean
        writer.write(Result("c.jpg", -2.0, 0.12, "real", "ort-cpu", "int8", "f" * 64))
    assert [r.path for r in read_results(out)] == ["a.jpg", 'b,"odd".jpg', "c.jpg"]
    assert out.read_text().count("path") == (1 if suffix == ".csv" else 3)  # one CSV header only


@pytest.mark.skipif("HEIF" not in open_formats(), reason="pi-heif is not installed (the dfx[faces] extra)")
def test_a_phone_heic_is_scanned_like_its_pixels(exported_bundle, tmp_path):
    """An iPhone's HEIC in a folder is a scored row, with the logit of its decoded pixels."""
    from dfx.images import to_rgb
    from dfx.runtime.scan.detector import Detector

    heic = Path(__file__).parent / "data" / "quadrants-orientation6.heic"
    shutil.copy(heic, tmp_path / "IMG_0001.HEIC")
    out = tmp_path / "rows.jsonl"
    assert main(["scan", str(exported_bundle), str(tmp_path / "IMG_0001.HEIC"), "--out", str(out), "--backend", "ort-cpu", "--quiet"]) == 0
    (row,) = read_results(out)
    assert row.error is None and row.decision in ("real", "fake")
    with Detector.load(exported_bundle, backend="ort-cpu") as detector:
        (same,) = detector.predict(np.asarray(to_rgb(heic)))
    assert abs(row.logit - same.logit) < 1e-5
