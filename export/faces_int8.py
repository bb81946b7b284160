"""The face finder in INT8: BlazeFace quantised on canvases that hold real faces, kept only when
it finds what the float finder finds.

Finding faces is most of a whole photo's cost (docs/whole-photos.md): on a 12 MP photo the
float finder's first pyramid level alone is 1.3 MP at `min_face` 60. ONNX Runtime's static
quantiser writes Q/DQ pairs (per-channel s8 weights, u8 activations, the same format as the
detector's `model.int8.cpu.onnx`); OpenVINO runs them as INT8 kernels.

Calibration needs faces: a face drives the classifier's last layers far above anything a
background does, and ranges measured without one would clip exactly the scores that matter.
The canvases are therefore the export's calibration images (real class) pasted onto a grey,
noisy background at the face widths the pyramid shows the network (20-80 px), or, for images
that are already whole photos, the photo itself at 640 px. The same canvases then compare the two
finders (`agreement`); `add_to_bundle` keeps the INT8 file only when it is vouched.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

CANVAS = 320  # px: one calibration canvas (a multiple of 32, as the network needs)
PHOTO_SIDE = 640  # px: long side a whole photo is shown at
FACE_FRACTION = 0.6  # a face crop holds its face in the middle ~60% of its width (dfx.faces.CROP_MARGIN)
# Vouched: the float finder found at least MIN_FACES faces on the canvases, the INT8 finder found
# at least AGREEMENT of them (IoU >= 0.5) and added at most EXTRA as many others.
MIN_FACES = 20
AGREEMENT = 0.95
EXTRA = 0.05


def calibration_canvases(paths: Sequence[str], count: int = 48, seed: int = 0) -> list[np.ndarray]:
    """`count` uint8 canvases built from `paths` (deterministic for the seed); undecodable
    files are passed over."""
    from PIL import Image

    from dfx.images import ImageError, to_rgb

    rng = np.random.default_rng(seed)
    order = [paths[i] for i in rng.permutation(len(paths))] if paths else []
    canvases: list[np.ndarray] = []
    cursor = 0
    while len(canvases) < count and cursor < len(order) * 3:
        noise = rng.uniform(0, 255, (CANVAS // 16, CANVAS // 16, 3)).astype(np.uint8)
        canvas = (np.asarray(Image.fromarray(noise).resize((CANVAS, CANVAS), Image.Resampling.BICUBIC), np.float32) * 0.4
                  + 128 * 0.6)
        pasted = 0
        for _ in range(int(rng.integers(1, 4))):
            path = order[cursor % len(order)]
            cursor += 1
            try:
                image = to_rgb(path)
            except ImageError:
                continue
            if max(image.size) > 1024:  # a whole photo: shown as it is, smaller
                scale = PHOTO_SIDE / max(image.size)
                photo = image.resize((max(32, round(image.size[0] * scale)), max(32, round(image.size[1] * scale))), Image.Resampling.BILINEAR)
                canvases.append(np.asarray(photo))
                pasted = -1
                break
            face = float(np.exp(rng.uniform(np.log(20), np.log(80))))
            width = max(8, round(face / FACE_FRACTION))
            height = max(8, round(width * image.size[1] / image.size[0]))
            if width >= CANVAS or height >= CANVAS:
                continue
            x, y = int(rng.integers(0, CANVAS - width)), int(rng.integers(0, CANVAS - height))
            canvas[y:y + height, x:x + width] = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), np.float32)
            pasted += 1
        if pasted > 0:
            canvases.append(np.clip(canvas, 0, 255).astype(np.uint8))
    return canvases[:count]


def quantize_face_finder(float_model: str | os.PathLike, out: str | os.PathLike, canvases: Sequence[np.ndarray]) -> Path:
    """Static INT8 (Q/DQ) of the float finder, calibrated on `canvases`. Returns `out`."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    from dfx.faces import finder_input

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = iter([{"input": finder_input(c)} for c in canvases])

        def get_next(self):
            return next(self._items, None)

    out = Path(out)
    quantize_static(str(float_model), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
    return out


def agreement(float_model: str | os.PathLike, int8_model: str | os.PathLike, canvases: Sequence[np.ndarray]) -> dict:
    """What the INT8 finder finds of the float finder's faces on `canvases` (each searched whole
    with the shipped pyramid and second look, smallest face 20 px)."""
    from dfx.faces import FaceFinder, FinderConfig

    config = FinderConfig(min_face=20)
    reference, candidate = FaceFinder(float_model, config=config), FaceFinder(int8_model, config=config)
    faces = matched = extra = 0
    for canvas in canvases:
        want, got = reference.find(canvas), candidate.find(canvas)
        hits = sum(any(w.iou(g) >= 0.5 for g in got) for w in want)
        faces += len(want)
        matched += hits
        extra += sum(not any(g.iou(w) >= 0.5 for w in want) for g in got)
    share = matched / faces if faces else 0.0
    vouched = faces >= MIN_FACES and share >= AGREEMENT and extra <= EXTRA * faces
    if faces < MIN_FACES:
        why = f"the float finder found only {faces} faces on the calibration canvases (needs {MIN_FACES})"
    elif not vouched:
        why = f"INT8 found {matched} of {faces} faces (needs {AGREEMENT:.0%}) with {extra} others (at most {EXTRA:.0%})"
    else:
        why = f"INT8 found {matched} of {faces} faces, {extra} others"
    return {"canvases": len(canvases), "faces": faces, "matched": matched, "extra": extra,
            "agreement": round(share, 4), "vouched": vouched, "reason": why}


def add_to_bundle(bundle, image_paths: Sequence[str], log) -> str | None:
    """Quantise the bundle's float finder on canvases made from `image_paths` (the export's real
    calibration images) and register `face_finder.int8.onnx` when `agreement` vouches for it;
    otherwise leave (and log) the float finder alone. Returns the file name or None."""
    from dfx.bundle import tool_versions
    from dfx.faces import FACE_FINDER_FILE, FACE_FINDER_INT8_FILE, FACE_FINDER_INT8_ROLE

    target = Path(bundle.root) / FACE_FINDER_INT8_FILE
    if bundle.has(FACE_FINDER_INT8_FILE):  # an earlier export's: replaced, or dropped if no longer vouched
        bundle.remove_file(FACE_FINDER_INT8_FILE)
    canvases = calibration_canvases(list(image_paths))
    if not canvases:
        log("note: no INT8 face finder (no calibration image decoded); the float finder runs")
        return None
    float_model = bundle.verify(FACE_FINDER_FILE)
    quantize_face_finder(float_model, target, canvases)
    record = agreement(float_model, target, canvases)
    bundle.manifest["face_finder_int8"] = record
    if not record["vouched"]:
        target.unlink(missing_ok=True)
        log(f"note: INT8 face finder not used: {record['reason']}; the float finder runs")
        return None
    bundle.add_file(target.name, role=FACE_FINDER_INT8_ROLE, tools=tool_versions("onnxruntime", "onnx"),
                    calibration=f"{record['canvases']} canvases from the export's real calibration images")
    log(f"face finder {target.name} ({FACE_FINDER_INT8_ROLE}): {record['reason']} on {record['canvases']} calibration canvases")
    return target.name
