"""Session fixtures of the trainer part: a synthetic real/fake tree and a small model trained on
it. Real code, real training: 400 images at 64 px, a short CPU run (well under a minute of
training on 2 cores)."""

from __future__ import annotations

from pathlib import Path

import pytest

SYNTH_N = 400
SYNTH_SIZE = 64


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """real/{camera,scan} and fake/{tconv,upconv}, 100 images each, 64 px."""
    from dfx.synth import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, n=SYNTH_N, size=SYNTH_SIZE, seed=0, progress=False)
    return root


def fixture_train_config(data: Path, out: Path, **changes):
    """The fixture's recipe: the seed CNN with the seed's augmentation and plain shuffled
    epochs (one fixed, well-measured model for every parity test downstream), a smaller batch,
    so the short run makes enough optimiser steps (320 training images / 128 would be 3 steps
    per epoch), and a fixed number of epochs (measured: val AUC 0.957 after 8 epochs, ~55 s of
    CPU). The default architecture has its own small fixture (test_generalize.py)."""
    from dfx.trainer.train import TrainConfig

    settings = dict(
        data=str(data),
        out=str(out),
        size=SYNTH_SIZE,
        fit="crop",  # the synthetic traces live at native resolution; the margins below were measured so
        epochs=10,
        batch_size=32,
        learning_rate=1e-3,
        warmup_epochs=1,
        patience=10,
        progress=False,
        architecture="seed_cnn",
        augment="seed",
        train_canvas=None,
        balance=False,
    )
    settings.update(changes)
    return TrainConfig(**settings)


@pytest.fixture(scope="session")
def trained_bundle(synth_data, tmp_path_factory) -> Path:
    """A bundle folder trained on synth_data at 64 px (validation AUC >= 0.95)."""
    pytest.importorskip("tensorflow", reason="training needs tensorflow (pip install 'dfx[train]')")
    import tensorflow as tf

    from dfx.trainer.train import train

    # Bit-identical training on every run, so the parity tolerances downstream (int8 >= 98%
    # agreement) judge one fixed model, not whichever one thread scheduling produced.
    tf.config.experimental.enable_op_determinism()
    out = tmp_path_factory.mktemp("bundles") / "synth"
    bundle = train(fixture_train_config(synth_data, out))
    return bundle.root
