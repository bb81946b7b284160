"""Backend choice: what auto picks here and why, explicit requests, engine matching and refusal."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import has_gpu
from dfx.bundle import Bundle
from dfx.errors import DfxError
from dfx.runtime.scan import select
from dfx.runtime.scan.select import SelectError, choose_runner, engine_mismatch, usable_engines

GPU, GPU_REASON = has_gpu()


@pytest.mark.skipif(GPU, reason="this host has a GPU: auto would pick a GPU backend")
def test_auto_on_cpu_takes_int8_and_says_why(exported_bundle):
    runner, choice = choose_runner(exported_bundle)
    reason = choice.reason
    assert runner.precision == "int8"
    assert runner.backend in ("openvino", "ort-cpu")
    assert reason.startswith(f"{runner.backend} int8 ")
    assert "no GPU" in reason
    if runner.backend == "ort-cpu":
        assert "openvino" in reason  # says why OpenVINO was not taken
    bundle = Bundle.open(exported_bundle)
    assert choice.sha256 == bundle.sha256("model.int8.cpu.onnx")  # the CPU's uint8 twin
    assert "model.int8.cpu.onnx" in reason
    assert not runner.is_active  # choosing loads nothing


@pytest.mark.parametrize("backend", ["ort-cpu", "openvino"])
def test_cpu_int8_reads_the_uint8_twin_and_falls_back_without_it(exported_bundle, tmp_path, backend):
    """CPU backends take model.int8.cpu.onnx; a bundle exported before the twin existed (or
    that lost it) still runs its symmetric model.int8.onnx. TensorRT never reads the twin."""
    if backend == "openvino" and not select.openvino_status()[0]:
        pytest.skip("openvino is not installed (pip install 'dfx[openvino]')")
    assert select.plan(Bundle.open(exported_bundle), backend, "int8")[0].file == "model.int8.cpu.onnx"
    copy = Path(shutil.copytree(exported_bundle, tmp_path / "bundle"))
    bundle = Bundle.open(copy)
    del bundle.manifest["files"]["model.int8.cpu.onnx"]
    (copy / "model.int8.cpu.onnx").unlink()
    bundle.save()
    chosen, why = select.plan(Bundle.open(copy), backend, "int8")
    assert chosen.file == "model.int8.onnx" and "model.int8.onnx" in why


def _with_parity(exported_bundle, tmp_path, **entries) -> Bundle:
    """A copy of the bundle whose parity.json says `entries` (form -> passed; None = missing)."""
    copy = Path(shutil.copytree(exported_bundle, tmp_path / "bundle"))
    bundle = Bundle.open(copy)
    forms = bundle.manifest["parity"]["forms"]
    for form, passed in entries.items():
        if passed is None:
            forms.pop(form, None)
        else:
            forms[form] = passed
    bundle.save()
    return Bundle.open(copy)


@pytest.mark.skipif(GPU, reason="this host has a GPU: auto would pick a GPU backend")
def test_auto_skips_every_form_parity_did_not_vouch_for(exported_bundle, tmp_path):
    """A failed INT8 entry: auto takes the next vouched form and says what it skipped and why."""
    bundle = _with_parity(exported_bundle, tmp_path, **{"cpu-int8": False, "int8": False, "openvino-int8": False})
    chosen, why = select.plan(bundle)
    assert chosen.precision in ("fp32", "bf16") and chosen.backend in ("openvino", "ort-cpu")  # bf16 on AMX
    first = "openvino-int8" if select.openvino_status()[0] else "cpu-int8"  # the fastest form, skipped
    assert f"skipped {first}: it failed parity" in why
    # An explicit request still runs what was asked.
    assert select.plan(bundle, "ort-cpu", "int8")[0].file == "model.int8.cpu.onnx"


@pytest.mark.skipif(GPU, reason="this host has a GPU: auto would pick a GPU backend")
@pytest.mark.parametrize("backbone", [False, True])
def test_auto_on_amx_takes_vouched_bf16_before_int8_only_for_a_transformer(exported_bundle, tmp_path, monkeypatch, backbone):
    """A transformer's int8 form keeps float what per-tensor int8 cannot hold (slower than bf16
    on AMX); a CNN's is int8 throughout. Both forms vouched; the CPU simulated as AMX."""
    if not select.openvino_status()[0]:
        pytest.skip("openvino is not installed (pip install 'dfx[openvino]')")
    from dfx.runtime.runners import openvino

    monkeypatch.setattr(openvino, "bf16_status", lambda: (True, ""))
    monkeypatch.setattr(openvino, "has_amx", lambda: True)
    bundle = _with_parity(exported_bundle, tmp_path, **{"openvino-bf16": True, "openvino-int8": True})
    bundle.manifest["parity"]["vouched"] = {"openvino-bf16": True, "openvino-int8": True, "cpu-int8": True}
    if backbone:
        bundle.manifest["backbone"] = {"name": "clip-vit-b16"}
    chosen, _ = select.plan(bundle)
    assert (chosen.backend, chosen.precision) == ("openvino", "bf16" if backbone else "int8")
    bundle.manifest["parity"]["vouched"]["openvino-bf16"] = False  # not vouched: never auto
    assert select.plan(bundle)[0].precision == "int8"


