"""Why the bundle has two INT8 files: ONNX Runtime CPU and OpenVINO on TensorRT's symmetric
`model.int8.onnx` (int8 activations, s8s8) against the CPU twin `model.int8.cpu.onnx` (uint8
activations, u8s8), both from the same calibration, timed interleaved through dfx's runners on
one batch of real images. Also prints each file's decision agreement with FP32 on those images.

    python benchmarks/scripts/int8_u8_vs_s8.py BUNDLE IMAGES_DIR [--batch 32] [--seconds 10]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    from dfx.bundle import Bundle
    from dfx.images import iter_image_files, load_image
    from dfx.runtime.openvino import OpenVinoRunner, available
    from dfx.runtime.ort import OrtRunner

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("images")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()

    bundle = Bundle.open(args.bundle)
    if not bundle.files_with_role("onnx-cpu-int8"):
        raise SystemExit(f"{args.bundle} has no model.int8.cpu.onnx: run `dfx export {args.bundle} --int8` again")
    files = iter_image_files([args.images])[:: 10][: args.batch]
    batch = np.stack([load_image(f, bundle.input_size, bundle.fit) for f in files])
    paths = {"fp32": bundle.file("model.onnx"), "s8s8 model.int8.onnx": bundle.file("model.int8.onnx"),
             "u8s8 model.int8.cpu.onnx": bundle.file("model.int8.cpu.onnx")}

    def rate(runner) -> tuple[float, np.ndarray]:
        """(images/s of the dfx runner on the batch for --seconds, its logits)."""
        with runner:
            logits = runner.infer(batch)
            start, done = time.perf_counter(), 0
            while time.perf_counter() - start < args.seconds:
                runner.infer(batch)
                done += len(batch)
            return done / (time.perf_counter() - start), logits

    with OrtRunner(str(paths["fp32"]), precision="fp32") as reference:
        fp32 = reference.infer(batch) >= bundle.threshold
    for round_ in range(2):  # interleaved twice, so drift hits both files alike
        for name, path in list(paths.items())[1:]:
            runners = [("ORT", OrtRunner(str(path), precision="int8"))]
            if available():
                runners.append(("OV ", OpenVinoRunner(str(path), precision="int8")))
            for label, runner in runners:
                speed, logits = rate(runner)
                agree = np.mean((logits >= bundle.threshold) == fp32)
                print(f"round {round_ + 1}  {label} {name:<26} {speed:7.1f} images/s  (batch {len(batch)}; "
                      f"agrees with fp32 on {agree:.0%} of them)", flush=True)


if __name__ == "__main__":
    main()
