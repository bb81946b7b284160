"""What `auto` serves, measured against its peers: ONNX Runtime fp32 of the same model, and
OpenVINO's own `benchmark_app` on the same file.

The bench's rows say how fast each backend runs; a user choosing dfx over plain OpenVINO asks two
more things. Is the form dfx serves by default faster than the plain fp32 model? And does dfx's
runner (batched synchronous calls, uint8 pixels converted inside the graph, Python around it)
lose throughput that OpenVINO itself would get from the same file? `summary` answers both:
the auto form's best row over the batch sizes against ONNX Runtime fp32's best row, and against
`benchmark_app` (THROUGHPUT hint, its own streams and asynchronous requests, random inputs) on
the very file and precision the auto form runs. For the bf16 form that file is the graph the
runner compiles (weighted layers converted to bf16, saved as OpenVINO IR) and `-infer_precision
f32` keeps the rest f32, as the runner does; benchmark_app's default on a bf16 CPU (every layer
bf16, numerics that parity did not vouch for) is timed too and reported beside it, not as the peer.
The peer runs before and after the rows and its better run counts, so a burst of load from
elsewhere cannot make dfx look better than it is.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from dfx.bundle import Bundle

BACKEND_OF_CHOICE = {"openvino": "ov", "ort-cpu": "ort", "ort-cuda": "ort-cuda", "trt": "trt"}


def auto_backend(bundle: Bundle) -> tuple[str, str]:
    """(bench backend name, why) of the form `dfx scan --backend auto` serves here, e.g. "ov-bf16"."""
    from dfx.runtime.scan import select

    choice, _ = select.plan(bundle, "auto")
    if choice.backend == "keras":
        return "keras", str(choice)
    return f"{BACKEND_OF_CHOICE[choice.backend]}-{choice.precision}", str(choice)


def benchmark_app(model: str, shape: tuple[int, ...], seconds: float, infer_precision: str | None) -> dict[str, Any]:
    """Run OpenVINO's benchmark_app (THROUGHPUT hint, every core: its UI allows no thread count
    with a hint) on `model`; {"images_per_s", "command"} or {"error", "command"}."""
    # benchmark_app's console script, run by this interpreter (its module has no __main__ guard)
    entry = "import sys; from openvino.tools.benchmark.main import main; sys.exit(main())"
    command = [sys.executable, "-c", entry, "-m", model, "-d", "CPU", "-hint", "throughput", "-t", f"{seconds:g}",
               "-shape", "[" + ",".join(map(str, shape)) + "]"]
    if infer_precision:
        command += ["-infer_precision", infer_precision]
    shown = " ".join(["benchmark_app", *command[3:]])
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 300)
    except subprocess.TimeoutExpired:
        return {"error": "benchmark_app did not finish", "command": shown}
    found = re.search(r"Throughput:\s+([0-9.]+)\s+FPS", done.stdout)
    if done.returncode != 0 or not found:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"benchmark_app failed (exit {done.returncode}): {tail[0]}", "command": shown}
    return {"images_per_s": float(found.group(1)), "command": shown}


def peer_model(bundle: Bundle, name: str, workdir: Path) -> tuple[str, str]:
    """(the file benchmark_app reads, the -infer_precision that matches the runner) for an
    OpenVINO bench backend: the bundle's own file, or for bf16 the runner's graph as IR."""
    from dfx.benchmarks.harness import make_runner

    runner, file = make_runner(bundle, name, None)
    if runner.precision != "bf16":
        return str(bundle.file(file)), "f32"
    import openvino as ov

    from dfx.runtime.runners.openvino import bf16_weighted_layers

    model = ov.Core().read_model(str(bundle.file(file)))
    bf16_weighted_layers(model, ov)
    path = workdir / "bf16_weighted_layers.xml"
    ov.save_model(model, str(path), compress_to_fp16=False)
    return str(path), "f32"


def openvino_peer(bundle: Bundle, name: str, batch: int, seconds: float) -> dict[str, Any]:
    """benchmark_app on the file OpenVINO backend `name` runs, at batch 1 and at `batch` (dfx
    scan's batch): the better of the two is the peer."""
    height, width = bundle.input_size
    with tempfile.TemporaryDirectory(prefix="dfx-peer-") as tmp:
        model, precision = peer_model(bundle, name, Path(tmp))
        runs = {b: benchmark_app(model, (b, height, width, 3), seconds, precision) for b in sorted({1, batch})}
        best = max((b for b in runs if "images_per_s" in runs[b]), key=lambda b: runs[b]["images_per_s"], default=None)
        out: dict[str, Any] = {"tool": "benchmark_app", "hint": "THROUGHPUT", "infer_precision": precision,
                               "seconds": seconds, "runs": {str(b): r for b, r in runs.items()}}
        if best is None:
            return {**out, "error": next(iter(runs.values()))["error"]}
        out.update(images_per_s=runs[best]["images_per_s"], batch=best)
        if name == "ov-bf16":  # OpenVINO's own bf16 default, every layer bf16: context, not the peer
            out["all_layers_bf16"] = benchmark_app(model, (best, height, width, 3), seconds, None)
        return out


def best_rows(rows: list[dict[str, Any]], mode: str = "inference") -> dict[str, dict[str, Any]]:
    """Each backend's fastest row of `mode` (the bundle's own rows, not --against's)."""
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["mode"] != mode or row.get("against") or not row.get("images_per_s"):
            continue
        if row["images_per_s"] > best.get(row["backend_name"], {}).get("images_per_s", 0):
            best[row["backend_name"]] = row
    return best


def summary(rows: list[dict[str, Any]], auto: str, why: str, peers: list[dict[str, Any]]) -> dict[str, Any]:
    """The auto form's best rate against ORT fp32's best, the OpenVINO peer, and its own e2e row."""
    best = best_rows(rows)
    out: dict[str, Any] = {"backend": auto, "choice": why}
    mine = best.get(auto)
    if mine is None:
        return {**out, "error": f"no timed inference row for {auto}"}
    out.update(images_per_s=mine["images_per_s"], batch=mine["batch"])
    if "ort-fp32" in best:
        out["ort_fp32_images_per_s"] = best["ort-fp32"]["images_per_s"]
        out["ratio_vs_ort_fp32"] = round(mine["images_per_s"] / best["ort-fp32"]["images_per_s"], 3)
    good = [p for p in peers if p.get("images_per_s")]
    if good:
        peer = max(good, key=lambda p: p["images_per_s"])
        out["peer"] = {**peer, "measured": len(good)}
        out["ratio_vs_peer"] = round(mine["images_per_s"] / peer["images_per_s"], 3)
    elif peers:
        out["peer"] = peers[0]
    e2e = best_rows(rows, "e2e").get(auto)
    if e2e:  # against pure inference of the same batch, timed in alternating slices (harness)
        out.update(e2e_images_per_s=e2e["images_per_s"], e2e_batch=e2e["batch"], e2e_share_of_inference=e2e.get("vs_inference"))
    return out
