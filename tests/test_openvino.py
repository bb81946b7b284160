"""OpenVinoRunner: the parity checker (dfx.parity.compare vs Keras, export tolerances) on each of
its compile modes, its per-shape compile cache, and its behaviour without the extra."""

from __future__ import annotations


import numpy as np
import pytest

from dfx.bundle import Bundle
from dfx.parity import precision_of
from dfx.runtime.runners import openvino
from test_runners import check_parity, reference  # noqa: F401  (the shared checker and its Keras reference fixture)

needs_openvino = pytest.mark.skipif(not openvino.available(), reason="openvino is not installed (pip install 'dfx[openvino]')")
# form -> the bundle role of its file: fp32, TensorRT's symmetric int8, the CPU's uint8 twin
ROLES = {"fp32": "onnx-fp32", "int8": "onnx-int8", "cpu-int8": "onnx-cpu-int8"}


def ov_runner(bundle: Bundle, form: str, **options) -> openvino.OpenVinoRunner:
    path = str(bundle.file(bundle.files_with_role(ROLES[form])[0]))
    return openvino.OpenVinoRunner(path, precision=precision_of(form), input_size=bundle.input_size, **options)


@needs_openvino
@pytest.mark.parametrize("precision", ["fp32", "int8", "cpu-int8"])
@pytest.mark.parametrize(
    "options",
    [{}, {"static_batch": False}, {"uint8_input": False, "hint": "THROUGHPUT", "threads": 1}, {"sub_batch": 5}],
    ids=["default", "dynamic-batch", "float-input-throughput", "chunks-of-5"],
)
def test_parity_against_keras(exported_bundle, reference, precision, options):  # noqa: F811
    bundle = Bundle.open(exported_bundle)
    report = check_parity(ov_runner(bundle, precision, **options), f"openvino-{precision}", reference, bundle.threshold)
    if precision == "fp32":
        assert report["max_abs_diff"] <= 1e-4


@needs_openvino
@pytest.mark.parametrize("form", ["int8", "cpu-int8"])
def test_int8_matches_onnx_runtime_on_the_same_file(exported_bundle, reference, form):  # noqa: F811
    """No second calibration: OpenVINO runs the very Q/DQ file ORT runs, so the logits agree
    far more closely than either agrees with Keras."""
    from dfx.runtime.runners.ort import OrtRunner

    bundle = Bundle.open(exported_bundle)
    images = reference[0][:32]
    path = str(bundle.file(bundle.files_with_role(ROLES[form])[0]))
    with ov_runner(bundle, form) as ov, OrtRunner(path, precision="int8") as ort:
        ov_logits, ort_logits = ov.infer(images), ort.infer(images)
    spread = float(np.ptp(ort_logits))
    assert spread > 0
    assert np.max(np.abs(ov_logits - ort_logits)) <= 0.05 * spread + 1e-3


@needs_openvino
def test_compiles_once_per_batch_shape_and_bounds_the_cache(exported_bundle, reference):  # noqa: F811
    bundle = Bundle.open(exported_bundle)
    images = reference[0]
    runner = ov_runner(bundle, "fp32", max_shapes=2)
    with runner:
        first = runner.infer(images[:4])
        compiled = runner._compiled[4][0]
        assert np.array_equal(runner.infer(images[:4]), first)
        assert runner._compiled[4][0] is compiled  # the same shape reuses its compiled model
        runner.infer(images[:3])
        runner.infer(images[:5])
        assert list(runner._compiled) == [3, 5]  # least recently used shape (4) dropped
        np.testing.assert_allclose(runner.infer(images[:4]), first, rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match="takes"):
            runner.infer(np.zeros((1, 7, 7, 3), np.uint8))
    assert not runner._compiled and not runner.is_active
    assert runner.describe()["backend"] == "openvino"


@needs_openvino
def test_unreadable_model_is_a_runner_error(tmp_path):
    from dfx.runtime.runners.base import RunnerError

    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(RunnerError, match="OpenVINO cannot read"):
        openvino.OpenVinoRunner(str(bad)).activate()


