"""OpenVINO against ONNX Runtime on INT8 ONNX files, at several thread counts, through dfx's
runners, interleaved (two rounds), batch 32 of random 256 px pixels. Needs no bundle, no data
and no tensorflow, so it runs on any host with onnxruntime and openvino: used to compare the
two runtimes on a CPU with VNNI/AMX (the GPU host's) against the development machine's AVX2.

    python benchmarks/scripts/int8_cpu_threads.py model.int8.cpu.onnx [model.int8.onnx ...] \
        [--threads 2,16] [--seconds 5]

Ratios are to ONNX Runtime on the first file at the same thread count.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def main() -> None:
    from dfx.benchmarks import machine
    from dfx.runtime.openvino import OpenVinoRunner
    from dfx.runtime.ort import OrtRunner

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="INT8 Q/DQ ONNX files (float32 NHWC 256x256 input)")
    parser.add_argument("--threads", default="2,16", help="comma-separated thread counts")
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per runner and round")
    args = parser.parse_args()

    print(machine.describe(machine.machine_info()), flush=True)
    batch = np.random.default_rng(0).integers(0, 256, (32, 256, 256, 3), dtype=np.uint8)
    for threads in (int(t) for t in args.threads.split(",")):
        runners = {}
        for path in args.files:
            runners[f"ORT {Path(path).name}"] = OrtRunner(path, precision="int8", threads=threads)
            runners[f"OV  {Path(path).name}"] = OpenVinoRunner(path, precision="int8", threads=threads)
        for runner in runners.values():
            runner.activate()
            runner.infer(batch)  # compile / warm up
        totals = {name: [0, 0.0] for name in runners}  # images, seconds
        for _ in range(2):
            for name, runner in runners.items():
                start = time.perf_counter()
                while time.perf_counter() - start < args.seconds:
                    began = time.perf_counter()
                    runner.infer(batch)
                    totals[name][1] += time.perf_counter() - began
                    totals[name][0] += len(batch)
        base_images, base_seconds = totals[next(iter(runners))]
        for name, (images, seconds) in totals.items():
            ratio = (images / seconds) / (base_images / base_seconds)
            print(f"threads {threads:2d}  {name:<28} {images / seconds:8.1f} images/s  {ratio:5.2f}x the first ORT row", flush=True)
        for runner in runners.values():
            runner.deactivate()


if __name__ == "__main__":
    main()
