"""Bench output: the terminal table, the JSON file, the PNG bar chart."""

from __future__ import annotations

import json
import math
import os
from typing import Any

from dfx.bundle import json_default

COLUMNS = (  # (header, row key, format)
    ("mode", "mode", "{}"),
    ("bundle", "bundle_label", "{}"),
    ("backend", "backend_name", "{}"),
    ("batch", "batch", "{}"),
    ("images/s", "images_per_s", "{:.1f}"),
    ("p50 ms", "p50_ms", "{:.1f}"),
    ("p95 ms", "p95_ms", "{:.1f}"),
    ("p99 ms", "p99_ms", "{:.1f}"),
    ("x keras", "ratio_vs_keras", "{:.2f}"),
    ("x against", "ratio_vs_against", "{:.2f}"),
    ("roof %", "roof_fraction", "{:.0%}"),
    ("e2e/pure", "vs_inference", "{:.0%}"),
    ("c2pa on/off", "vs_e2e_off", "{:.0%}"),
)


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width text table (also valid Markdown when pasted between pipes)."""
    keys = [c for c in COLUMNS if any(r.get(c[1]) is not None for r in rows)]
    body = []
    for row in rows:
        if row.get("error"):
            body.append([row["mode"], row["backend_name"], str(row.get("batch") or "-"), "error: " + row["error"]])
        else:
            body.append([_cell(row, key, fmt) for _, key, fmt in keys])
    headers = [h for h, _, _ in keys]
    widths = [max([len(headers[i])] + [len(r[i]) for r in body if len(r) == len(headers)]) for i in range(len(headers))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |", "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for cells in body:
        if len(cells) != len(headers):
            lines.append("| " + " | ".join(cells) + " |")
        else:
            lines.append("| " + " | ".join(c.rjust(w) if i >= 2 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |")
    return "\n".join(lines)


def text(result: dict[str, Any]) -> str:
    """Everything a reader needs, for the terminal: machine, table, limits, TRT split, memory."""
    from dfx.benchmarks import machine

    rows = result["rows"]
    against = result.get("against")
    if against:  # label both bundles' rows, and say what "x against" divides by
        rows = [{**r, "bundle_label": "against" if r.get("against") else "this"} for r in rows]
    parts = [machine.describe(result["machine"]), "", table(rows)]
    if against:
        size = "x".join(str(s) for s in against["input_size"])
        parts.append(f"against: {against['bundle']} ({against.get('architecture') or '?'}, {size} px), timed in the same slices; "
                     "x against = this bundle's images/s over its images/s at the same backend and batch")
    files = {r["backend_name"]: r["file"] for r in result["rows"] if r.get("file") and not r.get("against")}
    if files:
        parts.append("files: " + "; ".join(f"{name} {file}" for name, file in files.items()))
    if result.get("skipped"):
        parts.append("")
        parts.extend(f"skipped {name}: {why}" for name, why in result["skipped"].items())
    roof = result.get("roofline")
    if roof:
        parts.append("")
        for precision, cost in roof["graph"].items():
            if "error" in cost:
                parts.append(f"graph {precision}: cannot count ({cost['error']})")
                continue
            parts.append(
                f"graph {precision}: {cost['macs_per_image'] / 1e9:.3f} GMAC = {cost['flops_per_image'] / 1e9:.2f} GFLOP per image; "
                f"weights {cost['weight_bytes'] / 1e6:.2f} MB, input {cost['input_bytes_per_image'] / 1e3:.0f} kB per image"
            )
        rates = roof["machine"]
        int8 = f", int8 GEMM {rates['int8_gops']:.1f} GOP/s" if rates.get("int8_gops") else ""
        int8 += f", bf16 GEMM {rates['bf16_gflops']:.1f} GFLOP/s" if rates.get("bf16_gflops") else ""
        parts.append(f"machine: fp32 GEMM {rates['fp32_gflops']:.1f} GFLOP/s{int8}, copy bandwidth {rates['bandwidth_gb_s']:.1f} GB/s")
        parts.append("roof % = achieved ops/s / min(GEMM rate, ops per minimum byte x bandwidth); minimum bytes = " + roof["minimum_bytes"])
    for name, by_batch in (result.get("trt_profile") or {}).items():
        for batch, prof in by_batch.items():
            if "profile_error" in prof:
                parts.append(f"{name} batch {batch}: profile failed ({prof['profile_error']})")
            else:
                parts.append(
                    f"{name} batch {batch}: H2D {prof['h2d_ms']:.2f} ms, compute {prof['compute_ms']:.2f} ms, D2H {prof['d2h_ms']:.2f} ms, "
                    f"pipelined {prof['pipelined_ms_per_batch']:.2f} ms/batch -> bottleneck: {prof['bottleneck']}"
                )
    memory = result.get("scan_memory")
    if memory:
        parts.append("")
        if "error" in memory:
            parts.append(f"dfx scan memory probe failed: {memory['error']}")
        else:
            parts.append(
                f"dfx scan (ORT, fresh process, {memory['rows']} files): peak RSS {memory['peak_rss_mb']:.0f} MB, "
                f"{memory['images_per_s']:.1f} images/s, tensorflow imported: {memory['tensorflow_imported']}"
            )
    if result.get("auto"):
        parts.extend(["", auto_text(result["auto"])])
    stages = result.get("whole_photo_stages_ms")
    if stages:
        parts.append("")
        names = {"small_simplejpeg": "finder view (DCT decode)", "find": "faces (float finder)", "find_int8": "faces (INT8 finder)",
                 "full_simplejpeg": "full decode", "region_cuts": "face cuts", "crop_window": "crop + window", "infer": "inference"}
        shown = ", ".join(f"{label} {stages[key]:.1f}" for key, label in names.items() if stages.get(key))
        parts.append(f"whole photos ({stages['photos']} of --images, min_face {stages['min_face']}, "
                     f"{stages['faces_per_image']} faces each), ms per photo on one thread: {shown}")
    return "\n".join(parts)


def auto_text(auto: dict[str, Any]) -> str:
    """The summary lines: what `auto` serves, against ORT fp32, OpenVINO's benchmark_app, e2e."""
    if "error" in auto:
        return f"auto ({auto['choice']}): {auto['error']}"
    lines = [f"auto serves {auto['backend']} ({auto['choice']}): best {auto['images_per_s']:.1f} images/s at batch {auto['batch']}"]
    if "ratio_vs_ort_fp32" in auto:
        lines.append(f"  x ORT fp32 (its best batch, {auto['ort_fp32_images_per_s']:.1f} images/s): {auto['ratio_vs_ort_fp32']:.2f}")
    peer = auto.get("peer")
    if peer and "error" in peer:
        lines.append(f"  OpenVINO benchmark_app peer failed: {peer['error']}")
    elif peer:
        lines.append(f"  x OpenVINO benchmark_app on the same file ({peer['hint']}, -infer_precision {peer['infer_precision']}, "
                     f"best of batch 1/{max(map(int, peer['runs']))}, {peer['measured']} runs: {peer['images_per_s']:.1f} images/s): "
                     f"{auto['ratio_vs_peer']:.2f}")
        every = peer.get("all_layers_bf16") or {}
        if every.get("images_per_s"):
            lines.append(f"  (benchmark_app's own bf16 default, every layer bf16 - numerics parity did not vouch for: "
                         f"{every['images_per_s']:.1f} images/s)")
    if auto.get("e2e_share_of_inference") is not None:
        lines.append(f"  dfx scan end to end (decode included, batch {auto['e2e_batch']}): {auto['e2e_images_per_s']:.1f} images/s = "
                     f"{auto['e2e_share_of_inference']:.0%} of pure inference at that batch")
    return "\n".join(lines)