@pytest.mark.skipif(GPU, reason="this host has a GPU: auto would pick a GPU backend")
def test_auto_skips_forms_missing_from_parity(exported_bundle, tmp_path):
    missing = {"openvino-int8": None, "openvino-fp32": None, "openvino-bf16": None, "cpu-int8": None}
    bundle = _with_parity(exported_bundle, tmp_path, **missing)
    chosen, why = select.plan(bundle)
    assert (chosen.backend, chosen.precision, chosen.file) == ("ort-cpu", "fp32", "model.onnx")
    assert "skipped cpu-int8: parity.json has no entry" in why
    bundle.manifest.pop("parity")
    chosen, why = select.plan(bundle)
    assert chosen.backend == "keras" and "no ONNX form is vouched for by parity" in why


def test_explicit_backend_and_precision(exported_bundle):
    runner, choice = choose_runner(exported_bundle, "ort-cpu", "fp32")
    reason = choice.reason
    assert (runner.backend, runner.precision) == ("ort-cpu", "fp32")
    assert "model.onnx" in reason
    runner, _ = choose_runner(exported_bundle, "ort-cpu")
    assert runner.precision == "int8"  # the fastest CPU form the bundle has


def test_openvino_alias(exported_bundle):
    from dfx.runtime.runners import openvino

    if not openvino.available():
        with pytest.raises(SelectError, match="openvino"):
            choose_runner(exported_bundle, "ov-cpu")
        return
    runner, _ = choose_runner(exported_bundle, "ov-cpu", "fp32")
    assert (runner.backend, runner.precision) == ("openvino", "fp32")


@pytest.mark.skipif(GPU, reason="this host has a GPU")
@pytest.mark.parametrize("backend", ["trt", "ort-cuda"])
def test_gpu_backend_without_gpu_is_a_clear_error(exported_bundle, backend):
    with pytest.raises(SelectError) as info:
        choose_runner(exported_bundle, backend)
    assert "no GPU" in str(info.value) and info.value.hint


def test_unknown_names(exported_bundle):
    with pytest.raises(SelectError, match="unknown backend"):
        choose_runner(exported_bundle, "tpu")
    with pytest.raises(SelectError, match="unknown precision"):
        choose_runner(exported_bundle, "auto", "int4")
    with pytest.raises(SelectError, match="does not run int8"):
        choose_runner(exported_bundle, "keras", "int8")


def test_unexported_bundle_falls_back_to_keras(trained_bundle):
    runner, choice = choose_runner(trained_bundle)
    reason = choice.reason
    assert runner.backend == "keras"
    assert "dfx export" in reason
    with pytest.raises(SelectError) as info:
        choose_runner(trained_bundle, "ort-cpu")
    assert "no int8/fp32/fp16 ONNX" in str(info.value)


def test_engine_mismatch_rules():
    entry = {"file": "engines/int8.engine", "precision": "int8", "compute_capability": "9.0", "trt_version": "10.8.0.43", "lean": False}
    assert engine_mismatch(entry, "9.0", "10.8.0.43") is None
    assert "compute capability 9.0, this GPU is 8.6" in engine_mismatch(entry, "8.6", "10.8.0.43")
    assert "installed is 10.9.0" in engine_mismatch(entry, "9.0", "10.9.0")
    assert "not installed" in engine_mismatch(entry, "9.0", None)
    lean = dict(entry, lean=True)
    assert engine_mismatch(lean, "9.0", "10.9.0") is None  # version-compatible: a later 10.x runs it
    assert engine_mismatch(lean, "9.0", "10.7.0") is not None
    assert engine_mismatch(lean, "9.0", "11.0.0") is not None


