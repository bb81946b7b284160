"""The lean runtime: Runners, backend choice, the scan pipeline and the Detector API.

Never imports tensorflow. Its install is numpy + Pillow + onnxruntime (+ tensorrt and a CUDA
binding on GPU hosts); every framework is imported inside the Runner that uses it.
"""

# Lazy shortcuts (`from dfx.runtime import Detector`) that import nothing until used.
_EXPORTS = {
    "Detector": "dfx.runtime.scan.detector",
    "Result": "dfx.runtime.scan.results",
    "choose_runner": "dfx.runtime.scan.select",
    "iter_results": "dfx.runtime.scan.pipeline",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dfx.runtime' has no attribute {name!r}")
