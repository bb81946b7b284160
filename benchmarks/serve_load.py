"""Load test of `dfx serve`, beside the offline `dfx scan` rate on the same images and backend.

    python benchmarks/serve_load.py BUNDLE IMAGES [--backend auto] [--concurrency 32] [--duration 20]

In one run, on this machine:
1. offline: `dfx scan BUNDLE IMAGES` (a subprocess), its images/s from its JSON summary, once
   before and once right after the closed loop (the server idle), averaged;
2. `dfx serve BUNDLE --port 0` (a subprocess, loopback only), its RSS sampled throughout;
3. closed loop: N concurrent HTTP clients (aiohttp), each sending one image per POST /v1/screen
   and the next when the answer comes; requests/s, images/s, p50/p95/p99 latency, every
   non-200 by code, and the batch sizes the server ran (from its /metrics, before and after);
4. overload: an open loop at `--overload` x the rate step 3 sustained (arrivals do not wait
   for answers), every request answered 200, 503 or 504 or counted as unanswered; peak RSS;
5. recovery: the closed loop again, right after, for a few seconds: all 200 again?

Every loop is bounded by a request count and a duration and stops by itself; the server listens
on 127.0.0.1 only and is stopped (SIGTERM, drained) at the end. Prints a Markdown table and
writes everything as JSON with --json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
UNANSWERED: list[str] = []  # what the client saw instead of an answer, for the report


def cpu_name() -> str:
    from dfx.runtime.runners.base import cpu_model

    return cpu_model()


def image_files(folder: str, limit: int) -> list[Path]:
    from dfx.images import iter_image_files

    return [Path(p) for p in iter_image_files([folder])][:limit]


def http_get(url: str) -> tuple[int, str]:
    """(status, body) of one GET: the probes between loops need no client library."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


# ---- 1. offline ------------------------------------------------------------------------------------


def offline_scan(bundle: str, files: list[Path], backend: str, tmp: Path) -> dict[str, Any]:
    listing = tmp / "inputs"
    if not listing.exists():
        listing.mkdir()
        for i, path in enumerate(files):  # the same files the load sends, by link, in one folder
            (listing / f"{i:05d}{path.suffix}").symlink_to(path.resolve())
    out = tmp / "offline.jsonl"
    result = subprocess.run([sys.executable, "-m", "dfx", "scan", bundle, str(listing), "--out", str(out), "--overwrite",
                             "--backend", backend], capture_output=True, text=True, cwd=ROOT, timeout=1800)
    if result.returncode != 0:
        raise SystemExit(f"dfx scan failed:\n{result.stderr[-2000:]}")
    summary = json.loads(result.stderr.strip().splitlines()[-1])
    return {"images": summary["images"], "seconds": summary["seconds"], "images_per_s": summary["images_per_s"],
            "backend": summary.get("backend"), "precision": summary.get("precision")}


# ---- 2. the server ----------------------------------------------------------------------------------


class Server:
    """`dfx serve` in a subprocess on a free loopback port, its RSS sampled every 50 ms."""

    def __init__(self, bundle: str, backend: str, extra: list[str]):
        command = [sys.executable, "-m", "dfx", "serve", bundle, "--host", "127.0.0.1", "--port", "0", "--backend", backend,
                   "--no-access-log", *extra]
        self.process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(iter(self.process.stderr.readline, "")), daemon=True).start()
        self.peak_rss = 0
        self.window_peak = 0  # peak since the last reset_window()
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()
        end = time.monotonic() + 120
        while not any("listening on" in line for line in self.lines):
            if self.process.poll() is not None or time.monotonic() > end:
                raise SystemExit("dfx serve did not start:\n" + "".join(self.lines[-20:]))
            time.sleep(0.05)
        self.address = next(line for line in self.lines if "listening on" in line).strip().rsplit("//", 1)[1]

    def _sample(self) -> None:
        import psutil

        proc = psutil.Process(self.process.pid)
        while not self._stop.is_set():
            try:
                rss = proc.memory_info().rss
            except psutil.Error:
                return
            self.peak_rss = max(self.peak_rss, rss)
            self.window_peak = max(self.window_peak, rss)
            time.sleep(0.05)

    def reset_window(self) -> None:
        self.window_peak = 0

    def stop(self) -> int:
        self._stop.set()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()


