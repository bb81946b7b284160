"""`dfx demo`: the main job end to end on the embedded synthetic set, no downloads.

synth -> train -> export (fp16, int8) -> scan -> bench, each step through the same command a
user would type, so the demo proves the commands themselves. The demo model has seen only
synthetic data: it screens nothing real.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from dfx.errors import DfxError

MARKER = ".dfx-demo"


def register(sub) -> None:
    parser = sub.add_parser(
        "demo",
        help="run synth -> train -> export -> scan -> bench on synthetic data (a few minutes, no downloads)",
        description="Run the whole dfx job on an embedded synthetic real-vs-GAN set: generate it, train the "
        "default detector (seed_cnn) at a small size, export ONNX/FP16/INT8 with parity checks, scan the images, and benchmark. "
        "The resulting model has seen only synthetic data; see README for training on real faces.",
    )
    parser.add_argument("--out", default="dfx-demo", help="folder for everything the demo writes (default: ./dfx-demo)")
    parser.add_argument("--n", type=int, default=400, help="synthetic images to generate (default: 400)")
    parser.add_argument("--size", type=int, default=64, help="image and model input size in pixels (default: 64)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs (default: 10)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for data and training (default: 0)")
    parser.add_argument("--fresh", action="store_true", help="replace --out even if an earlier demo did not write it")
    parser.set_defaults(handler=run)


def _step(title: str, argv: list[str]) -> None:
    from dfx.cli import main

    print(f"\n== {title}\n$ dfx {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    code = main(argv)
    if code != 0:
        raise DfxError(f"demo step '{title}' failed (exit {code})", hint="the error above says why")
    print(f"-- {title}: done in {time.perf_counter() - start:.1f} s", flush=True)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists():
        # Replace only what an earlier demo wrote (it leaves a marker); never a user's folder.
        if not (args.fresh or (out / MARKER).is_file()):
            raise DfxError(f"{out} already exists and was not written by dfx demo", hint="pass --fresh to replace it, or --out elsewhere")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("written by dfx demo; the next dfx demo replaces this folder\n")
    data, bundle, scan = out / "data", out / "bundle", out / "scan.jsonl"
    started = time.perf_counter()
    _step("1/5 synthesize a real-vs-GAN set", ["data", "synth", str(data), "--n", str(args.n), "--size", str(args.size), "--seed", str(args.seed)])
    _step(
        "2/5 train the default detector (seed_cnn)",
        # A small set at batch 128 makes 3 steps an epoch; batch 32 gives the short run enough steps.
        ["train", str(data), "--out", str(bundle), "--architecture", "seed_cnn", "--size", str(args.size), "--train-canvas", str(args.size),
         "--epochs", str(args.epochs), "--batch-size", "32", "--warmup-epochs", "1", "--patience", str(args.epochs), "--seed", str(args.seed)],
    )
    _step("3/5 export ONNX, FP16 and INT8, with parity against Keras", ["export", str(bundle), "--fp16", "--int8"])
    _step("4/5 scan the images with the fastest backend here", ["scan", str(bundle), str(data), "--out", str(scan)])
    print("\n== 5/5 benchmark (short; the full table: dfx bench BUNDLE)", flush=True)
    from dfx.benchmarks.harness import quick_summary

    print(quick_summary(bundle, batch_size=32, duration=2.0), flush=True)
    print(f"\nDemo finished in {time.perf_counter() - started:.0f} s. Everything is under {out}/:")
    print(f"  {data}/            synthetic images (real/ and fake/<generator>/)")
    print(f"  {bundle}/          the bundle: manifest.json, model.keras, model.onnx, model.fp16.onnx,")
    print("                     model.int8.onnx (TensorRT), model.int8.cpu.onnx (CPU), calibration.json, parity.json,")
    print("                     history.json/.png")
    print(f"  {scan}     one row per image")
    print("This model has seen only synthetic data. To screen real faces, train on real data: see README.")
    return 0
