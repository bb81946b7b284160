"""Soak test: one Detector shared by many threads (and, with --service, `dfx serve` under many
loopback clients) for a bounded time; reports RSS at start and end, errors and throughput drift.

    python benchmarks/soak.py bundles/speed --minutes 5                  # 8 threads, one Detector
    python benchmarks/soak.py bundles/speed --minutes 5 --service        # + dfx serve, 32 clients

What counts (issue #15's bar: RSS growth under 10%, no errors):
  rss_start_mb   the median RSS over the first third of the windows after a warm-up window
                 (allocators and thread pools settle in the first seconds; that is not growth)
  rss_end_mb     the median over the last third; rss_growth = end / start - 1. RSS is sampled
                 4 times a second: a server holding a batch of decoded images swings by a
                 hundred MB within one batch cycle, so one sample per end says where in the
                 cycle it fell, not whether memory grows
  rss_slope      least-squares slope of the per-window medians, MB per minute
  errors         exceptions, rows with an error for a good image, HTTP 5xx (a 503 from a full
                 queue is back-pressure and is counted apart as `rejected`)
  bad_inputs     broken images mixed in on purpose (1 in 16): each must come back as an error row
  drift          throughput of the last third of the windows over the first third, minus 1
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np


def cpu_name() -> str:
    from dfx.runtime.runners.base import cpu_model

    return cpu_model()


def rss_mb(pid: int | None = None) -> float:
    """Resident memory of a process (this one by default), in MB."""
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 1e6
    except ImportError:
        for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e6
    return float("nan")


def make_inputs(count: int, size: int, seed: int = 0) -> tuple[list[bytes], list[bool]]:
    """`count` JPEGs of `size` px (distinct, textured), every 16th truncated on purpose.
    Returns (bytes, is_good)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images, good = [], []
    y, x = np.mgrid[0:size, 0:size]
    for i in range(count):
        base = (np.sin(x / (3 + i % 7)) + np.cos(y / (4 + i % 5))) * 60 + 128
        pixels = np.clip(base[..., None] + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
        data = buffer.getvalue()
        broken = i % 16 == 15
        images.append(data[: len(data) // 3] if broken else data)
        good.append(not broken)
    return images, good


class Tally:
    """Counters shared by the worker threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done = 0  # inputs answered
        self.errors: list[str] = []  # unexpected: exceptions, error rows for good images, 5xx
        self.bad_ok = 0  # broken inputs that came back as error rows, as they should
        self.rejected = 0  # 503 back-pressure (service mode)

    def add(self, done: int = 0, error: str | None = None, bad_ok: int = 0, rejected: int = 0) -> None:
        with self.lock:
            self.done += done
            self.bad_ok += bad_ok
            self.rejected += rejected
            if error is not None and len(self.errors) < 1000:
                self.errors.append(error)


def _soak(name: str, workers: int, work: Callable[[int, Tally, threading.Event], None], seconds: float, window: float,
          rss: Callable[[], float]) -> dict[str, Any]:
    tally, stop = Tally(), threading.Event()
    threads = [threading.Thread(target=work, args=(i, tally, stop), daemon=True) for i in range(workers)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    windows: list[dict[str, float]] = []
    last_done, last_t = 0, began
    while time.perf_counter() - began < seconds:
        samples, window_end = [], time.perf_counter() + window
        while time.perf_counter() < window_end:
            samples.append(rss())
            time.sleep(0.25)
        now = time.perf_counter()
        with tally.lock:
            done = tally.done
        windows.append({"t": round(now - began, 1), "images_per_s": round((done - last_done) / (now - last_t), 2),
                        "rss_mb": round(float(np.median(samples)), 1), "rss_max_mb": round(max(samples), 1)})
        last_done, last_t = done, now
    stop.set()
    for thread in threads:
        thread.join(timeout=120)
    elapsed = time.perf_counter() - began
    steady = windows[1:] or windows  # the first window is warm-up
    third = max(1, len(steady) // 3)
    rates = [w["images_per_s"] for w in steady] or [0.0]
    first, last = float(np.mean(rates[:third])), float(np.mean(rates[-third:]))
    rss_start = float(np.median([w["rss_mb"] for w in steady[:third]])) if steady else None
    rss_end = float(np.median([w["rss_mb"] for w in steady[-third:]])) if steady else None
    slope = float(np.polyfit([w["t"] / 60 for w in steady], [w["rss_mb"] for w in steady], 1)[0]) if len(steady) > 2 else None
    return {
        "mode": name,
        "workers": workers,
        "seconds": round(elapsed, 1),
        "inputs": tally.done,
        "images_per_s": round(tally.done / elapsed, 2),
        "rss_start_mb": rss_start,
        "rss_end_mb": rss_end,
        "rss_growth": round(rss_end / rss_start - 1, 4) if rss_start else None,
        "rss_slope_mb_per_min": round(slope, 2) if slope is not None else None,
        "rss_peak_mb": max(w["rss_max_mb"] for w in windows) if windows else None,
        "errors": len(tally.errors),
        "error_examples": sorted(set(tally.errors))[:5],
        "bad_inputs_answered_as_error_rows": tally.bad_ok,
        "rejected_503": tally.rejected,
        "throughput_first_third": round(first, 2),
        "throughput_last_third": round(last, 2),
        "drift": round(last / first - 1, 4) if first else None,
        "windows": windows,
        "alive_threads_after_stop": sum(t.is_alive() for t in threads),
    }


def soak_detector(bundle: str, seconds: float, threads: int, window: float, backend: str, batch: int) -> dict[str, Any]:
    from dfx.runtime.scan.detector import Detector

    with Detector.load(bundle, backend=backend, workers=2) as detector:
        size = detector.bundle.input_size[0]
        images, good = make_inputs(64, size)

        def work(index: int, tally: Tally, stop: threading.Event) -> None:
            position = index * 7
            while not stop.is_set():
                chosen = [(position + k) % len(images) for k in range(batch)]
                position += batch
                try:
                    results = detector.predict([images[c] for c in chosen])
                except Exception as exc:  # noqa: BLE001 - counted, the soak goes on
                    tally.add(error=f"{type(exc).__name__}: {exc}")
                    continue
                bad_ok = 0
                for c, result in zip(chosen, results):
                    if good[c] and result.error:
                        tally.add(error=f"good image got an error row: {result.error}")
                    elif not good[c]:
                        if result.error:
                            bad_ok += 1
                        else:
                            tally.add(error="a broken image got a score")
                tally.add(done=len(results), bad_ok=bad_ok)

        report = _soak("detector", threads, work, seconds, window, rss_mb)
        report["backend"] = f"{detector.backend} {detector.precision}"
        report["reason"] = detector.reason
    return report


def soak_service(bundle: str, seconds: float, clients: int, window: float, backend: str) -> dict[str, Any]:
    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "dfx", "serve", bundle, "--port", str(port), "--backend", backend, "--no-access-log"]
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"dfx-soak-serve-{port}.log"  # the server's stderr, for a post-mortem
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1200):
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None:
                raise RuntimeError(f"dfx serve exited: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        images, good = make_inputs(64, 256)  # any size: the service fits them to the model

        def work(index: int, tally: Tally, stop: threading.Event) -> None:
            position = index * 5
            with httpx.Client(base_url=url, timeout=60) as client:
                while not stop.is_set():
                    c = position % len(images)
                    position += 1
                    try:
                        response = client.post("/v1/screen", content=images[c], headers={"content-type": "application/octet-stream"})
                    except httpx.HTTPError as exc:
                        tally.add(error=f"{type(exc).__name__}: {exc}")
                        continue
                    if response.status_code == 503:
                        tally.add(rejected=1)
                        time.sleep(0.05)
                        continue
                    if response.status_code != 200:
                        tally.add(error=f"HTTP {response.status_code}: {response.text[:200]}")
                        continue
                    [row] = response.json()["results"]
                    if good[c] and row.get("error"):
                        tally.add(error=f"good image got an error row: {row['error']}")
                    elif not good[c] and not row.get("error"):
                        tally.add(error="a broken image got a score")
                    tally.add(done=1, bad_ok=0 if good[c] else 1)

        report = _soak("service", clients, work, seconds, window, lambda: rss_mb(server.pid))
        report["server_log"] = str(log)
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", help="bundle folder (e.g. bundles/speed)")
    parser.add_argument("--minutes", type=float, default=5.0, help="how long each soak runs (default 5)")
    parser.add_argument("--threads", type=int, default=8, help="threads sharing the Detector (default 8)")
    parser.add_argument("--clients", type=int, default=32, help="--service: concurrent HTTP clients (default 32)")
    parser.add_argument("--batch", type=int, default=4, help="images per predict() call (default 4)")
    parser.add_argument("--window", type=float, default=15.0, help="seconds per throughput/RSS sample (default 15)")
    parser.add_argument("--backend", default="auto", help="as dfx scan --backend (default auto)")
    parser.add_argument("--service", action="store_true", help="also soak `dfx serve` with --clients loopback clients")
    parser.add_argument("--no-detector", action="store_true", help="skip the shared-Detector soak")
    parser.add_argument("--out", type=Path, help="write the report (JSON) here too")
    args = parser.parse_args(argv)
    seconds = args.minutes * 60
    report: dict[str, Any] = {"cpu": cpu_name(), "cores": os.cpu_count(), "load_avg_at_start": os.getloadavg(), "runs": []}
    if not args.no_detector:
        report["runs"].append(soak_detector(args.bundle, seconds, args.threads, args.window, args.backend, args.batch))
    if args.service:
        report["runs"].append(soak_service(args.bundle, seconds, args.clients, args.window, args.backend))
    report["load_avg_at_end"] = os.getloadavg()
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    for run in report["runs"]:
        print(json.dumps({k: v for k, v in run.items() if k != "windows"}), file=sys.stderr)
    print(text)
    ok = all(r["errors"] == 0 and (r["rss_growth"] or 0) < 0.10 and r["alive_threads_after_stop"] == 0 for r in report["runs"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
