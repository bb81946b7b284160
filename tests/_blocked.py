"""Run Python in a fresh interpreter with heavy frameworks blocked, as on a lean install.

One mechanism for every "works without tensorflow/TensorRT/..." test: a meta-path finder that
refuses the named top-level modules (and their submodules) with ModuleNotFoundError.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "openvino", "tensorrt", "tensorrt_lean",
         "tensorrt_dispatch", "cuda", "pycuda", "matplotlib")


def blocker_source(blocked: tuple[str, ...]) -> str:
    return textwrap.dedent(
        f"""
        import sys
        BLOCKED = {tuple(blocked)!r}

        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
                return None

        sys.meta_path.insert(0, Blocker())
        """
    )


def run_blocked(code: str, blocked: tuple[str, ...] = HEAVY, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run `code` (dedented) after installing the blocker; returns the finished process."""
    source = blocker_source(blocked) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, cwd=ROOT, timeout=timeout)
