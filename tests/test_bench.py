"""A tiny real `dfx bench` run on the exported 64 px bundle: rows, ratios, limits, e2e, scan
memory, JSON and PNG. No timing assertions: speed claims come from benchmarks/, not tests."""

from __future__ import annotations

import json
import math

import pytest

from dfx.benchmarks import harness, report
from dfx.runtime.runners import openvino

ROW_KEYS = {"backend", "precision", "batch", "images_per_s", "p50_ms", "p95_ms", "p99_ms", "ratio_vs_keras"}


@pytest.fixture(scope="module")
def bench(exported_bundle, synth_data):
    backends = ("keras", "ort-fp32", "ort-int8") + (("ov-int8",) if openvino.available() else ())
    config = harness.BenchConfig(
        backends=backends, batch_sizes=(1, 4), iters=2, warmup=1, rounds=2, images=str(synth_data), e2e_batch_size=4, roofline_seconds=0.05,
        peer_seconds=1.0,
    )
    return harness.run(exported_bundle, config), backends


def test_rows_cover_every_backend_and_batch_with_sane_values(bench):
    result, backends = bench
    rows = [r for r in result["rows"] if r["mode"] == "inference"]
    assert not [r for r in result["rows"] if r.get("error")]
    assert {(r["backend_name"], r["batch"]) for r in rows} == {(b, n) for b in backends for n in (1, 4)}
    for row in rows:
        assert ROW_KEYS <= set(row)
        assert row["images_per_s"] > 0 and row["batches"] == 2
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
        # images/s is images over the summed batch latencies, so it sits between the extremes
        assert row["images_per_s"] == pytest.approx(2 * row["batch"] / row["seconds"], rel=0.01)
        assert row["ratio_vs_keras"] == pytest.approx(row["images_per_s"] / next(
            k["images_per_s"] for k in rows if k["backend_name"] == "keras" and k["batch"] == row["batch"]), rel=0.01)
    assert {r["precision"] for r in rows if r["backend_name"] == "ort-int8"} == {"int8"}
    # Each row names the file it ran: the CPU's int8 rows run the uint8 twin, not TensorRT's file.
    files = {r["backend_name"]: r["file"] for r in rows if r["mode"] == "inference"}
    assert files["ort-int8"] == "model.int8.cpu.onnx" and files["ort-fp32"] == "model.onnx" and files["keras"] == "model.keras"
    assert all(r["ratio_vs_keras"] == 1.0 for r in rows if r["backend_name"] == "keras")


def test_end_to_end_rows_run_the_scan_pipeline(bench):
    result, backends = bench
    e2e = [r for r in result["rows"] if r["mode"] == "e2e"]
    assert {r["backend_name"] for r in e2e} == set(backends) - {"keras"}
    for row in e2e:
        assert row["batch"] == 4 and row["errors"] == 0 and row["images"] >= 2 * 4
        assert row["images_per_s"] > 0 and row["inference_images_per_s"] > 0
        assert row["vs_inference"] == pytest.approx(row["images_per_s"] / row["inference_images_per_s"], rel=0.01)


def test_auto_summary_sets_the_served_form_against_ort_fp32_and_openvino(bench):
    """The form `dfx scan` serves by default, its best row against ORT fp32's best, its e2e
    share, and (when it runs on OpenVINO) benchmark_app on the very file it runs."""
    result, backends = bench
    auto = result["auto"]
    assert auto["backend"] in backends and auto["choice"]
    best = {}
    for row in (r for r in result["rows"] if r["mode"] == "inference"):
        best[row["backend_name"]] = max(best.get(row["backend_name"], 0), row["images_per_s"])
    assert auto["images_per_s"] == best[auto["backend"]]
    assert auto["ratio_vs_ort_fp32"] == pytest.approx(best[auto["backend"]] / best["ort-fp32"], rel=0.01)
    e2e = next(r for r in result["rows"] if r["mode"] == "e2e" and r["backend_name"] == auto["backend"])
    assert auto["e2e_share_of_inference"] == e2e["vs_inference"]
    if auto["backend"].startswith("ov-"):
        peer = auto["peer"]
        assert "error" not in peer, peer
        assert peer["measured"] == 2 and peer["images_per_s"] > 0 and set(peer["runs"]) == {"1", "4"}
        assert all("model.int8.cpu.onnx" in run["command"] for run in peer["runs"].values())
        assert auto["ratio_vs_peer"] == pytest.approx(auto["images_per_s"] / peer["images_per_s"], rel=0.01)
    text = report.text(result)
    assert f"auto serves {auto['backend']}" in text and "x ORT fp32" in text


def test_scan_memory_is_measured_in_a_process_without_tensorflow(bench):
    memory = bench[0]["scan_memory"]
    assert "error" not in memory, memory
    assert memory["rc"] == 0 and memory["rows"] > 0
    assert memory["tensorflow_imported"] is False
    assert 20 < memory["peak_rss_mb"] < 4000