def _bundle_with_engines(src: Path, dst: Path) -> Bundle:
    """A copy of the bundle with three engine entries (bytes are opaque here: never loaded)."""
    shutil.copytree(src, dst)
    bundle = Bundle.open(dst)
    (dst / "engines").mkdir()
    entries = []
    for name, cc in (("int8-ok", "9.0"), ("fp16-ok", "9.0"), ("int8-other-gpu", "8.6")):
        (dst / "engines" / f"{name}.engine").write_bytes(name.encode() * 100)
        bundle.add_file(f"engines/{name}.engine", role="engine")
        entries.append({"file": f"engines/{name}.engine", "precision": name.split("-")[0], "compute_capability": cc,
                        "trt_version": "10.8.0", "lean": False, "max_batch": 32})
    bundle.manifest["engines"] = entries
    bundle.save()
    return bundle


def test_engines_are_matched_and_tampered_ones_refused(exported_bundle, tmp_path):
    bundle = _bundle_with_engines(Path(exported_bundle), tmp_path / "b")
    usable, refused = usable_engines(Bundle.open(bundle.root), ("int8", "fp16"), "9.0", "10.8.0")
    assert [e["file"] for e in usable] == ["engines/int8-ok.engine", "engines/fp16-ok.engine"]
    assert any("8.6" in r for r in refused)

    # Change the int8 engine after export: the manifest no longer vouches for it.
    (bundle.root / "engines" / "int8-ok.engine").write_bytes(b"tampered" * 10)
    with pytest.raises(DfxError, match="does not match the manifest"):
        Bundle.open(bundle.root)  # opening verifies every file
    unverified = Bundle.open(bundle.root, verify=False)
    usable, refused = usable_engines(unverified, ("int8", "fp16"), "9.0", "10.8.0")
    assert [e["file"] for e in usable] == ["engines/fp16-ok.engine"]
    assert any("refused engines/int8-ok.engine" in r and "does not match the manifest" in r for r in refused)

    # An engine file the manifest does not list is never considered.
    manifest = json.loads((bundle.root / "manifest.json").read_text())
    manifest["engines"].append({"file": "engines/stray.engine", "precision": "fp16", "compute_capability": "9.0", "trt_version": "10.8.0"})
    (bundle.root / "engines" / "stray.engine").write_bytes(b"x")
    usable, refused = usable_engines(Bundle(bundle.root, manifest), ("fp16",), "9.0", "10.8.0")
    assert "engines/stray.engine" not in [e["file"] for e in usable]
    assert any("stray.engine is not listed" in r for r in refused)


def test_trt_runner_refuses_bytes_the_manifest_does_not_vouch_for(tmp_path):
    from dfx.runtime.runners.base import RunnerError
    from dfx.runtime.runners.trt import TrtRunner

    engine = tmp_path / "x.engine"
    engine.write_bytes(b"not what was exported")
    runner = TrtRunner(engine, precision="int8", input_size=(64, 64), expected_sha256="0" * 64)
    with pytest.raises(RunnerError, match="refusing to load the TensorRT engine"):
        runner.activate()  # refused before TensorRT or CUDA is imported
    assert not runner.is_active
    assert select.normalize_backend("tensorrt") == "trt"


def test_runtime_imports_without_optional_frameworks():
    """The runtime (and `dfx scan --help`) never needs tensorflow, TensorRT, a CUDA binding,
    OpenVINO or even ONNX Runtime just to be imported."""
    from _blocked import run_blocked

    done = run_blocked(
        """
        import dfx.runtime.runners.cuda, dfx.runtime.runners.trt, dfx.runtime.runners.ort, dfx.runtime.scan.select, dfx.runtime.scan.pipeline
        import dfx.runtime.scan.results, dfx.runtime.scan.detector, dfx.runtime.scan.commands
        from dfx.runtime.runners import cuda
        assert cuda.probe()[0] is False
        from dfx.cli import main
        try:
            main(['scan', '--help'])
        except SystemExit as exc:
            assert exc.code == 0
        """
    )
    assert done.returncode == 0, done.stderr
    assert "--resume" in done.stdout