def test_without_the_extra_nothing_breaks_until_used(tmp_path):
    """With openvino blocked: importing works, available() is False, activation names the extra."""
    from _blocked import run_blocked

    done = run_blocked(
        """
        from dfx.runtime.runners import openvino
        from dfx.errors import MissingExtraError
        assert openvino.available() is False
        runner = openvino.OpenVinoRunner('model.onnx', precision='int8')
        try:
            runner.activate()
        except MissingExtraError as exc:
            print(exc.hint)
        """,
        blocked=("openvino",),
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'dfx[openvino]'" in done.stdout


def test_rejects_bad_options():
    with pytest.raises(ValueError, match="precision"):
        openvino.OpenVinoRunner("m.onnx", precision="int4")
    with pytest.raises(ValueError, match="hint"):
        openvino.OpenVinoRunner("m.onnx", hint="FASTEST")
    with pytest.raises(ValueError, match="sub_batch"):
        openvino.OpenVinoRunner("m.onnx", sub_batch=0)


# ---- precision: a runner runs the precision it reports (issue #11) --------------------------------

needs_bf16 = pytest.mark.skipif(not openvino.bf16_status()[0], reason=f"no native bf16 here: {openvino.bf16_status()[1]}")


@needs_openvino
@pytest.mark.parametrize("form", ["fp32", "cpu-int8"])
def test_float_layers_are_pinned_to_f32_and_read_back(exported_bundle, reference, form):  # noqa: F811
    """On AVX512-BF16 / AMX CPUs OpenVINO would run these in bf16 unless told otherwise."""
    bundle = Bundle.open(exported_bundle)
    with ov_runner(bundle, form) as runner:
        runner.infer(reference[0][:2])
        compiled = runner._compiled[2][0]
        assert openvino.executed_precision(compiled) == "f32"
        assert openvino.bf16_layer_count(compiled) == 0
        assert runner.execution_precision == "fp32"
        assert runner.describe()["execution_precision"] == "fp32"


@needs_openvino
@needs_bf16
def test_bf16_runs_bf16_and_meets_its_parity_tolerance(exported_bundle, reference):  # noqa: F811
    bundle = Bundle.open(exported_bundle)
    runner = openvino.OpenVinoRunner(str(bundle.file("model.onnx")), precision="bf16", input_size=bundle.input_size)
    report = check_parity(runner, "openvino-bf16", reference, bundle.threshold)
    assert runner.precision == "bf16" and report["passed"]
    with runner:
        runner.infer(reference[0][:2])
        compiled = runner._compiled[2][0]
        # The weighted layers run bf16 (every conv and the dense head); the rest stays f32.
        assert openvino.executed_precision(compiled) == "f32"
        assert openvino.bf16_layer_count(compiled) >= 2
        assert runner.execution_precision == "bf16 weighted layers, f32 elsewhere"


@needs_openvino
def test_bf16_on_a_cpu_without_it_is_a_clear_error(exported_bundle, monkeypatch):
    """Simulates a CPU without native bf16 (the status function is what the CPU check reads)."""
    from dfx.runtime.scan import select
    from dfx.runtime.runners.base import RunnerError

    monkeypatch.setattr(openvino, "bf16_status", lambda: (False, "this CPU has no native bf16 (needs AVX512-BF16 or AMX)"))
    bundle = Bundle.open(exported_bundle)
    with pytest.raises(select.SelectError, match="no native bf16"):
        select.plan(bundle, "openvino", "bf16")
    with pytest.raises(RunnerError, match="no native bf16"):
        openvino.OpenVinoRunner(str(bundle.file("model.onnx")), precision="bf16").activate()
    choice, _ = select.plan(bundle, "auto")
    assert choice.precision != "bf16"


@needs_openvino
def test_export_vouches_for_what_openvino_runs(exported_bundle):
    import json

    forms = json.loads((Bundle.open(exported_bundle).root / "parity.json").read_text())["forms"]
    assert forms["openvino-fp32"]["passed"] and forms["openvino-int8"]["passed"]
    assert forms["openvino-fp32"]["max_abs_diff"] <= 1e-4
    assert ("openvino-bf16" in forms) == openvino.bf16_status()[0]
