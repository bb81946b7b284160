"""The harness behind `dfx bench`: every backend, one process, interleaved, against Keras.

    rows = run(bundle_dir, BenchConfig(...))["rows"]

How a figure is made (so that ratios between rows are fair on a shared or noisy machine):
- every runner is built through dfx.runtime.scan.select (exactly what `dfx scan` runs), activated
  once, and kept active for the whole run; the Keras reference calls `model.predict(x,
  batch_size=N, verbose=0)`, as users call it (not predict_on_batch);
- per batch size, each runner first runs `warmup` untimed batches, then the timed budget
  (`duration` seconds or `iters` batches per row) is cut into `rounds` slices and the backends
  take turns slice by slice, so a burst of load from elsewhere hits every row alike;
- a row's images/s is images / total timed seconds; p50/p95/p99 are per-batch latencies;
  `ratio_vs_keras` divides by the Keras row of the same batch size from the same run.
End to end (`images=DIR`): the same runners behind dfx.runtime.scan.pipeline.iter_results (the
`dfx scan` pipeline: threaded JPEG decode + resize + batching), files cycled for the same
budget; with the `c2pa` extra also an `e2e+c2pa` row per backend, the same pipeline reading
each file's C2PA manifest as `dfx scan` does by default, in slices alternating with the plain
e2e ones (`vs_e2e_off`: its rate over the plain e2e rate). The peak memory of `dfx scan` on ONNX Runtime is measured in a fresh subprocess.
Against a second bundle (`against=DIR`, `dfx bench --against`): the same backends run that
bundle too, in the same interleaved slices (each at its own input size); its rows carry
`against: true`, and each of the bundle's rows gets `ratio_vs_against`, its rate over the other
bundle's at the same backend and batch size. So "at least as fast as the 256 px seed CNN" is
one run on one machine.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from dfx.benchmarks import peer
from dfx.bundle import ONNX_ROLES, Bundle
from dfx.errors import DfxError
from dfx.runtime.runners.base import Runner
from dfx.runtime.runners.keras import KerasRunner

# bench backend name -> (dfx.runtime.scan.select backend, precision). "keras" is handled apart.
BACKENDS: dict[str, tuple[str, str]] = {
    "keras": ("keras", "fp32"),
    "ort-fp32": ("ort-cpu", "fp32"),
    "ort-int8": ("ort-cpu", "int8"),
    "ov-fp32": ("openvino", "fp32"),
    "ov-int8": ("openvino", "int8"),
    "ov-bf16": ("openvino", "bf16"),  # model.onnx in bfloat16: only on CPUs with AVX512-BF16 / AMX
    "ort-cuda-fp32": ("ort-cuda", "fp32"),
    "ort-cuda-fp16": ("ort-cuda", "fp16"),
    "trt-fp16": ("trt", "fp16"),
    "trt-int8": ("trt", "int8"),
}
ALIASES = {"ort-cpu-fp32": "ort-fp32", "ort-cpu-int8": "ort-int8", "openvino-fp32": "ov-fp32", "openvino-int8": "ov-int8", "openvino-bf16": "ov-bf16"}
DEFAULT_BATCH_SIZES = (1, 8, 32, 128)


class BenchError(DfxError):
    """A bench cannot run as asked (unknown backend, nothing runnable, bad option)."""


@dataclass(frozen=True)
class BenchConfig:
    # None: every backend this machine and bundle can run; else names from BACKENDS.
    backends: tuple[str, ...] | None = None
    # Images per inference call; latency is per batch, throughput per image.
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    # Timed seconds per row (split over `rounds`); ignored when `iters` is set.
    duration: float = 4.0
    # Timed batches per row instead of a duration (reproducible work, not reproducible time).
    iters: int | None = None
    # Untimed batches per row first: compiles shapes, fills caches, starts thread pools.
    warmup: int = 2
    # Slices per row, taken in turn by all backends, so load from elsewhere hits rows alike.
    rounds: int = 4
    # A folder of images for the end-to-end rows (decode + inference via the scan pipeline).
    images: str | None = None
    # Batch size of the end-to-end rows (`dfx scan --batch` default).
    e2e_batch_size: int = 32
    # Measure `dfx scan` peak memory (ORT, fresh process) when `images` is given.
    scan_memory: bool = True
    # Graph work + machine microbenchmarks, and each row's fraction of the attainable rate.
    roofline: bool = True
    # Seconds per machine microbenchmark (fp32 GEMM x2, int8 GEMM, copy).
    roofline_seconds: float = 1.0
    # Inference threads for CPU backends (None: physical cores, the runners' default).
    threads: int | None = None
    # Seed of the random pixels used when no `images` are given.
    seed: int = 0
    # With `images`: also time the e2e rows with C2PA provenance read (needs the `c2pa` extra).
    provenance: bool = True
    # With `images`: whole photos as `dfx scan` treats them (--faces, --no-face, --min-face):
    # photos are searched for faces and each face is a model window.
    faces: str = "auto"
    no_face: str = "no_face"
    min_face: int | None = None
    # A second bundle timed beside this one (same backends, interleaved): rows `against: true`.
    against: str | None = None
    # The auto form against ORT fp32 and, when it runs on OpenVINO, OpenVINO's own benchmark_app
    # on the same file before and after the rows (benchmarks/peer.py).
    peer: bool = True
    peer_seconds: float = 8.0  # benchmark_app's -t per run


AGAINST = "against:"  # key prefix of the second bundle's runners while they are timed with the bundle's


# ---- backends ------------------------------------------------------------------------------------
def normalize(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    out = []
    for raw in names:
        name = ALIASES.get(raw.strip().lower(), raw.strip().lower())
        if not name:
            continue
        if name not in BACKENDS:
            raise BenchError(f"unknown bench backend {raw!r}", hint=f"choose from {', '.join(BACKENDS)}")
        if name not in out:
            out.append(name)
    return tuple(out)


class KerasPredictRunner(KerasRunner):
    """The Keras reference as users call it: `model.predict(x, batch_size=len(x), verbose=0)`
    (KerasRunner itself uses predict_on_batch for small batches)."""

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self._model.predict(batch.astype(np.float32), batch_size=len(batch), verbose=0)


def plan_backends(bundle: Bundle, wanted: tuple[str, ...] | None) -> tuple[list[str], dict[str, str]]:
    """(the backends to run, {backend: why it is skipped}). Asked-for backends that cannot run
    are skipped with their reason, not fatal: one missing form must not lose the other rows."""
    from dfx.runtime.scan import select

    names = list(wanted) if wanted else list(BACKENDS)
    run, skipped = [], {}
    for name in names:
        backend, precision = BACKENDS[name]
        if name == "keras":
            if importlib.util.find_spec("tensorflow") is None:
                skipped[name] = "tensorflow not installed (pip install 'dfx[train]')"
            elif not bundle.files_with_role("keras"):
                skipped[name] = "the bundle has no Keras model"
            else:
                run.append(name)
            continue
        try:
            select.plan(bundle, backend, precision)
        except DfxError as exc:
            skipped[name] = str(exc)
            continue
        run.append(name)
    return run, skipped


def make_runner(bundle: Bundle, name: str, threads: int | None) -> tuple[Runner, str]:
    """(the runner, the bundle file it runs)."""
    from dfx.runtime.scan.select import choose_runner

    if name == "keras":
        keras_file = bundle.files_with_role("keras")[0]
        return KerasPredictRunner(os.fspath(bundle.file(keras_file)), input_size=bundle.input_size, name="keras-predict"), keras_file
    backend, precision = BACKENDS[name]
    runner, choice = choose_runner(bundle, backend, precision, threads=threads)
    return runner, choice.file


# ---- measuring -----------------------------------------------------------------------------------
def _percentiles(latencies_s: list[float]) -> dict[str, float]:
    ms = np.asarray(latencies_s) * 1000.0
    p50, p95, p99 = np.percentile(ms, [50, 95, 99]) if ms.size else (float("nan"),) * 3
    return {"p50_ms": round(float(p50), 3), "p95_ms": round(float(p95), 3), "p99_ms": round(float(p99), 3)}


def _input_batch(images: list[np.ndarray] | None, size: tuple[int, int], batch: int, seed: int) -> np.ndarray:
    """Real decoded images (tiled) when given, else random pixels: speed does not depend on them."""
    if images:
        return np.ascontiguousarray(np.stack([images[i % len(images)] for i in range(batch)]))
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (batch, size[0], size[1], 3), dtype=np.uint8)


def measure_inference(
    runners: dict[str, Runner], batch: np.ndarray | dict[str, np.ndarray], config: BenchConfig, progress: Callable[[], None] = lambda: None
) -> dict[str, dict[str, Any]]:
    """Interleaved timing of several active runners on one batch (or a batch per runner, for
    bundles of different input sizes); {name: stats}."""
    batches = batch if isinstance(batch, dict) else {name: batch for name in runners}
    latencies: dict[str, list[float]] = {name: [] for name in runners}
    errors: dict[str, str] = {}
    for name, runner in runners.items():
        try:
            for _ in range(max(config.warmup, 1)):
                runner.infer(batches[name])
        except Exception as exc:  # one failing backend becomes an error row, the others go on
            errors[name] = f"{type(exc).__name__}: {exc}"
    live = [name for name in runners if name not in errors]
    rounds = max(config.rounds, 1)
    for round_index in range(rounds):
        # Rotate the order each round: no backend always runs right after the same neighbour.
        shift = round_index % max(len(live), 1)
        for name in live[shift:] + live[:shift]:
            if name in errors:
                continue
            runner, times, batch_in = runners[name], latencies[name], batches[name]
            if config.iters is not None:
                share = config.iters // rounds + (1 if round_index < config.iters % rounds else 0)
                budget_ok = lambda done, _began: done < share  # noqa: E731
            else:
                seconds = config.duration / rounds
                budget_ok = lambda done, began: done == 0 or time.perf_counter() - began < seconds  # noqa: E731
            began, done = time.perf_counter(), 0
            try:
                while budget_ok(done, began):
                    start = time.perf_counter()
                    runner.infer(batch_in)
                    times.append(time.perf_counter() - start)
                    done += 1
            except Exception as exc:
                errors[name] = f"{type(exc).__name__}: {exc}"
            progress()
    stats: dict[str, dict[str, Any]] = {}
    for name in runners:
        if name in errors:
            stats[name] = {"error": errors[name]}
            continue
        times = latencies[name]
        total = sum(times)
        stats[name] = {
            "images_per_s": round(len(times) * len(batches[name]) / total, 2) if total > 0 else 0.0,
            **_percentiles(times),
            "batches": len(times),
            "seconds": round(total, 6),
        }
    return stats


def measure_end_to_end(
    runners: dict[str, Runner],
    files: list[str],
    batch: np.ndarray,
    bundle: Bundle,
    config: BenchConfig,
    progress: Callable[[], None] = lambda: None,
) -> dict[str, dict[str, Any]]:
    """Images/s through the `dfx scan` pipeline (threaded decode + batching + inference) beside
    pure inference of the same batch size, both in alternating slices, so the ratio holds
    under changing load. Each e2e slice is a fresh pipeline, so its fill time counts, as in a scan."""
    from dfx.runtime.scan.pipeline import iter_results
    from dfx.runtime.provenance.hook import ProvenanceHook

    reader = ProvenanceHook.maybe(config.provenance)  # the row hook `dfx scan` uses
    reader = reader if reader.reading else None  # None: off, or no c2pa extra
    size = config.e2e_batch_size
    from dfx.runtime.scan.pipeline import face_options

    faces, _ = face_options(bundle, config.faces, config.no_face, config.min_face)  # as dfx scan does
    common = dict(size=bundle.input_size, fit=bundle.fit, threshold=bundle.threshold, batch_size=size, faces=faces)
    rounds = max(config.rounds, 1)

    def sources(budget: float, by_count: bool):
        deadline = time.perf_counter() + budget
        for index, path in enumerate(itertools.cycle(files)):
            if (index >= budget) if by_count else (index >= size and time.perf_counter() >= deadline):
                return  # by time: at least one full batch per slice
            yield path

    totals = {name: {"images": 0, "errors": 0, "seconds": 0.0, "latencies": []} for name in runners}
    with_c2pa = {name: {"images": 0, "seconds": 0.0} for name in runners} if reader is not None else {}
    failed: dict[str, str] = {}
    for name, runner in runners.items():  # warm-up: one batch through the whole pipeline
        try:
            for _ in iter_results(files[:size], runner, **common):
                pass
        except Exception as exc:
            failed[name] = f"{type(exc).__name__}: {exc}"
    live = [name for name in runners if name not in failed]
    for round_index in range(rounds):
        shift = round_index % max(len(live), 1)
        for name in live[shift:] + live[:shift]:
            runner, total = runners[name], totals[name]
            if config.iters is not None:
                share = max(config.iters // rounds, 1)
                budget, by_count = float(share * size), True
            else:
                budget, by_count = config.duration / rounds, False
            try:
                began = time.perf_counter()  # pure inference slice
                while (len(total["latencies"]) < share * (round_index + 1)) if by_count else (time.perf_counter() - began < budget):
                    start = time.perf_counter()
                    runner.infer(batch)
                    total["latencies"].append(time.perf_counter() - start)
                # end-to-end slices: files -> decode -> batches -> runner; with provenance on, in
                # alternating order round by round, so neither side always runs second
                for prov in ([None, reader] if round_index % 2 == 0 else [reader, None]) if reader is not None else [None]:
                    began = time.perf_counter()
                    count = 0
                    for result in iter_results(sources(budget, by_count), runner, **common, hook=prov):
                        count += 1
                        total["errors"] += result.error is not None and prov is None
                    side = total if prov is None else with_c2pa[name]
                    side["images"] += count
                    side["seconds"] += time.perf_counter() - began
            except Exception as exc:
                failed[name] = f"{type(exc).__name__}: {exc}"
                live.remove(name)
            progress()
    out: dict[str, dict[str, Any]] = {}
    for name, total in totals.items():
        if name in failed:
            out[name] = {"error": failed[name]}
            continue
        pure_seconds = sum(total["latencies"])
        pure = len(total["latencies"]) * size / pure_seconds if pure_seconds else 0.0
        e2e = total["images"] / total["seconds"] if total["seconds"] else 0.0
        out[name] = {
            "images_per_s": round(e2e, 2),
            "images": total["images"],
            "errors": total["errors"],
            "seconds": round(total["seconds"], 3),
            "inference_images_per_s": round(pure, 2),
            "vs_inference": round(e2e / pure, 3) if pure else None,
        }
        if name in with_c2pa and with_c2pa[name]["seconds"]:
            on = with_c2pa[name]["images"] / with_c2pa[name]["seconds"]
            out[name]["c2pa"] = {"images_per_s": round(on, 2), "images": with_c2pa[name]["images"],
                                 "seconds": round(with_c2pa[name]["seconds"], 3), "vs_e2e_off": round(on / e2e, 3) if e2e else None}
    return out


def measure_scan_memory(
    bundle_dir: str | os.PathLike, files: list[str], batch_size: int = 32, limit: int = 256, timeout: float = 600
) -> dict[str, Any]:
    """Peak RSS of `dfx scan --backend ort-cpu` in a fresh Python process, and whether it imported
    tensorflow (it must not). Runs the real CLI entry point (dfx.cli.main) on `limit` files."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="dfx-bench-") as tmp:
        argv = ["scan", os.fspath(bundle_dir), *files[:limit], "--out", os.path.join(tmp, "rows.jsonl"), "--backend", "ort-cpu", "--batch", str(batch_size), "--quiet"]
        probe = (
            "import json, resource, sys, time\n"
            "from dfx.cli import main\n"
            "began = time.perf_counter()\n"
            f"rc = main({argv!r})\n"
            "seconds = time.perf_counter() - began\n"
            "rows = sum(1 for _ in open(sys.argv[1]))\n"
            # VmHWM is this process's own peak; ru_maxrss would carry the forking parent's peak
            # across exec on Linux (the bench process holds Keras and every model).
            "peak = [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')]\n"
            "peak_kb = peak[0] if peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "print(json.dumps({'rc': rc, 'rows': rows, 'seconds': round(seconds, 3),"
            " 'peak_rss_mb': round(peak_kb / 1024, 1),"
            " 'tensorflow_imported': 'tensorflow' in sys.modules}))\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", probe, os.path.join(tmp, "rows.jsonl")], capture_output=True, text=True, timeout=timeout
        )
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    report = json.loads(done.stdout.strip().splitlines()[-1])
    report["images_per_s"] = round(report["rows"] / report["seconds"], 2) if report["seconds"] else 0.0
    report["command"] = f"dfx scan {os.fspath(bundle_dir)} <{min(limit, len(files))} files> --out rows.jsonl --backend ort-cpu --batch {batch_size} --quiet"
    return report


def _photo_stages(bundle: Bundle, files: list[str], runner: Runner, config: BenchConfig) -> dict[str, Any] | None:
    """Milliseconds per photo of each whole-photo stage (benchmarks/whole_photo.py's stage_times:
    decodes, the float and INT8 finders, cuts, window, inference) on up to 8 of `files` that
    `dfx scan` would search (long side over dfx.faces.CROP_MAX_SIDE); None when there are none,
    faces are off, or the bundle has no finder."""
    from PIL import Image

    from dfx.faces import CROP_MAX_SIDE, FACE_FINDER_INT8_ROLE, FACE_FINDER_ROLE, FaceFinder, FinderConfig
    from dfx.images import open_formats
    from dfx.runtime.scan.pipeline import face_options

    options, _ = face_options(bundle, config.faces, config.no_face, config.min_face)
    if options is None or options.finder is None:
        return None
    photos = []
    for path in files:
        try:
            with Image.open(path, formats=open_formats()) as image:  # the header only
                if max(image.size) > CROP_MAX_SIDE:
                    photos.append(path)
        except Exception:
            continue
        if len(photos) == 8:
            break
    if not photos:
        return None
    from dfx.benchmarks.whole_photo import stage_times

    finder_config = FinderConfig(min_face=options.finder.config.min_face)
    float_finder = FaceFinder(bundle.file(bundle.files_with_role(FACE_FINDER_ROLE)[0]), config=finder_config)
    int8 = bundle.files_with_role(FACE_FINDER_INT8_ROLE)
    int8_finder = FaceFinder(bundle.file(int8[0]), config=finder_config) if int8 else None
    stages = stage_times(photos, float_finder, runner, bundle.input_size, bundle.fit, finder_config.min_face, int8_finder)
    return {"photos": len(photos), "min_face": finder_config.min_face, **stages}


# ---- the run -------------------------------------------------------------------------------------
def run(bundle_dir: str | os.PathLike, config: BenchConfig = BenchConfig(), log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run the bench; returns {"bundle", "config", "machine", "rows", "skipped", "roofline", ...}."""
    from tqdm import tqdm

    from dfx.benchmarks import machine
    from dfx.images import iter_image_files, load_image

    if any(b < 1 for b in config.batch_sizes) or not config.batch_sizes:
        raise BenchError(f"batch sizes must be >= 1, got {config.batch_sizes}")
    if config.iters is None and config.duration <= 0:
        raise BenchError("--duration must be > 0")
    if config.iters is not None and config.iters < 1:
        raise BenchError("--iters must be >= 1")
    bundle = Bundle.open(bundle_dir)
    info = machine.machine_info()
    wanted = normalize(config.backends) if config.backends else None
    names, skipped = plan_backends(bundle, wanted)
    if not names:
        raise BenchError("no backend can run this bundle here: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()),
                         hint="install an extra (pip install 'dfx[cpu]' or 'dfx[openvino]'), or `dfx export` the bundle")
    for name, why in skipped.items():
        log(f"dfx bench: skipping {name}: {why}")
    other = Bundle.open(config.against) if config.against else None
    other_names: list[str] = []
    if other is not None:
        other_names, other_skipped = plan_backends(other, tuple(n for n in names if n != "keras"))
        for name, why in other_skipped.items():
            log(f"dfx bench: --against bundle: skipping {name}: {why}")

    files: list[str] = []
    sample: list[np.ndarray] | None = None
    if config.images:
        files = iter_image_files([config.images])
        if not files:
            raise BenchError(f"no image files in {config.images}")
        sample = []
        for path in files[: max(*config.batch_sizes, config.e2e_batch_size)]:
            try:
                sample.append(load_image(path, bundle.input_size, bundle.fit))
            except DfxError:
                continue

    # The machine's rates, measured before and after the rows; the roof uses the better of the
    # two, so a burst of load from elsewhere during one measurement does not lower the limit.
    rates_before = _measure_rates(config) if config.roofline else None
    auto, auto_why = peer.auto_backend(bundle) if config.peer else ("", "")
    # The peer only where the auto form is timed here too (an OpenVINO form among the rows).
    peers = [_openvino_peer(bundle, auto, config, log)] if auto.startswith("ov-") and auto in names else []
    runners: dict[str, Runner] = {}
    model_files: dict[str, str] = {}  # the bundle file each runner runs (CPU int8: the uint8 twin)
    rows: list[dict[str, Any]] = []
    for name in names:
        try:
            runner, model_files[name] = make_runner(bundle, name, config.threads)
            runner.activate()
            runners[name] = runner
        except Exception as exc:
            rows.append(_error_row(name, "inference", f"cannot start: {type(exc).__name__}: {exc}"))
    others: dict[str, Runner] = {}  # the --against bundle's runners, by backend name
    other_files: dict[str, str] = {}
    for name in other_names:
        try:
            runner, other_files[name] = make_runner(other, name, config.threads)  # type: ignore[arg-type]
            runner.activate()
            others[name] = runner
        except Exception as exc:
            rows.append({**_error_row(name, "inference", f"cannot start: {type(exc).__name__}: {exc}"), "against": True})
    try:
        batch_sizes = sorted(set(config.batch_sizes))
        total = len(batch_sizes) * max(config.rounds, 1) * (len(runners) + len(others))
        with tqdm(total=total, desc="dfx bench", unit="slice", disable=None, file=sys.stderr) as bar:
            for batch_size in batch_sizes:
                batch = _input_batch(sample, bundle.input_size, batch_size, config.seed)
                timed, batches = dict(runners), {name: batch for name in runners}
                if other is not None:  # random pixels at its size: speed does not depend on them
                    other_batch = _input_batch(None, other.input_size, batch_size, config.seed)
                    timed.update({AGAINST + name: runner for name, runner in others.items()})
                    batches.update({AGAINST + name: other_batch for name in others})
                stats = measure_inference(timed, batches, config, progress=lambda: bar.update(1))
                for name in runners:
                    rows.append(_row(name, runners[name], model_files[name], batch_size, "inference", stats[name]))
                for name in others:
                    rows.append({**_row(name, others[name], other_files[name], batch_size, "inference", stats[AGAINST + name]), "against": True})
        _add_ratios(rows)
        extra: dict[str, Any] = {}
        trt_names = [n for n in runners if n.startswith("trt-")]
        for name in trt_names:  # H2D / compute / D2H as trtexec splits them, and the bottleneck
            extra.setdefault("trt_profile", {})[name] = _trt_profile(runners[name], bundle, config)
        for row in rows:
            if row["backend_name"] in extra.get("trt_profile", {}):
                profile = extra["trt_profile"][row["backend_name"]].get(row["batch"])
                if profile:
                    row.update(profile)
        if files:
            e2e_runners = {name: runner for name, runner in runners.items() if name != "keras"}  # nobody scans through Keras
            with tqdm(total=max(config.rounds, 1) * len(e2e_runners), desc="dfx bench e2e", unit="slice", disable=None, file=sys.stderr) as bar:
                e2e_batch = _input_batch(sample, bundle.input_size, config.e2e_batch_size, config.seed)
                stats = measure_end_to_end(e2e_runners, files, e2e_batch, bundle, config, progress=lambda: bar.update(1))
            for name, stat in stats.items():
                c2pa = stat.pop("c2pa", None)
                rows.append(_row(name, runners[name], model_files[name], config.e2e_batch_size, "e2e", stat))
                if c2pa is not None:
                    rows.append(_row(name, runners[name], model_files[name], config.e2e_batch_size, "e2e+c2pa", c2pa))
            if e2e_runners:
                stages = _photo_stages(bundle, files, next(iter(e2e_runners.values())), config)
                if stages:
                    extra["whole_photo_stages_ms"] = stages
    finally:
        for runner in [*runners.values(), *others.values()]:
            runner.deactivate()
    if auto:
        if peers:
            peers.append(_openvino_peer(bundle, auto, config, log))
        extra["auto"] = peer.summary(rows, auto, auto_why, peers)

    result: dict[str, Any] = {
        "bundle": os.fspath(bundle_dir),
        "input_size": list(bundle.input_size),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.__dict__.items()},
        "machine": info,
        "rows": rows,
        "skipped": skipped,
        **extra,
    }
    if other is not None:
        result["against"] = {"bundle": os.fspath(config.against), "input_size": list(other.input_size), "architecture": other.manifest.get("architecture")}
    if config.roofline:
        from dfx.benchmarks import roofline

        rates = roofline.best_of(rates_before, _measure_rates(config))  # type: ignore[arg-type]
        result["roofline"] = add_roofline(bundle, rows, rates)
    if files and config.scan_memory and importlib.util.find_spec("onnxruntime") is not None and bundle.files_with_role(ONNX_ROLES["fp32"]):
        log("dfx bench: measuring dfx scan peak memory in a fresh process")
        result["scan_memory"] = measure_scan_memory(bundle_dir, files, batch_size=config.e2e_batch_size)
    result["machine"]["load_average_end"] = machine.load_average()
    return result


def _row(name: str, runner: Runner, file: str, batch: int, mode: str, stat: dict[str, Any]) -> dict[str, Any]:
    return {
        "mode": mode,  # "inference": pixels already in memory; "e2e": JPEG files through dfx scan's pipeline
        "backend_name": name,
        "backend": runner.backend,
        "precision": runner.precision,  # what ran: OpenVINO pins and reads back its execution precision
        "file": file,  # the bundle file it ran (CPU int8: the uint8 twin)
        "batch": batch,
        **stat,
        "ratio_vs_keras": None,
    }


def _error_row(name: str, mode: str, error: str, batch: int | None = None) -> dict[str, Any]:
    backend, precision = BACKENDS[name]
    return {"mode": mode, "backend_name": name, "backend": backend, "precision": precision, "batch": batch, "error": error, "ratio_vs_keras": None}


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    """`ratio_vs_keras` per inference row; with --against, the bundle's rows' `ratio_vs_against`."""
    timed = [r for r in rows if r["mode"] == "inference" and r.get("images_per_s")]
    keras = {r["batch"]: r["images_per_s"] for r in timed if r["backend_name"] == "keras" and not r.get("against")}
    other = {(r["backend_name"], r["batch"]): r["images_per_s"] for r in timed if r.get("against")}
    for row in timed:
        if row["batch"] in keras and not row.get("against"):
            row["ratio_vs_keras"] = round(row["images_per_s"] / keras[row["batch"]], 3)
        if (row["backend_name"], row["batch"]) in other and not row.get("against"):
            row["ratio_vs_against"] = round(row["images_per_s"] / other[(row["backend_name"], row["batch"])], 3)


def _trt_profile(runner: Runner, bundle: Bundle, config: BenchConfig) -> dict[int, dict[str, Any]]:
    """Per batch size: median H2D / compute / D2H ms and which side limits throughput."""
    out: dict[int, dict[str, Any]] = {}
    for batch_size in sorted(set(config.batch_sizes)):
        batch = _input_batch(None, bundle.input_size, batch_size, config.seed)
        try:
            prof = runner.profile(batch, iters=max(config.iters or 20, 5))  # type: ignore[attr-defined]
        except Exception as exc:
            out[batch_size] = {"profile_error": f"{type(exc).__name__}: {exc}"}
            continue
        stages = {"h2d": prof["h2d_ms"], "gpu compute": prof["compute_ms"], "d2h": prof["d2h_ms"]}
        slowest = max(stages, key=stages.get)  # type: ignore[arg-type]
        wall = prof["pipelined_ms_per_batch"]
        # With the copies and compute of neighbouring batches overlapped on separate streams, a
        # batch cannot go faster than its slowest stage; time beyond that (15% slack) is host work
        # (casting pixels, Python, launches) that the GPU waits for.
        bottleneck = slowest if wall <= 1.15 * stages[slowest] else "host"
        out[batch_size] = {
            "h2d_ms": round(prof["h2d_ms"], 3),
            "compute_ms": round(prof["compute_ms"], 3),
            "d2h_ms": round(prof["d2h_ms"], 3),
            "pipelined_ms_per_batch": round(wall, 3),
            "bottleneck": bottleneck,
        }
    return out


def _openvino_peer(bundle: Bundle, name: str, config: BenchConfig, log: Callable[[str], None]) -> dict[str, Any]:
    log(f"dfx bench: OpenVINO benchmark_app on the file {name} runs (the peer)")
    try:
        return peer.openvino_peer(bundle, name, config.e2e_batch_size, config.peer_seconds)
    except Exception as exc:  # a missing benchmark_app must not lose the rows
        return {"tool": "benchmark_app", "error": f"{type(exc).__name__}: {exc}"}


def _measure_rates(config: BenchConfig) -> Any:
    from dfx.benchmarks import roofline

    return roofline.measure_machine(seconds=config.roofline_seconds, threads=config.threads)


def add_roofline(bundle: Bundle, rows: list[dict[str, Any]], rates: Any) -> dict[str, Any]:
    """Work per image of each ONNX form, the machine's rates (a roofline.MachineRates), and each
    CPU row's roof fraction."""
    from dfx.benchmarks import roofline

    costs: dict[str, Any] = {}
    for precision in ("fp32", "fp16", "int8"):
        names = bundle.files_with_role(ONNX_ROLES[precision])
        if names:
            try:
                costs[precision] = roofline.graph_cost(bundle.file(names[0]), bundle.input_size)
            except Exception as exc:  # an exotic graph must not lose the bench rows
                costs[precision] = exc
    section: dict[str, Any] = {
        "graph": {p: (c.as_dict() if not isinstance(c, Exception) else {"error": str(c)}) for p, c in costs.items()},
        "machine": rates.as_dict(),
        "minimum_bytes": "per image: weights once per batch (as stored) + input tensor + output tensor; activations assumed cached",
    }
    for row in rows:
        if row["mode"] != "inference" or not row.get("images_per_s") or row["backend"] in ("trt", "ort-cuda") or row.get("against"):
            continue  # the microbenchmarks measure the CPU; GPU rows have no roof from them; the graph is this bundle's
        cost = costs.get(row["precision"]) or costs.get("fp32")  # bf16 runs the fp32 graph
        if cost is None or isinstance(cost, Exception):
            continue
        row.update(roofline.fraction_of_roof(cost, rates, row["precision"], row["batch"], row["images_per_s"]))
    return section


# ---- for `dfx demo` ------------------------------------------------------------------------------
def quick_summary(bundle_dir: str | os.PathLike, batch_size: int = 32, duration: float = 2.0) -> str:
    """A few lines for the end of `dfx demo`: images/s of each CPU backend at one batch size,
    interleaved in one short run, with the ratio to Keras predict when tensorflow is present."""
    config = BenchConfig(batch_sizes=(batch_size,), duration=duration, rounds=2, warmup=1, roofline=False, scan_memory=False,
                         peer=False)  # the demo stays short: the peer is for `dfx bench`
    result = run(bundle_dir, config)
    rows = sorted((r for r in result["rows"] if r.get("images_per_s")), key=lambda r: -r["images_per_s"])
    size = "x".join(str(s) for s in result["input_size"])
    lines = [f"bench ({size} px, batch {batch_size}, {duration:g} s per backend, {result['machine']['cpu']}):"]
    for row in rows:
        ratio = f"  {row['ratio_vs_keras']:.1f}x Keras predict" if row.get("ratio_vs_keras") else ""
        lines.append(f"  {row['backend_name']:<14} {row['images_per_s']:>9.1f} images/s{ratio}")
    for row in result["rows"]:
        if row.get("error"):
            lines.append(f"  {row['backend_name']:<14} error: {row['error']}")
    lines.append("full table: dfx bench BUNDLE (see benchmarks/README.md)")
    return "\n".join(lines)
