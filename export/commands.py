"""`dfx export`: registered by dfx.cli. Heavy imports happen inside the handler."""

from __future__ import annotations

import argparse

from dfx.forms import FORMS

DESCRIPTION = """\
Turn a trained bundle into its optimized forms and prove each one against the Keras model.

Always writes model.onnx (FP32, checked against Keras at max |logit difference| <= 1e-4).
--fp16 adds model.fp16.onnx (float16 weights, float32 input/output); --int8 calibrates once
on real and GAN images and writes two Q/DQ files from those ranges: model.int8.onnx
(symmetric int8, what TensorRT builds from) and model.int8.cpu.onnx (uint8 activations, the
fast form for ONNX Runtime CPU and OpenVINO), plus calibration.json.
--engine builds TensorRT engines from them on a GPU host.
Every run writes parity.json: each form against Keras on the validation split (max and
mean logit difference, decision agreement at the bundle threshold, AUC, best threshold).
Exit status: 0 all forms within tolerance, 1 a form missed its tolerance, 2 an error."""

EPILOG = """\
tolerances: fp32 max diff <= 1e-4 and 100% agreement; fp16 >= 99.5% agreement;
int8 >= 98% agreement and AUC drop <= 0.01. Backbone bundles (clip_vit): each block's CLS
tokens too, mean cosine to the Keras tower's >= 0.9999 (fp32), 0.999 (fp16), 0.99 (int8).

examples:
  dfx export runs/faces --fp16 --int8
  dfx export runs/faces --int8 --calib data/calib --calib-count 1024 --calib-method percentile
  dfx export runs/faces --fp16 --int8 --engine --max-batch 256      (GPU host with TensorRT)"""


