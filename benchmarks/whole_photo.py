"""Whole photos end to end: 12 MP JPEGs (4000x3000, q90) with one and with several pasted faces,
through decode -> face finding -> native-resolution crops -> the bundle's model.

    python benchmarks/whole_photo.py BUNDLE --out /tmp/whole-photo [--images 24] [--backend auto]

Reports (terminal and OUT/whole_photo.json):
- per-stage milliseconds per image, one thread, sequential: the DCT-scaled decode for the
  finder (Pillow draft mode vs simplejpeg), face finding (float and INT8 finder), the
  full-resolution decode (Pillow vs simplejpeg) beside the region cuts of the faces (region decoding by
  dfx/_jpegregion.c where it was built, else PyTurboJPEG's lossless cuts), cropping + the bundle's window, inference of the image's windows;
- end-to-end images/s of the threaded path a scan runs (`dfx.faces.face_windows` on a pool of
  decode workers, batches of windows to the runner, the row factory), for several
  `min_face` settings, both finders and both JPEG paths, beside the runner's pure-inference rate
  (each configuration run once on 4 photos first: OpenVINO compiles on the first call).
The machine, its load average and the software versions are recorded with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from dfx.runtime.runners.base import cpu_model  # the one CPU name every report uses

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import whole_photo_data as wp  # noqa: E402


def make_photos(out: Path, finder, n: int, faces_per_photo: int, seed: int) -> list[str]:
    from faces_compare import reference_boxes

    folder = out / f"photos_{faces_per_photo}face"
    existing = sorted(folder.glob("*.jpg"))
    if len(existing) >= n:
        return [str(p) for p in existing[:n]]
    folder.mkdir(parents=True, exist_ok=True)
    files = wp.face_files(per_folder=10, seed=seed)
    faces = reference_boxes(finder, files)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        sizes = [float(np.exp(rng.uniform(np.log(120), np.log(700)))) for _ in range(faces_per_photo)]
        pixels, _ = wp.make_photo(rng, 3000, 4000, faces, sizes, corners=files)
        path = folder / f"photo_{i:03d}.jpg"
        path.write_bytes(wp.encode_jpeg(pixels, 90))
        paths.append(str(path))
    return paths


def stage_times(paths: list[str], finder, runner, size, fit, min_face: int, int8_finder=None) -> dict[str, float]:
    """Milliseconds per image of each stage, one thread, in order, on `paths`."""
    from dfx.faces import crop_face, crop_region, draft_scale
    from dfx.images import load_image
    from dfx.photos import _fast_full, _fast_scaled, _pil_scaled, decode_photo, region_decode_available

    def full_width(data: bytes) -> int:
        from PIL import Image
        import io

        with Image.open(io.BytesIO(data)) as image:  # header only
            return image.size[0]

    reduction = draft_scale(min_face)
    t = {k: 0.0 for k in ("read", "small_pillow", "small_simplejpeg", "find", "full_pillow", "full_simplejpeg", "crop_window", "infer",
                          "find_int8", "region_cuts")}
    faces = 0
    if int8_finder is not None:  # compiled before timing
        int8_finder.find(_fast_scaled(Path(paths[0]).read_bytes(), reduction, 1, paths[0]))
    for path in paths:
        c0 = time.perf_counter()
        data = Path(path).read_bytes()
        c1 = time.perf_counter()
        _pil_scaled(data, reduction, path)
        c2 = time.perf_counter()
        small = _fast_scaled(data, reduction, 1, path)
        c3 = time.perf_counter()
        boxes = finder.find(small, full_width(data) / small.shape[1])
        c4 = time.perf_counter()
        from dfx.images import to_rgb

        np.asarray(to_rgb(data))
        c5 = time.perf_counter()
        full = _fast_full(data, 1, path)
        c6 = time.perf_counter()
        windows = np.stack([load_image(crop_face(full, b), size, fit) for b in boxes]) if boxes else None
        c7 = time.perf_counter()
        if windows is not None:
            runner.infer(windows)
        c8 = time.perf_counter()
        faces += len(boxes)
        for key, dt in zip(t, (c1 - c0, c2 - c1, c3 - c2, c4 - c3, c5 - c4, c6 - c5, c7 - c6, c8 - c7)):
            t[key] += dt
        if int8_finder is not None:
            c9 = time.perf_counter()
            int8_finder.find(small, full_width(data) / small.shape[1])
            t["find_int8"] += time.perf_counter() - c9
        if region_decode_available() and boxes:
            photo = decode_photo(data, reduction)
            c10 = time.perf_counter()
            photo.regions([crop_region(b, photo.height, photo.width) for b in boxes])
            t["region_cuts"] += time.perf_counter() - c10
    out = {k: round(1000 * v / len(paths), 2) for k, v in t.items()}
    out["faces_per_image"] = round(faces / len(paths), 2)
    return out


def end_to_end(paths: list[str], finder, runner, size, fit, threshold: float, probability, workers: int, batch: int = 32,
               repeats: int = 3) -> dict:
    """images/s of `dfx scan`'s own pipeline (dfx.runtime.scan.pipeline.iter_results with
    --faces auto) on `paths` (files read from disk): decode pool, face windows, batches, rows.
    The median of `repeats` runs (24 photos take about a second: one run is noisy), each listed."""
    from dfx.runtime.scan.pipeline import FaceOptions, iter_results

    list(iter_results(paths[:4], runner, size=size, fit=fit, threshold=threshold, batch_size=batch, workers=workers,
                      probability=probability, faces=FaceOptions(finder, "auto")))  # warm-up: compiles the finder
    rates = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        rows = list(iter_results(paths, runner, size=size, fit=fit, threshold=threshold, batch_size=batch, workers=workers,
                                 probability=probability, faces=FaceOptions(finder, "auto")))
        rates.append(round(len(paths) / (time.perf_counter() - start), 2))
    faces = sum(r.faces or 0 for r in rows)
    decisions = [r.decision or "error" for r in rows]
    return {"images_per_s": float(np.median(rates)), "runs_images_per_s": rates, "images": len(paths), "faces_found": faces,
            "decisions": {d: decisions.count(d) for d in sorted(set(decisions))}}


def pure_inference(runner, size, batch: int = 32, seconds: float = 3.0) -> float:
    h, w = (size, size) if isinstance(size, int) else size
    x = np.random.default_rng(0).integers(0, 256, (batch, h, w, 3), dtype=np.uint8)
    runner.infer(x)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        runner.infer(x)
        n += batch
    return round(n / (time.perf_counter() - start), 1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--out", required=True)
    parser.add_argument("--images", type=int, default=24, help="photos per set (one-face and four-face sets)")
    parser.add_argument("--backend", default="auto", help="dfx scan --backend for the deepfake model")
    parser.add_argument("--workers", type=int, default=2, help="decode + face-finding threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per end-to-end row (the median is reported)")
    parser.add_argument("--min-faces", default="58,100,160", help="FinderConfig.min_face values to time end to end")
    parser.add_argument("--finder", help="float face finder ONNX (default: the bundle's, else export one into OUT)")
    parser.add_argument("--stage-images", type=int, default=8, help="photos timed stage by stage (0: none)")
    parser.add_argument("--stage-min-faces", default="58,160", help="min_face values of the stage timings")
    args = parser.parse_args(argv)

    import dataclasses

    from dfx.bundle import Bundle, tool_versions
    from dfx.faces import FACE_FINDER_INT8_ROLE, FACE_FINDER_ROLE, FaceFinder, FinderConfig
    import dfx.photos as photos
    from dfx.runtime.scan.select import choose_runner

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bundle = Bundle.open(args.bundle)
    in_bundle = bundle.files_with_role(FACE_FINDER_ROLE)
    finder_path = args.finder or (str(bundle.file(in_bundle[0])) if in_bundle else str(out / "face_finder.onnx"))
    int8_names = bundle.files_with_role(FACE_FINDER_INT8_ROLE)
    int8_path = str(bundle.file(int8_names[0])) if int8_names else None
    if not Path(finder_path).exists():
        from dfx.export.faces_export import export_face_finder

        export_face_finder(finder_path)
    finder = FaceFinder(finder_path)
    one = make_photos(out, finder, args.images, 1, seed=1)
    several = make_photos(out, finder, args.images, 4, seed=2)
    size, fit = bundle.input_size, bundle.fit
    runner, choice = choose_runner(bundle, args.backend)
    why = choice.reason
    report: dict = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(), "load_start": os.getloadavg()},
        "software": tool_versions("numpy", "pillow", "simplejpeg", "openvino", "onnxruntime"),
        "bundle": {"path": args.bundle, "input": list(size), "fit": fit, "runner": why},
        "photos": {"size": "4000x3000", "jpeg_quality": 90, "one_face": len(one), "four_faces": len(several)},
        "finder_backend": finder.backend,
        "int8_finder": int8_path is not None and bundle.manifest.get("face_finder_int8"),
        "region_cuts": photos.region_decode_available(),
        "region_decoding_extension": photos._partial_decoder() is not None,  # dfx/_jpegregion.c
    }
    with runner:
        report["pure_inference_images_per_s"] = pure_inference(runner, size)
        report["stages_ms_per_image"] = {}
        for name, paths in (("one_face", one), ("four_faces", several)):
            for min_face in [int(v) for v in args.stage_min_faces.split(",")] if args.stage_images > 0 else []:
                f = FaceFinder(finder_path, config=FinderConfig(min_face=min_face))
                q = FaceFinder(int8_path, config=FinderConfig(min_face=min_face)) if int8_path else None
                report["stages_ms_per_image"][f"{name}_min_face_{min_face}"] = stage_times(paths[:args.stage_images], f, runner, size, fit, min_face, q)
                print(name, min_face, report["stages_ms_per_image"][f"{name}_min_face_{min_face}"], flush=True)
        report["end_to_end"] = {}
        turbo, partial = photos._turbo(), photos._partial_decoder()
        for fast in (True, False):
            for min_face in [int(v) for v in args.min_faces.split(",")]:
                if not fast and min_face != 160:
                    continue
                photos.fast_jpeg_available = (lambda value=fast: value)  # the switch a user gets by (un)installing the faces extra
                photos._turbo = (lambda value=turbo if fast else None: value)  # lossless cuts come with it (PyTurboJPEG)
                photos._partial_decoder = (lambda value=partial if fast else None: value)  # and an install without dfx/_jpegregion.c
                finders = {"int8": int8_path, "float": finder_path} if int8_path else {"float": finder_path}
                for precision, model in finders.items():
                    if precision == "float" and int8_path and (not fast or min_face != 58):
                        continue  # the float finder once, at the default, for the ratio
                    f = FaceFinder(model, config=dataclasses.replace(FinderConfig(), min_face=min_face))
                    for name, paths in (("one_face", one), ("four_faces", several)):
                        key = f"{name}_min_face_{min_face}_{precision}_{'simplejpeg' if fast else 'pillow'}"
                        report["end_to_end"][key] = end_to_end(paths, f, runner, size, fit, bundle.threshold, bundle.probability, args.workers,
                                                               repeats=args.repeats)
                        print(key, report["end_to_end"][key], flush=True)
    report["machine"]["load_end"] = os.getloadavg()
    (out / "whole_photo.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0



if __name__ == "__main__":
    sys.exit(main())
