"""What the numbers were measured on: CPU, cores, memory, GPU and driver, framework versions.

Everything is read from the machine (no hand-typed figures); every probe is optional and
never raises, so a bench on a bare host still reports what it can.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from typing import Any

from dfx.bundle import tool_versions
from dfx.runtime.runners.base import cpu_flags, cpu_model  # noqa: F401  (part of this module's machine section)

# Every framework a bench row can use, plus the ones that made the bundle's files.
FRAMEWORKS = ("numpy", "onnxruntime", "openvino", "tensorflow", "keras", "onnx", "tensorrt", "cuda-python", "pillow")


def cores() -> tuple[int, int]:
    """(physical, logical) cores available to this process."""
    from dfx.runtime.runners.base import physical_cores

    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(physical_cores(), logical), logical


def memory_gb() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        return None


def gpus() -> list[dict[str, str]]:
    """Name, driver and memory of each NVIDIA GPU via nvidia-smi; [] where there is none."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 4:
            rows.append({"name": parts[0], "driver": parts[1], "memory": parts[2], "compute_capability": parts[3]})
    return rows


def load_average() -> tuple[float, float, float] | None:
    """1/5/15-minute load, recorded so a reader can tell a quiet machine from a busy one."""
    try:
        return tuple(round(x, 2) for x in os.getloadavg())  # type: ignore[return-value]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    physical, logical = cores()
    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "physical_cores": physical,
        "logical_cores": logical,
        "memory_gb": memory_gb(),
        "gpus": gpus(),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "frameworks": tool_versions(*FRAMEWORKS),
        "load_average": load_average(),
    }


def describe(info: dict[str, Any]) -> str:
    """A few human lines for the terminal and the README."""
    lines = [
        f"CPU: {info['cpu']} ({info['physical_cores']} physical / {info['logical_cores']} logical cores"
        + (f", {', '.join(info['cpu_flags'])}" if info.get("cpu_flags") else "")
        + ")"
        + (f", {info['memory_gb']} GiB RAM" if info.get("memory_gb") else ""),
    ]
    if info.get("gpus"):
        for gpu in info["gpus"]:
            lines.append(f"GPU: {gpu['name']} (driver {gpu['driver']}, {gpu['memory']}, compute capability {gpu['compute_capability']})")
    else:
        lines.append("GPU: none found (nvidia-smi absent or no device)")
    lines.append(f"OS: {info['os']}, Python {info['python']}")
    lines.append("Software: " + ", ".join(f"{k} {v}" for k, v in sorted(info["frameworks"].items())))
    if info.get("load_average"):
        lines.append("Load average at start (1/5/15 min): " + " / ".join(str(x) for x in info["load_average"]))
    return "\n".join(lines)
