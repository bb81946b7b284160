"""Which OpenVinoRunner settings are fastest here: hint, threads, static vs dynamic batch,
uint8 vs float32 input. Interleaved with ONNX Runtime INT8 on the same file as the yardstick.

    python benchmarks/scripts/ov_tuning.py BUNDLE [--batch 32] [--duration 20] [--precision int8]

Prints one line per setting: images/s and the ratio to ORT. The runner's defaults
(runtime/openvino.py) are the winners of this script on the README's machine.
"""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--duration", type=float, default=20.0, help="timed seconds per setting, cut into --rounds slices")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--precision", choices=("fp32", "int8"), default="int8")
    parser.add_argument("--only", help="semicolon-separated setting names to keep (default: all)")
    args = parser.parse_args()

    from dfx.benchmarks.harness import BenchConfig, _input_batch, measure_inference
    from dfx.bundle import Bundle
    from dfx.runtime.runners.base import physical_cores
    from dfx.runtime.runners.openvino import OpenVinoRunner
    from dfx.runtime.runners.ort import OrtRunner
    from dfx.runtime.scan.select import plan

    bundle = Bundle.open(args.bundle)
    path = str(bundle.file(plan(bundle, "openvino", args.precision)[0].file))  # the file `dfx scan` would run
    cores = physical_cores()
    settings = {
        "default (LATENCY, static, uint8 in)": {},
        "dynamic batch": {"static_batch": False},
        "float32 input": {"uint8_input": False},
        f"LATENCY, {max(cores - 1, 1)} thread(s)": {"threads": max(cores - 1, 1)},
        "THROUGHPUT hint": {"hint": "THROUGHPUT"},
        "chunks of 8": {"sub_batch": 8},
        "chunks of 4": {"sub_batch": 4},
        "chunks of 16": {"sub_batch": 16},
    }
    if args.only:
        keep = [k.strip() for k in args.only.split(";")]
        settings = {k: v for k, v in settings.items() if k in keep or k.startswith("default")}
    runners = {f"ort-cpu {args.precision}": OrtRunner(path, precision=args.precision, input_size=bundle.input_size)}
    runners.update({name: OpenVinoRunner(path, precision=args.precision, input_size=bundle.input_size, **opts) for name, opts in settings.items()})
    for runner in runners.values():
        runner.activate()
    batch = _input_batch(None, bundle.input_size, args.batch, 0)
    stats = measure_inference(runners, batch, BenchConfig(duration=args.duration, rounds=args.rounds, warmup=2))
    base = stats[f"ort-cpu {args.precision}"]["images_per_s"]
    print(f"batch {args.batch}, {bundle.input_size[0]} px, {args.precision}, {cores} physical cores; interleaved, {args.duration:g} s each")
    for name, stat in stats.items():
        print(f"  {name:<36} {stat['images_per_s']:8.1f} images/s  p50 {stat['p50_ms']:8.1f} ms  {stat['images_per_s'] / base:5.2f}x ORT")


if __name__ == "__main__":
    main()
