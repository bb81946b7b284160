"""Session fixtures of the export part: a copy of `trained_bundle` exported to fp32, fp16 and
calibrated int8 ONNX (real export, real calibration on the synthetic training split)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

# The CLI's default method; 256 of the 320 training images, enough for the float-conv choice
# (made on the calibration images) to carry over to the 80 parity images.
FIXTURE_CALIB_COUNT = 256
FIXTURE_CALIB_METHOD = "entropy"


@pytest.fixture(scope="session")
def exported_bundle(trained_bundle, synth_data, tmp_path_factory) -> Path:
    """A copy of trained_bundle with model.onnx, model.fp16.onnx, model.int8.onnx,
    calibration.json and parity.json."""
    pytest.importorskip("tf2onnx", reason="export needs tf2onnx (pip install 'dfx[export]')")
    from dfx.export.pipeline import ExportConfig, export_bundle

    out = Path(shutil.copytree(trained_bundle, tmp_path_factory.mktemp("exported") / "bundle"))
    # Parity on all 400 synthetic images, not the 80 of the validation split: there one flipped
    # decision is 1.25% and the int8 bar (98%) would hinge on a single image.
    config = ExportConfig(
        fp16=True, int8=True, calib_count=FIXTURE_CALIB_COUNT, calib_method=FIXTURE_CALIB_METHOD, parity=str(synth_data)
    )
    export_bundle(out, config, log=lambda _: None)
    return out
