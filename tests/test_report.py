"""`dfx report`: the moderator's HTML page from a results file, checked as text and as pixels
in a real headless Chromium (skipped with a reason where Debian's chromium is absent)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from dfx.report import FLAG_COLOUR, read_rows, write_report


def _image(path, colour, size=(400, 300)):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    pixels[:] = colour
    pixels[::8] = 255  # some structure, so a thumbnail is not one flat colour
    Image.fromarray(pixels).save(path, quality=90)
    return str(path)


@pytest.fixture()
def results(tmp_path):
    """A results JSONL as dfx scan writes it, plus the per-face fields, over two folders."""
    fake = _image(tmp_path / "uploads" / "a" / "group.jpg", (90, 120, 160), (1600, 1200))
    real = _image(tmp_path / "uploads" / "a" / "portrait.jpg", (150, 130, 110))
    empty = _image(tmp_path / "uploads" / "b" / "landscape.jpg", (60, 140, 60))
    odd = _image(tmp_path / "uploads" / "b" / "<img src=x onerror=alert(1)>.jpg", (200, 200, 200))
    common = {"backend": "openvino", "precision": "int8", "model_sha256": "ab" * 32}
    rows = [
        {"path": real, "logit": -2.0, "probability": 0.12, "decision": "real", "verdict": "real", "error": None, **common},
        {"path": fake, "logit": 2.5, "probability": 0.93, "decision": "fake", "verdict": "fake", "error": None, "faces": 2,
         "face_boxes": [{"box": [100, 100, 500, 520], "face_score": 0.9, "logit": 2.5, "probability": 0.93, "decision": "fake"},
                        {"box": [900, 200, 1200, 520], "face_score": 0.8, "logit": -1.0, "probability": 0.2, "decision": "real"}],
         **common},
        {"path": empty, "logit": None, "probability": None, "decision": "no_face", "verdict": "no_face", "error": None,
         "faces": 0, "face_boxes": [], **common},
        {"path": str(tmp_path / "uploads" / "b" / "gone.jpg"), "logit": None, "probability": None, "decision": None,
         "error": "no such file", **common},
        {"path": odd, "logit": 0.1, "probability": 0.55, "decision": "real", "verdict": "ai-declared", "c2pa": "valid",
         "claim_generator": "Some AI 1.0", "ai_declared": True, "error": None, **common},
    ]
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"path": "half-writ')  # a killed scan's last line
    return path


def test_page_holds_every_row_sorted_and_escaped(results, tmp_path):
    out = tmp_path / "report.html"
    summary = write_report(results, out, progress=False)
    assert summary["rows"] == 5 and summary["flagged"] == 2  # the fake and the AI-declared image
    page = out.read_text()
    # Flagged first, then by probability: group (0.93, fake), the AI-declared one, then portrait.
    order = [page.index(name) for name in ("group.jpg", "&lt;img src=x onerror=alert(1)&gt;.jpg", "portrait.jpg")]
    assert order == sorted(order)
    assert "<img src=x" not in page  # names are text, never markup
    assert page.count("data:image/jpeg;base64,") == 4  # the missing file has no thumbnail, still a card
    assert "no preview" in page and "no such file" in page
    assert page.count('class="box fake"') == 1 and page.count('class="box real"') == 1
    assert "left:6.25%" in page  # box x0 100 of a 1600 px wide image
    assert "openvino int8" in page and "C2PA valid" in page and "Some AI 1.0" in page
    assert 'data-folder="' + str(tmp_path / "uploads" / "b") + '"' in page
    assert "<td>50.0%</td>" in page  # folder a: one fake of two scored
    for decision in ("fake", "real", "no_face", "error"):
        assert f'value="{decision}"' in page


def test_csv_rows_carry_face_boxes_as_json(tmp_path):
    import csv

    image = _image(tmp_path / "x.jpg", (100, 100, 100))
    path = tmp_path / "results.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["path", "logit", "probability", "decision", "faces", "face_boxes"])
        writer.writeheader()
        writer.writerow({"path": image, "logit": 1, "probability": 0.7, "decision": "fake", "faces": 1,
                         "face_boxes": json.dumps([{"box": [1, 2, 30, 40], "decision": "fake", "probability": 0.7}])})
    rows = read_rows(path)
    assert rows[0].faces == 1 and rows[0].face_boxes[0]["box"] == [1, 2, 30, 40] and rows[0].flagged


def test_folder_thumbnails_are_made_once(results, tmp_path):
    out = tmp_path / "page" / "report.html"
    write_report(results, out, thumbs="folder", progress=False)
    files = sorted((tmp_path / "page" / "report_files").glob("*.jpg"))
    assert len(files) == 4 and all(f.stat().st_size < 30_000 for f in files)
    stamps = [f.stat().st_mtime_ns for f in files]
    write_report(results, out, thumbs="folder", progress=False)
    assert [f.stat().st_mtime_ns for f in files] == stamps  # reused, not made again
    page = out.read_text()
    assert "report_files/" in page and "data:image" not in page


def test_cli(results, tmp_path, capsys):
    from dfx.cli import main

    assert main(["report", str(results), "--html", str(tmp_path / "r.html")]) == 0
    assert "5 images, 2 flagged" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "missing.jsonl"), "--html", str(tmp_path / "r.html")]) == 2


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_page_renders_in_headless_chromium(results, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    from PIL import Image

    out = tmp_path / "report.html"
    write_report(results, out, progress=False)
    shot = tmp_path / "shot.png"
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--screenshot={shot}",
               "--window-size=1200,900", "--user-data-dir=" + str(tmp_path / "profile"), out.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})
    assert shot.exists(), done.stderr[-2000:]
    if os.environ.get("DFX_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["DFX_KEEP_SCREENSHOT"])
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (900, 1200)
    assert pixels.std() > 20  # not a blank page
    red = np.array([int(FLAG_COLOUR[i : i + 2], 16) for i in (1, 3, 5)])
    is_red = (np.abs(pixels - red).sum(axis=2) < 40)
    assert is_red.sum() > 2000, is_red.sum()  # the flagged cards' borders and the fake face's box
    is_green_box = (np.abs(pixels - np.array([0, 170, 0])).sum(axis=2) < 40)
    assert is_green_box.sum() > 100  # the real face's box drawn on the group photo
    # The thumbnails loaded (their colours are on screen): the landscape's green fill.
    assert (np.abs(pixels - np.array([60, 140, 60])).sum(axis=2) < 30).sum() > 2000
