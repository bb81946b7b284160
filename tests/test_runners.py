"""One parity checker (dfx.parity.compare against the Keras model's logits) run against every
Runner this machine can start: ONNX Runtime CPU fp32/int8 and OpenVINO here; ONNX Runtime CUDA
and TensorRT (marked gpu) where a GPU is present."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import has_gpu
from dfx import parity
from dfx.bundle import Bundle
from dfx.datasets import balanced_sample, splits_from_record
from dfx.images import load_image
from dfx.runtime.runners.base import Runner, RunnerError, run_batches

GPU, GPU_REASON = has_gpu()
PARITY_IMAGES = 320


@pytest.fixture(scope="module")
def reference(exported_bundle):
    """(images, labels, Keras logits) on a balanced sample of the bundle's whole data set.

    Runner parity is about numerical faithfulness, not generalisation, so training images count
    too; a few hundred images make the 98% agreement bar mean more than "at most one flip"."""
    from dfx.runtime.runners.keras import KerasRunner

    bundle = Bundle.open(exported_bundle)
    train, val = splits_from_record(bundle.manifest["data"])
    samples = balanced_sample(train + val, PARITY_IMAGES, seed=1)
    images = np.stack([load_image(s.path, bundle.input_size, bundle.fit) for s in samples])
    labels = np.array([s.label for s in samples])
    with KerasRunner(str(bundle.file("model.keras"))) as keras_runner:
        logits = run_batches(keras_runner, images, 32)
    return images, labels, logits


def check_parity(runner: Runner, form: str, reference, threshold: float) -> dict:
    """The checker every runner goes through: odd batch sizes, a batch of one, then compare()."""
    images, labels, keras_logits = reference
    with runner:
        logits = run_batches(runner, images, batch_size=24)
        single = runner.infer(images[:1])
        assert logits.dtype == np.float32 and logits.shape == (len(images),)
        assert single.shape == (1,)
        np.testing.assert_allclose(single, logits[:1], rtol=1e-3, atol=1e-3)  # batch composition does not matter
    report = parity.compare(form, keras_logits, logits, labels, threshold)
    assert report["passed"], report["failures"]
    return report


def ort(bundle: Bundle, role: str, precision: str, device: str = "cpu") -> Runner:
    from dfx.runtime.runners.ort import OrtRunner

    return OrtRunner(str(bundle.file(bundle.files_with_role(role)[0])), device=device, precision=precision, input_size=bundle.input_size)


@pytest.mark.parametrize("role, precision", [("onnx-fp32", "fp32"), ("onnx-int8", "int8"), ("onnx-cpu-int8", "int8")])
def test_ort_cpu(exported_bundle, reference, role, precision):
    bundle = Bundle.open(exported_bundle)
    report = check_parity(ort(bundle, role, precision), f"ort-cpu-{precision}", reference, bundle.threshold)
    if precision == "fp32":
        assert report["max_abs_diff"] <= 1e-4


@pytest.mark.parametrize("role", ["onnx-int8", "onnx-cpu-int8"])
def test_ort_cpu_int8_logits_are_those_of_a_default_session(exported_bundle, reference, role):
    """The CPU runner turns off ORT's QDQ propagation (for speed); that must not move a logit."""
    import onnxruntime

    bundle = Bundle.open(exported_bundle)
    path = str(bundle.file(bundle.files_with_role(role)[0]))
    images = reference[0][:16]
    default = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    expected = default.run(None, {default.get_inputs()[0].name: images.astype(np.float32)})[0].reshape(-1)
    with ort(bundle, role, "int8") as runner:
        np.testing.assert_allclose(runner.infer(images), expected, rtol=0, atol=1e-5)


# OpenVINO goes through the same checker in test_openvino.py (every compile mode, every file).


def test_chosen_runner_passes_too(exported_bundle, reference):
    """Whatever auto picks on this machine meets its precision's tolerance."""
    from dfx.runtime.scan.select import choose_runner

    runner, _ = choose_runner(exported_bundle)
    check_parity(runner, f"{runner.backend}-{runner.precision}", reference, Bundle.open(exported_bundle).threshold)


def test_runner_contract_checks_input(exported_bundle):
    bundle = Bundle.open(exported_bundle)
    with ort(bundle, "onnx-fp32", "fp32") as runner:
        h, w = bundle.input_size
        with pytest.raises(TypeError, match="uint8"):
            runner.infer(np.zeros((1, h, w, 3), np.float32))
        with pytest.raises(ValueError, match="takes"):
            runner.infer(np.zeros((1, h + 1, w, 3), np.uint8))
    with pytest.raises(RunnerError, match="is not active"):
        runner.infer(np.zeros((1, h, w, 3), np.uint8))


# ---- GPU ------------------------------------------------------------------------------------

gpu = [pytest.mark.gpu, pytest.mark.skipif(not GPU, reason=f"no GPU: {GPU_REASON}")]


def _ort_cuda_or_skip() -> None:
    from dfx.runtime.scan.select import ort_cuda_status

    ok, why = ort_cuda_status()
    if not ok:
        pytest.skip(why)


@pytest.mark.parametrize("role, precision", [("onnx-fp32", "fp32"), ("onnx-fp16", "fp16")])
@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason=f"no GPU: {GPU_REASON}")
def test_ort_cuda(exported_bundle, reference, role, precision):
    _ort_cuda_or_skip()
    bundle = Bundle.open(exported_bundle)
    check_parity(ort(bundle, role, precision, device="cuda"), f"ort-cuda-{precision}", reference, bundle.threshold)


@pytest.fixture(scope="module")
def engine_bundle(exported_bundle, tmp_path_factory):
    """A copy of the exported bundle with TensorRT engines built on this GPU (fp16 and int8)."""
    from dfx.runtime.runners import trt

    if trt.installed_version() is None:
        pytest.skip("TensorRT is not installed (pip install 'dfx[trt]')")
    from dfx.export.pipeline import ExportConfig, export_bundle

    out = tmp_path_factory.mktemp("engines") / "bundle"
    shutil.copytree(exported_bundle, out)
    export_bundle(out, ExportConfig(fp16=True, int8=True, engine=True, max_batch=64, calib_count=64, calib_method="percentile"), log=lambda _: None)
    return Path(out)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason=f"no GPU: {GPU_REASON}")
def test_tensorrt(engine_bundle, reference, precision):
    from dfx.runtime.scan.select import choose_runner

    runner, choice = choose_runner(engine_bundle, "trt", precision)
    assert runner.backend == "trt" and "matches this GPU" in choice.reason
    check_parity(runner, f"trt-{precision}", reference, Bundle.open(engine_bundle).threshold)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason=f"no GPU: {GPU_REASON}")
def test_tensorrt_pipelined_graphs_and_timings(engine_bundle, reference):
    from dfx.runtime.scan.select import choose_runner

    images = reference[0]
    runner, _ = choose_runner(engine_bundle, "trt", "fp16")
    with runner:
        plain = run_batches(runner, images, 16)
        pipelined = np.concatenate(list(runner.infer_many(images[i : i + 16] for i in range(0, len(images), 16))))
        np.testing.assert_array_equal(plain, pipelined)
        assert set(runner.last_timings) >= {"h2d_ms", "compute_ms", "d2h_ms"}
        report = runner.profile(images[:16], iters=5, warmup=1)
        assert report["compute_ms"] > 0 and report["pipelined_ms_per_batch"] > 0
    runner.cuda_graph, runner.max_batch = True, 16
    with runner:
        graphed = run_batches(runner, images, 16)
    np.testing.assert_allclose(graphed, plain, rtol=1e-3, atol=1e-3)
