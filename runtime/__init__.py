"""The lean runtime, one room per subpackage, in the order an image flows:

    runners/ (one Runner per backend) ─► scan/ (backend choice, decode pool, batches, the one row
    factory, result files, the Detector) ─► around it: serve/ (HTTP), ray/ (a cluster),
    provenance/ (C2PA columns, plugged into the scan as a row hook)

Never imports tensorflow. Its install is numpy + Pillow + onnxruntime (+ tensorrt and a CUDA
binding on GPU hosts); every framework is imported inside the Runner that uses it.
"""

# The rooms' row columns join the row schema here, so scan/ never imports the rooms around it.
from dfx.runtime.provenance import columns as _provenance_columns  # noqa: E402,F401

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
