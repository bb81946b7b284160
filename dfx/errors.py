"""Typed errors. The CLI prints a DfxError as one line (plus its hint) and exits 2, never a traceback.

Every error dfx raises on purpose is a DfxError; each room defines its own beside the code that
raises it:

    DfxError                          an error a user can act on; `hint` says what to try
    ├── MissingExtraError (ImportError)   an optional framework is missing: the pip extra to install
    ├── dfx: BundleError (bundle: manifest, hashes, paths), SignatureError (signing),
    │        ImageError (images: one input's reason), DatasetError (datasets),
    │        ParityError (parity: a form misses its tolerance)
    ├── trainer: TrainingError
    ├── export: ExportError, ValidationError (onnx_export: a form against Keras, with the
    │           measured difference), CalibrationError (int8), EngineBuildError (tensorrt)
    ├── runtime/runners: RunnerError (base), CudaError (cuda: carries the binding's error code)
    ├── runtime/scan: SelectError (select), ModelLoadError (model), ParityCheckError (parity_check)
    ├── runtime/serve: ServeConfigError (config), QueueFull, DeadlineExceeded, NotReady
    │                  (batcher: 503/504), OipError (oip: a 400 with the field), ReloadError (service)
    ├── runtime/provenance: ProvenanceError (c2pa)
    └── benchmarks: BenchError (harness)
"""

from __future__ import annotations

import importlib
from types import ModuleType


class DfxError(Exception):
    """An error a user can act on. `hint` says what to try."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


class MissingExtraError(DfxError, ImportError):
    """An optional framework is not installed; the message names the pip command that fixes it."""

    def __init__(self, module: str, extra: str, why: str):
        super().__init__(
            f"{why} needs the Python module '{module}', which is not installed",
            hint=f"pip install 'dfx[{extra}]'",
        )
        self.module = module
        self.extra = extra


def require(module: str, extra: str, why: str) -> ModuleType:
    """Import an optional framework or raise MissingExtraError with the install hint."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name and not module.startswith(exc.name.split(".")[0]):
            raise  # the module exists but one of *its* imports failed: show that, not ours
        raise MissingExtraError(module, extra, why) from exc
