"""What reading C2PA manifests costs a scan: the `dfx scan` pipeline over the same files with
provenance off and on, in alternating passes (so load from elsewhere hits both alike), plus the
per-image cost of the read path alone beside the pixel decode.

    python benchmarks/provenance_overhead.py BUNDLE DIR [--pairs 4] [--backend ort-cpu]

Prints one JSON object: per pass images/s (wall) and CPU seconds per image (this process, all
threads: less sensitive to other processes than wall time), the on/off ratios (median of the
pairs), and the microbenchmark. Needs the `c2pa` extra.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from dfx.runtime.runners.base import cpu_model  # the one CPU name every report uses



def main(argv: list[str] | None = None) -> int:
    from dfx.bundle import Bundle
    from dfx.images import iter_image_files, load_image, read_bytes
    from dfx.runtime.scan.pipeline import iter_results
    from dfx.runtime.provenance.c2pa import ProvenanceReader
    from dfx.runtime.provenance.hook import ProvenanceHook
    from dfx.runtime.scan.select import choose_runner

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("images")
    parser.add_argument("--pairs", type=int, default=4, help="off/on pass pairs (default 4)")
    parser.add_argument("--backend", default="ort-cpu")
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--limit", type=int, help="scan only the first N files per pass (more, shorter pairs)")
    args = parser.parse_args(argv)

    bundle = Bundle.open(args.bundle)
    files = iter_image_files([args.images])
    if args.limit:  # spread over real and fake: every k-th file
        files = files[:: max(1, len(files) // args.limit)][: args.limit]
    reader = ProvenanceHook(ProvenanceReader())
    runner, reason = choose_runner(bundle, args.backend, args.precision)
    common = dict(size=bundle.input_size, fit=bundle.fit, threshold=bundle.threshold, batch_size=args.batch)
    passes: list[dict] = []
    with runner:
        for _ in iter_results(files[: args.batch], runner, **common):  # warm-up
            pass
        for pair in range(args.pairs):
            for on in ((False, True) if pair % 2 == 0 else (True, False)):
                wall, cpu = time.perf_counter(), time.process_time()
                rows = list(iter_results(files, runner, **common, hook=reader if on else None))
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                states = {r.c2pa for r in rows}
                passes.append({"pair": pair, "provenance": on, "images": len(rows), "images_per_s": round(len(rows) / wall, 2),
                               "cpu_ms_per_image": round(cpu / len(rows) * 1e3, 3), "c2pa_states": sorted(map(str, states))})
                print(json.dumps(passes[-1]), file=sys.stderr, flush=True)

    def ratio(key: str, pair: int) -> float:
        off = next(p[key] for p in passes if p["pair"] == pair and not p["provenance"])
        on = next(p[key] for p in passes if p["pair"] == pair and p["provenance"])
        return on / off

    # The read path alone, per image, interleaved with the decode it sits beside.
    sample = files[:200]
    datas = [read_bytes(f) for f in sample]
    read_s = decode_s = 0.0
    for _ in range(3):
        began = time.perf_counter()
        for data in datas:
            reader.read(data)
        read_s += time.perf_counter() - began
        began = time.perf_counter()
        for data in datas:
            load_image(data, bundle.input_size, bundle.fit)
        decode_s += time.perf_counter() - began
    n = 3 * len(datas)
    report = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        "backend": reason,
        "files": len(files),
        "passes": passes,
        "rate_on_over_off_median": round(statistics.median(ratio("images_per_s", p) for p in range(args.pairs)), 3),
        "cpu_per_image_on_over_off_median": round(statistics.median(ratio("cpu_ms_per_image", p) for p in range(args.pairs)), 3),
        "read_provenance_ms_per_image": round(read_s / n * 1e3, 4),
        "decode_ms_per_image": round(decode_s / n * 1e3, 4),
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
