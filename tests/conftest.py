"""Shared fixtures. Small real models, built once per session (32-64 px, a few hundred
synthetic images): the CPU suite exercises the real code paths, nothing is mocked.

Fixture modules, one per part, keep ownership clear:
  _fixtures_train.py   synth_data, trained_bundle
  _fixtures_export.py  exported_bundle
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from _fixtures_train import *  # noqa: F401,F403
from _fixtures_export import *  # noqa: F401,F403

FACES = Path(os.environ.get("DFX_FACES", Path(__file__).resolve().parents[1].parent / "shared" / "data" / "faces"))


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    """../shared/data/faces (real photos vs StyleGAN2), present only on dfx's dev machines."""
    if not (FACES / "real").is_dir() or not (FACES / "fake").is_dir():
        pytest.skip(f"the faces dataset is absent ({FACES}); set DFX_FACES to run these tests")
    return FACES


def has_gpu() -> tuple[bool, str]:
    """(present, reason): probes the CUDA runtime without touching TensorRT."""
    try:
        from dfx.runtime.runners import cuda
    except ImportError as exc:
        return False, f"dfx.runtime.runners.cuda unavailable ({exc})"
    return cuda.probe()
