"""The body every fuzz_<door>.py harness shares: instrument the door's Python code (dfx and the
libraries under it, so atheris's coverage guidance reaches Pillow's TIFF parser and the JSON/CSV
readers), then hand libFuzzer the target. Run through run.py, or directly with libFuzzer flags:

    python benchmarks/fuzz/fuzz_images.py OUT_CORPUS benchmarks/fuzz/corpus/images -max_total_time=60
"""

from __future__ import annotations

import sys


def main(door: str) -> None:
    from dfx.errors import require

    atheris = require("atheris", "fuzz", "the fuzz harnesses")
    with atheris.instrument_imports(include=["dfx", "PIL", "json", "csv", "base64", "starlette", "multipart", "python_multipart"]):
        from dfx.benchmarks.fuzz import targets

        _warm(door)
    target = targets.TARGETS[door]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()


def _warm(door: str) -> None:
    """Import (under instrumentation) what the target imports lazily, so its code is covered."""
    if door == "images":
        import importlib

        import dfx.images

        # The decoders dfx lets near bytes (IMAGE_FORMATS), imported now rather than at the
        # first open so their code is instrumented; the other plugins are never reached.
        for plugin in ("Jpeg", "Png", "WebP", "Bmp", "Tiff", "Gif", "Mpo", "Avif"):
            importlib.import_module(f"PIL.{plugin}ImagePlugin")
        importlib.import_module("PIL.ImageOps")
        dfx.images.open_formats()  # registers pi-heif's HEIF plugin (its Python side is instrumented too)
        assert len(dfx.images.IMAGE_FORMATS) == 8
    elif door == "bundle":
        import dfx.bundle  # noqa: F401
        import dfx.runtime.scan.select  # noqa: F401
        import dfx.signing  # noqa: F401
    elif door == "results":
        import dfx.runtime.scan.results  # noqa: F401
    elif door == "provenance":
        import dfx.runtime.provenance.c2pa  # noqa: F401
    elif door == "serve":
        import dfx.runtime.serve.oip  # noqa: F401
    elif door == "http":
        import importlib.util

        import starlette.formparsers  # noqa: F401  (python-multipart underneath)

        if importlib.util.find_spec("python_multipart"):
            import python_multipart  # noqa: F401

        import dfx.runtime.serve.app  # noqa: F401