def write_json(result: dict[str, Any], path: str | os.PathLike) -> None:
    with open(path, "w") as handle:
        json.dump(result, handle, indent=2, default=json_default)
        handle.write("\n")


def plot(result: dict[str, Any], path: str | os.PathLike) -> None:
    """Grouped bars: images/s per backend, one group per batch size (+ end-to-end), log scale."""
    from dfx.errors import require

    require("matplotlib", "bench", "--plot")
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    # The --against bundle's bars are their own series.
    rows = [{**r, "backend_name": r["backend_name"] + (" (against)" if r.get("against") else "")} for r in result["rows"] if r.get("images_per_s")]
    groups = sorted({(r["mode"] != "inference", r["batch"]) for r in rows})
    names = list(dict.fromkeys(r["backend_name"] for r in rows))
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups) + 2), 4.5))
    for i, name in enumerate(names):
        values = []
        for e2e, batch in groups:
            match = [r for r in rows if r["backend_name"] == name and r["batch"] == batch and (r["mode"] != "inference") == e2e]
            values.append(match[0]["images_per_s"] if match else 0.0)
        ax.bar([g + i * width for g in range(len(groups))], values, width, label=name)
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))])
    ax.set_xticklabels([("e2e " if e2e else "") + f"batch {batch}" for e2e, batch in groups])
    ax.set_ylabel("images / s")
    if rows and max(r["images_per_s"] for r in rows) / max(min(r["images_per_s"] for r in rows), 1e-9) > 30:
        ax.set_yscale("log")
    size = "x".join(str(s) for s in result.get("input_size", []))
    ax.set_title(f"dfx bench: {size} px on {result['machine']['cpu']}", fontsize=10)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
