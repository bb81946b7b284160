"""INT8 CPU throughput of several bundles at the same input size, interleaved in one process
(issue #10's rule: the default architecture must run INT8 at >= half the seed CNN's rate).

    python benchmarks/scripts/arch_int8_speed.py BUNDLE_A BUNDLE_B [--backends ort-cpu,openvino]

Each bundle's INT8 file runs on the same random batch (uint8, the bundle's input size) through
the runner `dfx scan` would build; rounds alternate between bundles so load changes hit both.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+")
    parser.add_argument("--backends", default="ort-cpu,openvino")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per bundle, backend and round")
    args = parser.parse_args()

    from dfx.bundle import Bundle
    from dfx.runtime.runners.base import cpu_model as cpu_name
    from dfx.runtime.scan.select import choose_runner

    runners = {}
    for path in args.bundles:
        bundle = Bundle.open(path)
        for backend in args.backends.split(","):
            runner, _ = choose_runner(bundle, backend, "int8")
            runner.activate()
            h, w = bundle.input_size
            batch = np.random.default_rng(0).integers(0, 256, (args.batch, h, w, 3), dtype=np.uint8)
            runner.infer(batch)  # warm-up (compiles)
            runners[(bundle.manifest.get("architecture", path), backend)] = (runner, batch, [])
    for _ in range(args.rounds):
        for (name, backend), (runner, batch, rates) in runners.items():
            done, start = 0, time.perf_counter()
            while time.perf_counter() - start < args.seconds:
                runner.infer(batch)
                done += len(batch)
            rates.append(done / (time.perf_counter() - start))
    print(f"CPU: {cpu_name()}; batch {args.batch}; median of {args.rounds} interleaved rounds of {args.seconds} s")
    print("| architecture | backend | images/s |")
    print("|---|---|---|")
    for (name, backend), (runner, _, rates) in runners.items():
        print(f"| {name} | {backend} int8 | {np.median(rates):.1f} |")
        runner.deactivate()


if __name__ == "__main__":
    main()