def test_roofline_comes_from_the_graph_and_the_machine(bench):
    result, _ = bench
    roof = result["roofline"]
    assert roof["graph"]["fp32"]["macs_per_image"] == roof["graph"]["int8"]["macs_per_image"] > 0
    assert roof["graph"]["int8"]["weight_bytes"] < roof["graph"]["fp32"]["weight_bytes"]
    assert roof["machine"]["fp32_gflops"] > 0 and roof["machine"]["bandwidth_gb_s"] > 0
    for row in (r for r in result["rows"] if r["mode"] == "inference"):
        assert 0 < row["roof_fraction"] and row["bound"] in ("compute", "memory")
        assert row["achieved_gops"] == pytest.approx(row["images_per_s"] * roof["graph"]["fp32"]["flops_per_image"] / 1e9, rel=0.02, abs=0.01)


def test_machine_section(bench):
    machine = bench[0]["machine"]
    assert machine["cpu"] and machine["physical_cores"] >= 1 and machine["logical_cores"] >= machine["physical_cores"]
    assert "onnxruntime" in machine["frameworks"] and "numpy" in machine["frameworks"]
    assert isinstance(machine["gpus"], list)


def test_outputs_table_json_and_plot(bench, tmp_path):
    result, backends = bench
    text = report.text(result)
    assert "ort-int8" in text and "images/s" in text and "GMAC" in text and "peak RSS" in text
    assert "ort-int8 model.int8.cpu.onnx" in text
    report.write_json(result, tmp_path / "bench.json")
    loaded = json.loads((tmp_path / "bench.json").read_text())
    assert len(loaded["rows"]) == len(result["rows"]) and loaded["roofline"]["machine"]
    pytest.importorskip("matplotlib")
    report.plot(result, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_subset_skips_what_cannot_run(exported_bundle, tmp_path, capsys):
    from dfx.cli import main

    out = tmp_path / "b.json"
    rc = main(["bench", str(exported_bundle), "--backends", "ort-int8,trt-int8", "--batch-sizes", "2", "--iters", "1", "--no-roofline", "--json", str(out)])
    assert rc == 0
    loaded = json.loads(out.read_text())
    assert [(r["backend_name"], r["batch"]) for r in loaded["rows"]] == [("ort-int8", 2)]
    assert "trt-int8" in loaded["skipped"]  # no TensorRT/GPU here: skipped with its reason
    assert not math.isnan(loaded["rows"][0]["p99_ms"])
    with pytest.raises(SystemExit):
        main(["bench", str(exported_bundle), "--batch-sizes", "0"])
    assert main(["bench", str(exported_bundle), "--backends", "nonsense"]) == 2
    assert "unknown bench backend" in capsys.readouterr().err


def test_quick_summary_for_the_demo(exported_bundle):
    text = harness.quick_summary(exported_bundle, batch_size=4, duration=0.2)
    assert "images/s" in text and "ort-int8" in text and "Keras predict" in text


def test_bench_imports_and_help_without_optional_frameworks():
    """`dfx bench --help`, the harness, roofline, report and the OpenVINO runner module import
    with every heavy framework blocked; machine_info still answers."""
    from _blocked import run_blocked

    done = run_blocked(
        """
        import dfx.benchmarks.harness, dfx.benchmarks.roofline, dfx.benchmarks.report, dfx.benchmarks.machine
        import dfx.runtime.runners.openvino
        info = dfx.benchmarks.machine.machine_info()
        assert info['physical_cores'] >= 1 and 'onnxruntime' in info['frameworks']
        from dfx.cli import main
        try:
            main(['bench', '--help'])
        except SystemExit as exc:
            assert exc.code == 0
        """
    )
    assert done.returncode == 0, done.stderr
    assert "--batch-sizes" in done.stdout and "--images" in done.stdout


def test_against_a_second_bundle_times_both_in_one_run(exported_bundle, tmp_path, capsys):
    """--against: a second bundle (here a copy) runs on the same backends in the same slices, and
    each of the bundle's rows gets its ratio to the other's row of the same backend and batch."""
    import shutil

    from dfx.cli import main

    other = shutil.copytree(exported_bundle, tmp_path / "other")
    config = harness.BenchConfig(backends=("keras", "ort-int8"), batch_sizes=(1, 4), iters=2, warmup=1, rounds=2,
                                 roofline=False, scan_memory=False, against=str(other))
    result = harness.run(exported_bundle, config)
    mine = {(r["backend_name"], r["batch"]): r for r in result["rows"] if not r.get("against")}
    theirs = {(r["backend_name"], r["batch"]): r for r in result["rows"] if r.get("against")}
    assert set(theirs) == {("ort-int8", 1), ("ort-int8", 4)}  # Keras is the reference, not compared
    for key, row in theirs.items():
        assert row["batches"] == 2 and row["file"] == "model.int8.cpu.onnx" and row["ratio_vs_keras"] is None
        assert mine[key]["ratio_vs_against"] == pytest.approx(mine[key]["images_per_s"] / row["images_per_s"], rel=0.01)
    assert "ratio_vs_against" not in mine[("keras", 1)]
    assert result["against"]["input_size"] == list(result["input_size"])

    code = main(["bench", str(exported_bundle), "--backends", "ort-int8", "--batch-sizes", "2", "--iters", "2", "--rounds", "1",
                 "--no-roofline", "--against", str(other), "--plot", str(tmp_path / "b.png")])
    out = capsys.readouterr().out
    assert code == 0 and "x against" in out and "| against" in out and f"against: {other}" in out
    assert (tmp_path / "b.png").stat().st_size > 1000
    assert main(["bench", str(exported_bundle), "--against", str(tmp_path / "missing")]) == 2  # a clear error, not a traceback
