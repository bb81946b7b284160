"""`dfx scan --engine ray` beside `dfx scan` on one machine, and the per-stage rates the scaling
model in benchmarks/README.md ("Scale-out on Ray") is built from.

    nice -n 10 python benchmarks/ray_scaling.py BUNDLE IMAGES [--rounds 2] [--json FILE]

1. end to end, same run: `dfx scan` and `dfx scan --engine ray` alternate (fresh processes,
   each timed by its own summary: images/s over the scan, Ray's start-up reported apart), and
   every image's decision and logit are compared;
2. stages, in one Ray instance: the decode stage alone (one decode task at a time), then the
   inference stage alone on those decoded pixels with 1 actor x 1 thread, 2 actors x 1 thread
   and 1 actor x 2 threads; the bytes each image puts through the object store.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _cpu() -> str:
    from dfx.runtime.runners.base import cpu_model

    return cpu_model()


def _scan(cmd: list[str]) -> dict[str, Any]:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stderr.strip().splitlines()[-1])


def end_to_end(bundle: str, images: str, rounds: int, backend: str, work: Path) -> dict[str, Any]:
    from dfx.runtime.ray.scan import read_shards
    from dfx.runtime.scan.results import read_results

    base = [sys.executable, "-m", "dfx", "scan", bundle, images, "--backend", backend]
    engines = ["local", "ray"]
    runs: list[dict[str, Any]] = []
    for r in range(rounds):
        for engine in engines[r % len(engines):] + engines[: r % len(engines)]:  # rotate who goes first
            out = work / f"{engine}-{r}" / ("rows.jsonl" if engine == "local" else "shards")
            out.parent.mkdir(parents=True, exist_ok=True)
            summary = _scan(base + ["--out", str(out)] + (["--engine", "ray"] if engine == "ray" else []))
            summary["engine"] = engine
            summary["rows"] = str(out)
            runs.append(summary)
            print(f"  {engine:9s} round {r}: {summary['images_per_s']:6.1f} images/s ({summary['images']} images, "
                  f"{summary['seconds']:.1f} s" + (f", Ray start-up {summary['ray_startup_s']:.1f} s" if engine != "local" else "") + ")",
                  flush=True)
    local = {row.path: row for row in read_results(next(r["rows"] for r in runs if r["engine"] == "local"))}
    remote = {row["path"]: row for row in read_shards(next(r["rows"] for r in runs if r["engine"] == "ray"))}
    same = sum(1 for p, row in local.items() if p in remote and remote[p]["decision"] == row.decision and remote[p]["error"] == row.error)
    diffs = [abs(remote[p]["logit"] - row.logit) for p, row in local.items() if p in remote and row.logit is not None and remote[p]["logit"] is not None]
    rate = {e: sorted(r["images_per_s"] for r in runs if r["engine"] == e) for e in engines}
    median = {e: v[len(v) // 2] for e, v in rate.items()}
    return {
        "runs": runs,
        "images": len(local),
        "same_decision_and_error": same,
        "same_paths": local.keys() == remote.keys(),
        "max_abs_logit_diff": max(diffs) if diffs else None,
        "median_images_per_s": median,
        "ray_vs_local": round(median["ray"] / median["local"], 3) if median["local"] else None,
    }


def stages(bundle_dir: str, images: str, backend: str, rounds: int = 2) -> dict[str, Any]:
    import ray
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    from dfx.bundle import Bundle
    from dfx.runtime.ray.scan import InferActor, bundle_payload, decode_batch, expand_inputs, start_ray

    bundle = Bundle.open(bundle_dir)
    # Three passes over the files: long enough that worker start-up (imports, model load) is a
    # small part of each timing; a warm-up pass first starts the workers.
    files = expand_inputs([images]).files * 3
    startup = start_ray(None, num_cpus=os.cpu_count())
    ray.data.DataContext.get_current().enable_progress_bars = False
    result: dict[str, Any] = {"ray_startup_s": round(startup, 2), "images": len(files)}
    encoded = sum(os.path.getsize(f) for f in files) / len(files)
    h, w = bundle.input_size
    result["bytes_per_image"] = {"encoded_read": round(encoded), "decoded_pixels": h * w * 3, "row_out_approx": 400}

    result["decode_images_per_s"] = {}
    ray.data.read_binary_files(files[:64], include_paths=True).map_batches(
        decode_batch, batch_size=32, batch_format="numpy", fn_kwargs={"size": (h, w), "fit": bundle.fit, "scheme": ""}).count()
    for tasks in (1, 2) * rounds:
        began = time.perf_counter()
        decoded = (
            ray.data.read_binary_files(files, include_paths=True)
            .map_batches(decode_batch, batch_size=32, batch_format="numpy", compute=TaskPoolStrategy(size=tasks),
                         fn_kwargs={"size": (h, w), "fit": bundle.fit, "scheme": ""})
            .materialize()
        )
        seconds = time.perf_counter() - began
        result["decode_images_per_s"].setdefault(f"{tasks} task(s)", []).append(round(len(files) / seconds, 1))
        print(f"  decode stage, {tasks} task(s): {round(len(files) / seconds, 1)} images/s (incl. reading and object-store puts)", flush=True)

    payload = ray.put(bundle_payload(bundle))
    result["infer"] = {}
    for actors, threads in ((1, 1), (2, 1), (1, 2)) * rounds:  # rounds interleave: outside load hits all alike
        began = time.perf_counter()
        rows = decoded.map_batches(
            InferActor, batch_size=32, batch_format="numpy", compute=ActorPoolStrategy(size=actors), num_cpus=threads,
            fn_constructor_kwargs={"bundle_files": payload, "backend": backend, "precision": None, "threads": threads, "threshold": None},
        ).count()
        seconds = time.perf_counter() - began
        key = f"{actors}x{threads}"
        result["infer"].setdefault(key, []).append(round(rows / seconds, 1))
        print(f"  inference stage, {actors} actor(s) x {threads} thread(s): {result['infer'][key][-1]} images/s "
              f"(incl. actor start and model load)", flush=True)
    ray.shutdown()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    parser.add_argument("images")
    parser.add_argument("--rounds", type=int, default=2, help="end-to-end pairs (default 2)")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--skip-stages", action="store_true")
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--stage-rounds", type=int, default=2, help="interleaved rounds of the stage rates (default 2)")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    report: dict[str, Any] = {"cpu": _cpu(), "cpus": os.cpu_count(), "load_start": os.getloadavg(),
                              "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    print(f"{report['cpu']}, {report['cpus']} CPUs, load {report['load_start'][0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="dfx-ray-bench-") as work:
        if not args.skip_e2e:
            print("end to end (same run):", flush=True)
            report["end_to_end"] = end_to_end(args.bundle, args.images, args.rounds, args.backend, Path(work))
            e2e = report["end_to_end"]
            print(f"  ray / local = {e2e['ray_vs_local']} (medians {e2e['median_images_per_s']}); same decision and error on "
                  f"{e2e['same_decision_and_error']} of {e2e['images']} images; max |logit diff| {e2e['max_abs_logit_diff']}", flush=True)
        if not args.skip_stages:
            print("stages:", flush=True)
            report["stages"] = stages(args.bundle, args.images, args.backend, args.stage_rounds)
    report["load_end"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
