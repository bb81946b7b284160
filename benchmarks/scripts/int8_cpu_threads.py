"""ONNX Runtime and OpenVINO (when installed) on INT8 ONNX files, at one or more thread counts,
through dfx's runners and the bench's interleaved timing (dfx.benchmarks.harness), batch 32.
Needs no bundle and no tensorflow, so it also runs on hosts without them (the GPU host's
VNNI/AMX CPU in benchmarks/README.md). Pixels: real images from --images, else random.

    python benchmarks/scripts/int8_cpu_threads.py model.int8.cpu.onnx [model.int8.onnx ...] \
        [--threads 2,16] [--seconds 5] [--images DIR]

Ratios are to ONNX Runtime on the first file at the same thread count.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    from dfx.benchmarks import machine
    from dfx.benchmarks.harness import BenchConfig, _input_batch, measure_inference
    from dfx.images import FIT_POLICIES, iter_image_files, load_many
    from dfx.runtime.runners.openvino import OpenVinoRunner, available
    from dfx.runtime.runners.ort import OrtRunner

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="INT8 Q/DQ ONNX files (float32 NHWC input, 0..255)")
    parser.add_argument("--threads", default="2", help="comma-separated thread counts (default 2)")
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per runner, over 2 interleaved rounds")
    parser.add_argument("--images", metavar="DIR", help="time on these images (decoded at --size) instead of random pixels")
    parser.add_argument("--size", type=int, default=256, help="input side in pixels (default 256)")
    parser.add_argument("--fit", choices=FIT_POLICIES, default="crop", help="how --images are fitted (default crop, dfx train's)")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()

    print(machine.describe(machine.machine_info()), flush=True)
    size = (args.size, args.size)
    sample = list(load_many(iter_image_files([args.images])[: args.batch], size, args.fit, progress=False)[0]) if args.images else None
    batch = _input_batch(sample, size, args.batch, seed=0)
    config = BenchConfig(duration=args.seconds, rounds=2, warmup=1)
    for threads in (int(t) for t in args.threads.split(",")):
        runners = {}
        for path in args.files:
            runners[f"ORT {Path(path).name}"] = OrtRunner(path, precision="int8", threads=threads)
            if available():
                runners[f"OV  {Path(path).name}"] = OpenVinoRunner(path, precision="int8", threads=threads)
        for runner in runners.values():
            runner.activate()
        try:
            stats = measure_inference(runners, batch, config)
        finally:
            for runner in runners.values():
                runner.deactivate()
        base = stats[next(iter(runners))]["images_per_s"]
        for name, stat in stats.items():
            print(f"threads {threads:2d}  {name:<28} {stat['images_per_s']:8.1f} images/s  "
                  f"{stat['images_per_s'] / base:5.2f}x the first ORT row  (batch {args.batch})", flush=True)


if __name__ == "__main__":
    main()
