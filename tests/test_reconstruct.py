"""dfx data reconstruct: aligned pseudo-fakes from real photos (dfx.trainer.reconstruct).

One small bank (two decoders, a few dozen steps) is trained once per session on the synthetic
set's real photos; the tests check what a user relies on: the fakes are saved like their
sources, the JPEG quality estimate, determinism, resuming, the checkerboard of a transposed
convolution, and clear errors on bad input."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from dfx.trainer import reconstruct as rec

pytest.importorskip("tensorflow", reason="dfx data reconstruct needs tensorflow (pip install 'dfx[train]')")

DECODERS = ("ae-tconv-x4", "ae-nearest-x4")


def _config(data, out, **changes):
    settings = dict(data=(str(data),), out=str(out), decoders=DECODERS, per_photo=None, steps=30, batch_size=8,
                    patch=32, train_photos=24, holdout_photos=4, progress=False)
    settings.update(changes)
    return rec.ReconstructConfig(**settings)


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Path:
    """40 synthetic real photos (real/camera, real/scan; JPEG and PNG), 64 px, plus 20 fakes."""
    from dfx.synth import generate

    root = tmp_path_factory.mktemp("recon-photos")
    generate(root, n=80, size=64, seed=3, progress=False)
    return root


@pytest.fixture(scope="session")
def bank(photos, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("recon") / "pseudo"
    return out, rec.run(_config(photos, out), log=lambda m: None)


def _pairs(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / rec.PAIRS_FILE).read_text().splitlines()]


def test_every_photo_through_every_decoder_saved_like_its_source(photos, bank):
    from PIL import Image

    out, report = bank
    pairs = _pairs(out)
    real = sorted(str(p.resolve()) for p in (photos / "real").rglob("*") if p.is_file())
    assert len(real) == 40
    assert report["fakes_written"] == len(pairs) == 2 * len(real)
    assert {(p["source"], p["decoder"]) for p in pairs} == {(s, d) for s in real for d in DECODERS}
    for pair in pairs:
        fake = out / pair["fake"]
        assert fake.parent.name == pair["decoder"]  # DIR/fake/<decoder>/...: the decoder is the group
        with Image.open(pair["source"]) as src, Image.open(fake) as got:
            assert got.size == src.size
            assert got.format == src.format
            if src.format == "JPEG":  # written with the source's own tables
                assert got.quantization == src.quantization
                assert pair["quality"] is not None


@pytest.mark.parametrize("quality", [40, 62, 75, 88, 95])
def test_quality_estimate_within_5_of_the_true_quality(quality):
    from PIL import Image

    rng = np.random.default_rng(quality)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=quality)
    with Image.open(buffer) as im:
        assert abs(rec.estimate_quality(im.quantization) - quality) <= 5
    assert rec.estimate_quality({}) is None


def test_same_seed_same_fakes_and_resume_does_no_work(photos, bank, tmp_path):
    out, _ = bank
    # a second, fresh run with the same seed (one decoder, to stay quick) writes the same bytes
    again = tmp_path / "again"
    rec.run(_config(photos, again, decoders=DECODERS[:1]), log=lambda m: None)
    first = {p["fake"]: (out / p["fake"]).read_bytes() for p in _pairs(out) if p["decoder"] == DECODERS[0]}
    second = {p["fake"]: (again / p["fake"]).read_bytes() for p in _pairs(again)}
    assert first.keys() == second.keys() and first == second
    # rerunning into the first folder finds everything done: no model trained, no file rewritten
    stamps = {p: os.stat(out / p).st_mtime_ns for p in first}
    report = rec.run(_config(photos, out), log=lambda m: None)
    assert report["fakes_written"] == 0
    assert report["fakes_skipped_as_done"] == 80
    assert all(r["reused"] for r in report["decoders"].values())
    assert {p: os.stat(out / p).st_mtime_ns for p in first} == stamps


def _period2_peak(pixels: np.ndarray) -> float:
    """Power at the period-2 frequencies of the high-pass residual, over its median power."""
    g = np.asarray(pixels, np.float64).mean(-1)
    residual = g - (np.roll(g, 1, 0) + np.roll(g, -1, 0) + np.roll(g, 1, 1) + np.roll(g, -1, 1)) / 4
    power = np.abs(np.fft.fft2(residual)) ** 2
    n, m = power.shape
    peaks = power[n // 2, 0] + power[0, m // 2] + power[n // 2, m // 2]
    return float(peaks / 3 / np.median(power))


def test_transposed_conv_leaves_a_stronger_periodic_peak_than_the_source(bank):
    from PIL import Image

    out, _ = bank
    ratios = []
    for pair in _pairs(out):
        if pair["decoder"] != "ae-tconv-x4":
            continue
        with Image.open(pair["source"]) as src, Image.open(out / pair["fake"]) as got:
            ratios.append(_period2_peak(np.asarray(got.convert("RGB"))) / _period2_peak(np.asarray(src.convert("RGB"))))
    assert len(ratios) == 40
    assert np.median(ratios) > 2.0  # the checkerboard: a median of ~27x measured on a 40-step bank of this set


def test_unreadable_photos_are_counted_not_fatal(photos, tmp_path):
    folder = tmp_path / "uploads"
    folder.mkdir()
    for i, src in enumerate(sorted((photos / "real" / "camera").iterdir())[:6]):
        (folder / f"u{i}{src.suffix}").write_bytes(src.read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    report = rec.run(_config(folder, tmp_path / "out", decoders=DECODERS[:1], train_photos=4), log=lambda m: None)
    assert report["photos"] == 7
    assert report["unreadable"]["count"] == 1
    assert report["unreadable"]["first"][0]["path"].endswith("broken.jpg")
    assert report["fakes_written"] == 6


def test_cli_refuses_a_folder_without_photos(tmp_path, capsys):
    from dfx.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["data", "reconstruct", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    assert "no real photos" in capsys.readouterr().err
    assert main(["data", "reconstruct", str(tmp_path / "empty"), "--out", str(tmp_path / "out"), "--decoders", "ae-magic-x4"]) == 2
    assert "unknown decoder" in capsys.readouterr().err


def test_decoder_names_and_families():
    assert rec.decoder_family("ae-tconv-x8") == "ae-tconv"
    assert rec.decoder_family("tconv") is None and rec.decoder_family("stylegan2") is None
    assert len(rec.DECODERS) == 8 and len({rec.decoder_family(d) for d in rec.DECODERS}) == 4
