"""The TensorRT build path's CPU-checkable parts: the GPU refusal (before TensorRT is touched),
strongly-typed flags across TensorRT 10/11 enums, engine naming, and light imports."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest


def test_no_gpu_refusal_is_clear_and_never_imports_tensorrt():
    from conftest import has_gpu

    from dfx.export.tensorrt import EngineBuildError, gpu_or_raise

    ok, reason = has_gpu()
    if ok:
        pytest.skip(f"this host has a GPU ({reason})")
    with pytest.raises(EngineBuildError) as info:
        gpu_or_raise()
    assert "GPU" in str(info.value) and "dfx[trt]" in info.value.hint
    assert "tensorrt" not in sys.modules


def test_network_flags_strongly_typed_on_trt10_and_trt11():
    from dfx.export.tensorrt import network_flags

    # TensorRT 10: EXPLICIT_BATCH (deprecated, must not be passed) and STRONGLY_TYPED = 1.
    trt10 = SimpleNamespace(NetworkDefinitionCreationFlag=SimpleNamespace(EXPLICIT_BATCH=0, STRONGLY_TYPED=1))
    assert network_flags(trt10) == 1 << 1
    # TensorRT 11: EXPLICIT_BATCH is gone; STRONGLY_TYPED is kept (ignored, always typed).
    trt11 = SimpleNamespace(NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=0, PREFER_AOT_PYTHON_PLUGINS=1))
    assert network_flags(trt11) == 1 << 0
    # A later release without the flag at all: nothing to set.
    assert network_flags(SimpleNamespace(NetworkDefinitionCreationFlag=SimpleNamespace())) == 0


def test_engine_names_key_gpu_trt_version_and_precision():
    from dfx.export.tensorrt import engine_name

    assert engine_name("int8", "9.0", "10.8.0.43", False) == "engines/int8-sm90-trt10.8.0.43.engine"
    assert engine_name("fp16", "8.9", "11.0.0", True) == "engines/fp16-sm89-trt11.0.0-lean.engine"


def test_export_modules_import_without_optional_frameworks():
    """Polygraphy's rule: importing the export part needs none of its heavy frameworks."""
    from _blocked import run_blocked

    out = run_blocked(
        """
        import dfx.export.commands, dfx.export.pipeline, dfx.export.int8, dfx.export.fp16
        import dfx.export.onnx_export, dfx.export.tensorrt, dfx.export.parity_report, dfx.export.data
        import argparse; parser = argparse.ArgumentParser(); dfx.export.commands.register(parser.add_subparsers())
        assert parser.parse_args(['export', 'b', '--int8']).int8
        print('ok')
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