def metrics(address: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, float] = {}
    for family in text_string_to_metric_families(http_get(f"http://{address}/metrics")[1]):
        for sample in family.samples:
            if sample.name == "dfx_request_duration_seconds_sum" and sample.labels.get("endpoint") == "screen":
                values["screen_seconds_sum"] = sample.value
            elif sample.name == "dfx_request_duration_seconds_count" and sample.labels.get("endpoint") == "screen":
                values["screen_seconds_count"] = sample.value
            elif sample.name.startswith("dfx_batch_size") or sample.name in ("dfx_queue_duration_seconds_sum", "dfx_queue_duration_seconds_count",
                                                                           "dfx_compute_duration_seconds_sum", "dfx_compute_duration_seconds_count"):
                key = sample.name + ("" if "le" not in sample.labels else f"le={sample.labels['le']}")
                values[key] = sample.value
    return values


def batch_stats(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    count = after.get("dfx_batch_size_count", 0) - before.get("dfx_batch_size_count", 0)
    total = after.get("dfx_batch_size_sum", 0) - before.get("dfx_batch_size_sum", 0)
    buckets, previous = {}, 0.0
    for key in sorted((k for k in after if k.startswith("dfx_batch_size_bucket")), key=lambda k: float(k.split("le=")[1])):
        cumulative = after[key] - before.get(key, 0)
        buckets[key.split("le=")[1]] = int(cumulative - previous)  # batches in (previous le, this le]
        previous = cumulative
    queue_n = after.get("dfx_queue_duration_seconds_count", 0) - before.get("dfx_queue_duration_seconds_count", 0)
    queue_s = after.get("dfx_queue_duration_seconds_sum", 0) - before.get("dfx_queue_duration_seconds_sum", 0)
    compute_s = after.get("dfx_compute_duration_seconds_sum", 0) - before.get("dfx_compute_duration_seconds_sum", 0)
    served = after.get("screen_seconds_count", 0) - before.get("screen_seconds_count", 0)
    served_s = after.get("screen_seconds_sum", 0) - before.get("screen_seconds_sum", 0)
    return {"server_mean_ms": round(1000 * served_s / served, 1) if served else 0.0, "batches": int(count), "mean_batch": round(total / count, 2) if count else 0.0,
            "histogram": {k: v for k, v in buckets.items() if v}, "mean_queue_ms": round(1000 * queue_s / queue_n, 1) if queue_n else 0.0,
            "mean_compute_ms_per_batch": round(1000 * compute_s / count, 1) if count else 0.0}


# ---- 3-5. the clients ---------------------------------------------------------------------------------


def summarize(latencies: list[float], codes: dict[str, int], images: int, seconds: float) -> dict[str, Any]:
    lat = np.array(latencies) * 1000 if latencies else np.zeros(1)
    requests = sum(codes.values())
    return {"requests": requests, "seconds": round(seconds, 2), "requests_per_s": round(requests / seconds, 1),
            "images_per_s": round(images / seconds, 1), "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p95_ms": round(float(np.percentile(lat, 95)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "codes": dict(sorted(codes.items()))}


class Tally:
    """What one loop's requests got: latencies of 200s, answers by code, images scored."""

    def __init__(self, began: float):
        self.began = began
        self.latencies: list[float] = []
        self.codes: dict[str, int] = {}
        self.scored = 0

    async def post(self, client: Any, url: str, body: bytes) -> None:
        """One POST /v1/screen of one image; its answer (or why there was none) is counted."""
        import aiohttp

        t0 = time.perf_counter()
        try:
            async with client.post(url, data=body, headers={"content-type": "image/jpeg"}) as answer:
                code = str(answer.status)
                if answer.status == 200:
                    rows = (await answer.json())["results"]
                    self.latencies.append(time.perf_counter() - t0)
                    self.scored += sum(1 for r in rows if r["error"] is None)
                else:
                    await answer.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            code = f"no answer ({type(exc).__name__})"
            UNANSWERED.append(f"{time.perf_counter() - self.began:.2f}s after start, {time.perf_counter() - t0:.2f}s in flight: {exc!r}")
        self.codes[code] = self.codes.get(code, 0) + 1


def client_cpu_seconds() -> float:
    """This process's CPU time: the load generator's own cost, taken from the same 2 vCPUs."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def closed_loop(address: str, bodies: list[bytes], concurrency: int, duration: float, max_requests: int) -> dict[str, Any]:
    """`concurrency` clients, each with one request in flight, until `duration` s or `max_requests`."""
    import aiohttp

    sent = [0]
    url = f"http://{address}/v1/screen"
    # Keep-alive shorter than uvicorn's 5 s, so the client never reuses a connection the server
    # is closing at that instant (an error that would look like an unanswered request).
    connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=2.0)
    cpu0 = client_cpu_seconds()
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as client:
        tally = Tally(time.perf_counter())
        end = tally.began + duration

        async def one_client(k: int) -> None:
            while time.perf_counter() < end and sent[0] < max_requests:
                body = bodies[sent[0] % len(bodies)]
                sent[0] += 1
                await tally.post(client, url, body)

        await asyncio.gather(*(one_client(k) for k in range(concurrency)))
        seconds = time.perf_counter() - tally.began
    result = summarize(tally.latencies, tally.codes, tally.scored, seconds)
    result["client_cpu"] = round((client_cpu_seconds() - cpu0) / seconds, 2)  # cores the load generator used
    return result


async def open_loop(address: str, bodies: list[bytes], rate: float, duration: float, max_in_flight: int) -> dict[str, Any]:
    """Arrivals at `rate`/s for `duration` s whatever the answers (more than `max_in_flight` at
    once are counted as 'client overflow', not sent, so the client itself stays bounded)."""
    import aiohttp

    url = f"http://{address}/v1/screen"
    # A new connection per arrival, as many independent callers make: a starved client that
    # reuses a keep-alive connection seconds late races the server closing it.
    connector = aiohttp.TCPConnector(limit=max_in_flight, force_close=True)
    in_flight: set[asyncio.Task] = set()
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as client:
        tally = Tally(time.perf_counter())
        began = tally.began
        total = int(rate * duration)
        for n in range(total):
            delay = began + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(in_flight) >= max_in_flight:
                tally.codes["client overflow"] = tally.codes.get("client overflow", 0) + 1
                continue
            task = asyncio.create_task(tally.post(client, url, bodies[n % len(bodies)]))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        offered = time.perf_counter() - began
        if in_flight:
            await asyncio.wait(in_flight, timeout=120)
        seconds = time.perf_counter() - began
    result = summarize(tally.latencies, tally.codes, tally.scored, seconds)
    result["offered_per_s"] = round(total / offered, 1)
    return result


# ---- the report -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    parser.add_argument("images", help="folder of image files (sent one per request, round robin)")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of the closed-loop run (default 20)")
    parser.add_argument("--max-requests", type=int, default=20_000, help="bound on requests per run")
    parser.add_argument("--overload", type=float, default=4.0, help="open-loop rate as a multiple of the sustained one (0: skip)")
    parser.add_argument("--overload-duration", type=float, default=15.0)
    parser.add_argument("--max-in-flight", type=int, default=1024, help="open loop: the client's own bound on requests in flight")
    parser.add_argument("--recovery-duration", type=float, default=6.0)
    parser.add_argument("--limit-images", type=int, default=880, help="use at most this many files")
    parser.add_argument("--serve-arg", action="append", default=[], metavar="ARG", help="passed to dfx serve (repeat), e.g. --serve-arg=--max-delay-us=20000")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)

    files = image_files(args.images, args.limit_images)
    if not files:
        raise SystemExit(f"no images in {args.images}")
    bodies = [p.read_bytes() for p in files]
    report: dict[str, Any] = {"cpu": cpu_name(), "cores": os.cpu_count(), "images": len(files), "bundle": args.bundle,
                              "concurrency": args.concurrency, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    print(f"# dfx serve load test on {report['cpu']} ({report['cores']} vCPU), {len(files)} images", file=sys.stderr)
    tmp_dir = tempfile.TemporaryDirectory()
    offline_runs = [offline_scan(args.bundle, files, args.backend, Path(tmp_dir.name))]
    print(f"offline dfx scan: {offline_runs[-1]}", file=sys.stderr)

    server = Server(args.bundle, args.backend, args.serve_arg)
    try:
        end = time.monotonic() + 120
        while http_get(f"http://{server.address}/v2/health/ready")[0] != 200:
            if time.monotonic() > end:
                raise SystemExit("dfx serve was not ready within 120 s")
            time.sleep(0.1)
        report["server_command_args"] = args.serve_arg
        report["server_start_line"] = next((line.strip() for line in server.lines if "backend" in line), "")
        asyncio.run(closed_loop(server.address, bodies, args.concurrency, 3.0, 500))  # warm-up, not reported

        before = metrics(server.address)
        run = asyncio.run(closed_loop(server.address, bodies, args.concurrency, args.duration, args.max_requests))
        run["batches"] = batch_stats(before, metrics(server.address))
        run["peak_rss_mb"] = round(server.window_peak / 2**20, 1)
        print(f"closed loop: {run}", file=sys.stderr)
        # The machine's load can change between the two measurements: scan again right after
        # (the server idles meanwhile) and compare with the mean of the scans before and after.
        offline_runs.append(offline_scan(args.bundle, files, args.backend, Path(tmp_dir.name)))
        print(f"offline dfx scan again: {offline_runs[-1]}", file=sys.stderr)
        report["offline"] = {**offline_runs[0], "images_per_s": round(float(np.mean([r["images_per_s"] for r in offline_runs])), 1),
                             "runs_images_per_s": [r["images_per_s"] for r in offline_runs]}
        run["vs_offline"] = round(run["images_per_s"] / report["offline"]["images_per_s"], 3)
        report["closed_loop"] = run

        if args.overload > 0:
            rate = args.overload * run["requests_per_s"]
            server.reset_window()
            before = metrics(server.address)
            over = asyncio.run(open_loop(server.address, bodies, rate, args.overload_duration, args.max_in_flight))
            over["batches"] = batch_stats(before, metrics(server.address))
            over["peak_rss_mb"] = round(server.window_peak / 2**20, 1)
            over["target_per_s"] = round(rate, 1)
            report["overload"] = over
            print(f"overload: {over}", file=sys.stderr)
            server.reset_window()
            before = metrics(server.address)
            again = asyncio.run(closed_loop(server.address, bodies, args.concurrency, args.recovery_duration, args.max_requests))
            again["batches"] = batch_stats(before, metrics(server.address))
            again["alive"] = server.process.poll() is None
            report["recovery"] = again
            print(f"recovery: {again}", file=sys.stderr)
    finally:
        tmp_dir.cleanup()
        report["server_exit_code"] = server.stop()
        report["server_peak_rss_mb"] = round(server.peak_rss / 2**20, 1)
        report["unanswered"] = UNANSWERED[:20]
        report["server_log"] = [line.rstrip() for line in server.lines if "dfx serve:" not in line][-30:]  # warnings and errors
        for line in report["unanswered"] + report["server_log"]:
            print(f"  {line}", file=sys.stderr)
    print(markdown(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def markdown(report: dict[str, Any]) -> str:
    off = report["offline"]
    lines = [f"CPU: {report['cpu']} ({report['cores']} vCPU); {report['images']} images; backend {off['backend']} {off['precision']}", "",
             "| run | requests/s | images/s | vs offline | p50 ms | p95 ms | p99 ms | server mean ms | mean batch | answers | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|",
             f"| offline `dfx scan` (mean of {' and '.join(map(str, off.get('runs_images_per_s', [])))}) | | {off['images_per_s']} | 1.00 | | | | | | | |"]
    for key, label in (("closed_loop", f"{report['concurrency']} clients, 1 image/request"), ("overload", "overload (open loop)"),
                       ("recovery", "right after overload")):
        run = report.get(key)
        if not run:
            continue
        if key == "overload":
            label += f", offered {run['offered_per_s']}/s"
        answers = ", ".join(f"{code}: {n}" for code, n in run["codes"].items())
        vs = f"{run['images_per_s'] / off['images_per_s']:.2f}"
        lines.append(f"| {label} | {run['requests_per_s']} | {run['images_per_s']} | {vs} | {run['p50_ms']} | {run['p95_ms']} | "
                     f"{run['p99_ms']} | {run['batches']['server_mean_ms']} | {run['batches']['mean_batch']} | {answers} | {run.get('peak_rss_mb', '')} |")
    closed = report.get("closed_loop")
    if closed:
        lines += ["", f"Batch sizes at {report['concurrency']} clients (batches per histogram bucket, upper bound): {closed['batches']['histogram']}",
                  "", f"The load generator itself (aiohttp, same machine) used {closed.get('client_cpu', '?')} of the {report['cores']} cores."]
    lines += ["", f"Server peak RSS over the whole run: {report['server_peak_rss_mb']} MB; exit code after SIGTERM: {report['server_exit_code']}"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