def register(sub) -> None:
    from dfx.export.int8 import METHODS
    from dfx.export.pipeline import ExportConfig

    d = ExportConfig.__dataclass_fields__  # defaults shown in --help come from the config
    p = sub.add_parser(
        "export",
        help="export a bundle to ONNX, FP16, calibrated INT8 and TensorRT, with a parity report",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("bundle", metavar="BUNDLE", help="the bundle folder `dfx train` wrote")
    p.add_argument("--fp16", action="store_true", help="also write model.fp16.onnx (for TensorRT and ONNX Runtime CUDA)")
    p.add_argument("--int8", action="store_true", help="also write the calibrated INT8 Q/DQ files model.int8.onnx (TensorRT) and "
                   "model.int8.cpu.onnx (CPU), and calibration.json")
    g = p.add_argument_group("INT8 calibration")
    g.add_argument("--calib", metavar="DATA", help="calibration images: a real/ + fake/ folder or a labels file "
                   "(default: the bundle's own training split, as the manifest records it)")
    g.add_argument("--calib-count", type=_positive, default=d["calib_count"].default, metavar="N",
                   help="calibration images, balanced real/fake and spread across generators (default %(default)s)")
    g.add_argument("--calib-method", choices=("auto",) + METHODS, default=d["calib_method"].default,
                   help="how activation ranges are chosen: entropy (KL divergence on 2048-bin histograms), "
                   "percentile (99.999%% of |values|) or minmax (the full observed range); auto (the default): "
                   "entropy for convolutional models, minmax for transformers (clip_vit), whose outlier channels "
                   "entropy's clipping cuts")
    g.add_argument("--calib-seed", type=int, default=d["calib_seed"].default, metavar="N",
                   help="which images the balanced sample draws (default %(default)s)")
    g.add_argument("--recalibrate", action="store_true",
                   help="ignore a matching calibration cache in the bundle and read the images again")
    g.add_argument("--quantize-first-conv", action="store_true",
                   help="let the automatic choice for model.int8.onnx quantize the first convolution too. By "
                   "default it stays float there: it reads raw pixels, where GAN traces are a pixel value or two, "
                   "and symmetric int8 halves that resolution (the uint8 CPU file always tries it)")
    g.add_argument("--smooth", type=_alpha, default=d["smooth_alpha"].default, metavar="ALPHA",
                   help="transformers (clip_vit): SmoothQuant strength, 0..1 (default %(default)s; 0 turns it off). Each "
                   "LayerNorm's outlier channels are divided down and the weights reading them scaled up to match "
                   "(exact in float), so per-tensor int8 activations keep their resolution (export/smooth.py)")
    g.add_argument("--int8-float-convs", type=int, default=None, metavar="N",
                   help="keep the first N convolutions float in both INT8 files instead of choosing N automatically (the fewest "
                   "whose int8 model agrees with fp32 on the calibration images)")
    g = p.add_argument_group("parity")
    g.add_argument("--parity", metavar="DATA", help="parity images: a real/ + fake/ folder or a labels file "
                   "(default: the bundle's validation split)")
    g.add_argument("--parity-count", type=_positive, default=d["parity_count"].default, metavar="N",
                   help="at most this many parity images, a balanced sample (default %(default)s)")
    g = p.add_argument_group("ONNX")
    g.add_argument("--opset", type=int, default=d["opset"].default, metavar="N", help="ONNX opset, 13..18 (default %(default)s)")
    g = p.add_argument_group("TensorRT (GPU hosts)")
    g.add_argument("--engine", action="store_true",
                   help="build TensorRT engines from the --fp16/--int8 ONNX files (strongly typed; needs an NVIDIA GPU "
                   "and TensorRT 10 or 11). Without them the ONNX files are still written, then it fails clearly")
    g.add_argument("--lean", action="store_true",
                   help="build version-compatible engines without the lean runtime, so the small tensorrt_lean "
                   "package can serve them")
    g.add_argument("--max-batch", type=_positive, default=d["max_batch"].default, metavar="N",
                   help="largest batch an engine accepts (default %(default)s)")
    g.add_argument("--opt-batch", type=_positive, default=None, metavar="N",
                   help="batch size TensorRT tunes kernels for (default min(32, --max-batch))")
    p.add_argument("--sign-key", metavar="PEM", help="sign the finished bundle's manifest with this Ed25519/ECDSA private key "
                   "(writes manifest.sig; readers given the public key refuse unsigned or changed bundles)")
    p.add_argument("--batch-size", type=_positive, default=d["batch_size"].default, metavar="N",
                   help="inference batch during export (default %(default)s)")
    p.set_defaults(handler=run)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _alpha(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


# Flags that only apply with another: given without it they would be silently ignored, so they
# are refused. (flag, its argparse dest, the flag it needs, the dest of that.)
NEEDS = tuple(
    (flag, flag[2:].replace("-", "_"), needs, needs[2:])
    for needs, flags in (
        (FORMS["int8"].export_flag or "--int8", ("--calib", "--calib-count", "--calib-method", "--calib-seed", "--recalibrate",
                                                  "--quantize-first-conv", "--int8-float-convs", "--smooth")),
        ("--engine", ("--lean", "--max-batch", "--opt-batch")),
    )
    for flag in flags
)


# argparse dests whose ExportConfig field has another name (for the defaults check_flags compares with)
CONFIG_FIELD = {"int8_float_convs": "float_convs", "smooth": "smooth_alpha"}


def check_flags(args: argparse.Namespace) -> None:
    """Refuse a flag that does not apply to what was asked (e.g. --calib without --int8). A flag
    counts as given when its value differs from the default `dfx export --help` shows."""
    from dfx.errors import DfxError
    from dfx.export.pipeline import ExportConfig

    fields = ExportConfig.__dataclass_fields__
    for flag, dest, needs, needed in NEEDS:
        value = getattr(args, dest, None)
        field = fields.get(CONFIG_FIELD.get(dest, dest))
        if value not in (None, False) and (field is None or value != field.default) and not getattr(args, needed, False):
            raise DfxError(f"{flag} applies only with {needs}", hint=f"add {needs}, or drop {flag}")


def run(args: argparse.Namespace) -> int:
    check_flags(args)
    signing_key = None
    if getattr(args, "sign_key", None):
        from dfx.signing import load_private_key

        signing_key = load_private_key(args.sign_key)  # a bad key fails now, not after minutes of export
    from dfx.export import parity_report
    from dfx.export.pipeline import ExportConfig, export_bundle

    config = ExportConfig(
        fp16=args.fp16,
        int8=args.int8,
        calib=args.calib,
        calib_count=args.calib_count,
        calib_method=args.calib_method,
        calib_seed=args.calib_seed,
        recalibrate=args.recalibrate,
        quantize_first_conv=args.quantize_first_conv,
        smooth_alpha=args.smooth,
        float_convs=args.int8_float_convs,
        parity=args.parity,
        parity_count=args.parity_count,
        opset=args.opset,
        engine=args.engine,
        lean=args.lean,
        max_batch=args.max_batch,
        opt_batch=args.opt_batch,
        batch_size=args.batch_size,
    )
    report = export_bundle(args.bundle, config)
    if signing_key is not None:
        from dfx.bundle import Bundle

        print(f"signed manifest.json with key {Bundle.open(args.bundle, verify=False).sign(signing_key)} (manifest.sig)")
    print(parity_report.markdown_table(report))
    print(f"\nparity on {report['images']} images from {report['source']}; threshold {report['threshold']:.4g}")
    problems = parity_report.failures(report)
    if problems:
        print("\ndfx export: these forms miss their tolerance:")
        for line in problems:
            print(f"  {line}")
        return 1
    return 0
