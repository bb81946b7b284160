"""C2PA provenance: fixtures signed by the tests' own PKI read with the expected state,
ai_declared and combined verdict in `dfx scan` and the Detector; `dfx c2pa sign` output reads
back valid/trusted with the finding; tampering is caught; bad manifests stay one row."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from _blocked import run_blocked
from dfx.cli import main
from dfx.runtime.provenance.c2pa import AI_SOURCE_TYPES, Provenance, combined_verdict, has_manifest_marker, interpret
from dfx.runtime.scan.results import Result, ResultWriter, read_results


# ---- the policy (no c2pa needed) -----------------------------------------------------------------
@pytest.mark.parametrize(
    "decision, c2pa, ai, verdict",
    [
        ("real", "trusted", True, "ai-declared"),  # a declared AI origin wins over the score
        ("fake", "valid", True, "ai-declared"),
        (None, "valid", True, "ai-declared"),  # even when the pixels could not be scored
        ("real", "invalid", True, "invalid-manifest"),  # a broken manifest's claims count for nothing
        ("fake", "invalid", False, "invalid-manifest"),
        ("fake", "trusted", False, "conflict"),  # trusted capture vs a fake score: a human looks
        ("real", "trusted", False, "real"),
        ("fake", "valid", False, "fake"),  # an untrusted capture claim is no counter-evidence
        ("fake", "none", None, "fake"),
        ("real", None, None, "real"),  # provenance not read
        ("fake", "trusted", None, "fake"),  # a manifest that declares no source type
        (None, "none", None, None),
    ],
)
def test_combined_verdict_policy(decision, c2pa, ai, verdict):
    assert combined_verdict(decision, c2pa, ai) == verdict


def test_interpret_walks_carried_ingredients_only():
    iptc = "http://cv.iptc.org/newscodes/digitalsourcetype/"

    def manifest(source: str | None, ingredients=()) -> dict:
        actions = [{"action": "c2pa.created", **({"digitalSourceType": iptc + source} if source else {})}]
        return {"assertions": [{"label": "c2pa.actions.v2", "data": {"actions": actions}}], "ingredients": list(ingredients),
                "claim_generator_info": [{"name": "app", "version": "2"}]}

    def store(active: dict, **others: dict) -> dict:
        return {"active_manifest": "a", "manifests": {"a": active, **others}, "validation_state": "Valid"}

    ai = manifest("trainedAlgorithmicMedia")
    assert interpret(store(manifest("digitalCapture", [{"relationship": "componentOf", "active_manifest": "b"}]), b=ai)).ai_declared is True
    assert interpret(store(manifest(None, [{"relationship": "parentOf", "active_manifest": "b"}]), b=ai)).ai_declared is True
    # A reference image fed to a generator (inputTo) puts none of its pixels in the output.
    assert interpret(store(manifest("digitalCapture", [{"relationship": "inputTo", "active_manifest": "b"}]), b=ai)).ai_declared is False
    assert interpret(store(manifest(None))).ai_declared is None
    cyclic = manifest(None, [{"relationship": "parentOf", "active_manifest": "a"}])
    assert interpret(store(cyclic)).ai_declared is None  # a cycle ends
    assert interpret(store(ai)).claim_generator == "app/2"
    assert {"trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia", "algorithmicMedia", "compositeSynthetic"} <= AI_SOURCE_TYPES
    broken = interpret({"manifests": {}, "active_manifest": "x"})
    assert broken.c2pa == "invalid" and broken.error


# ---- result files: new columns, old files still resume ---------------------------------------------
OLD_COLUMNS = ("path", "logit", "probability", "decision", "backend", "precision", "model_sha256", "error")


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_result_columns_round_trip_and_old_files_resume(tmp_path, suffix):
    old_row = {"path": "old.jpg", "logit": 1.5, "probability": 0.8, "decision": "fake", "backend": "ort-cpu",
               "precision": "int8", "model_sha256": "ab" * 32, "error": None}
    out = tmp_path / f"rows{suffix}"
    if suffix == ".jsonl":  # written by dfx before the provenance columns
        out.write_text(json.dumps(old_row) + "\n")
    else:
        out.write_text(",".join(OLD_COLUMNS) + "\n" + ",".join("" if old_row[c] is None else str(old_row[c]) for c in OLD_COLUMNS) + "\n")
    (old,) = read_results(out)
    assert old.decision == "fake" and old.c2pa is None and old.ai_declared is None and old.verdict is None
    new = Result("new.jpg", -2.0, 0.12, "real", "ort-cpu", "int8", "cd" * 32, None, c2pa="trusted", c2pa_failures=None,
                 claim_generator="cam/1", ai_declared=False, verdict="real", provenance_error=None)
    with ResultWriter(out, append=True) as writer:
        writer.write(new)
    rows = read_results(out)
    assert [r.path for r in rows] == ["old.jpg", "new.jpg"]
    assert rows[0].logit == 1.5 and rows[0].c2pa is None
    assert rows[1] == new  # every column, ai_declared as a bool, back as written
    if suffix == ".csv":
        assert out.read_text().splitlines()[0].split(",")[-1] == "provenance_error"  # the header was upgraded


# ---- fixtures signed by the tests' own PKI ----------------------------------------------------------
@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    pytest.importorskip("c2pa", reason="C2PA needs c2pa-python (pip install 'dfx[c2pa]')")
    pytest.importorskip("cryptography", reason="the test certificates need cryptography (pip install 'dfx[test]')")
    from _c2pa_certs import make_pki

    made = make_pki()
    return made, made.write(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def signed_images(pki, tmp_path_factory) -> dict[str, Path]:
    """name -> file: AI JPEG and PNG, camera JPEG, a composite with an AI ingredient, the camera
    JPEG with pixels changed after signing, a manifest-less JPEG."""
    from _c2pa_certs import IPTC, created, image_bytes, sign, tamper_jpeg_pixels

    made, _ = pki
    ai_jpeg = sign(made, image_bytes("JPEG", seed=1), "image/jpeg", [created("trainedAlgorithmicMedia")])
    camera = sign(made, image_bytes("JPEG", seed=3), "image/jpeg", [created("digitalCapture")], generator="camera-fixture")
    placed = {"label": "c2pa.actions.v2", "data": {"actions": [
        {"action": "c2pa.created", "digitalSourceType": IPTC + "digitalCreation"},
        {"action": "c2pa.placed", "parameters": {"ingredientIds": ["ai-part"]}},
    ]}}
    files = {
        "ai.jpg": ai_jpeg,
        "ai.png": sign(made, image_bytes("PNG", seed=2), "image/png", [created("trainedAlgorithmicMedia")]),
        "camera.jpg": camera,
        "composite.jpg": sign(made, image_bytes("JPEG", seed=4), "image/jpeg", [placed],
                              [({"title": "ai.jpg", "relationship": "componentOf", "label": "ai-part"}, ai_jpeg, "image/jpeg")]),
        "tampered.jpg": tamper_jpeg_pixels(camera),
        "plain.jpg": image_bytes("JPEG", seed=5),
    }
    folder = tmp_path_factory.mktemp("c2pa")
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in files}


# name -> (c2pa with the test root as anchor, ai_declared, failure code expected or None)
EXPECTED = {
    "ai.jpg": ("trusted", True, None),
    "ai.png": ("trusted", True, None),
    "camera.jpg": ("trusted", False, None),
    "composite.jpg": ("trusted", True, None),  # digitalCreation itself; its placed ingredient is AI
    "tampered.jpg": ("invalid", False, "assertion.dataHash.mismatch"),
    "plain.jpg": ("none", None, None),
}


def test_reader_states_with_and_without_trust_anchors(pki, signed_images):
    from dfx.runtime.provenance.c2pa import ProvenanceReader

    _, paths = pki
    trusting, plain = ProvenanceReader(paths["root"]), ProvenanceReader()
    for name, (state, ai, failure) in EXPECTED.items():
        data = signed_images[name].read_bytes()
        prov = trusting.read(data)
        assert (prov.c2pa, prov.ai_declared) == (state, ai), (name, prov)
        assert (failure in prov.failures) if failure else not prov.failures, (name, prov.failures)
        assert prov.error is None
        # Without anchors the same manifests are at most "valid".
        assert plain.read(data).c2pa == {"trusted": "valid"}.get(state, state), name
    assert trusting.read(signed_images["camera.jpg"].read_bytes()).claim_generator == "camera-fixture/1.0"
    # Anchors of another PKI: the signature still checks out, the signer is just not trusted.
    from _c2pa_certs import make_pki

    foreign = ProvenanceReader(trust_anchors_pem=make_pki("someone else").root_pem.decode())
    assert foreign.read(signed_images["camera.jpg"].read_bytes()).c2pa == "valid"
    assert not has_manifest_marker(signed_images["plain.jpg"].read_bytes())  # the fast path is taken


def test_bad_manifests_never_raise(pki, signed_images):
    from dfx.runtime.provenance.c2pa import read_provenance

    ai = signed_images["ai.jpg"].read_bytes()
    start = ai.find(b"jumb")
    corrupt = bytearray(ai)
    corrupt[start + 40 : start + 240] = bytes(200)  # zeros over the manifest store's boxes
    cases = {
        "corrupt store": bytes(corrupt),
        "cut in the middle": ai[: len(ai) // 2],
        "only the header": ai[:start + 8],
        "junk with a marker": b"jumbc2pa" * 64,
        "empty": b"",
        "png header then junk": b"\x89PNG\r\n\x1a\n" + b"c2pa" * 100,
    }
    for what, data in cases.items():
        prov = read_provenance(data)
        assert isinstance(prov, Provenance), what
        assert prov.c2pa in (None, "none", "invalid"), (what, prov)  # never "valid" for a broken store
        if prov.c2pa is None:
            assert prov.error, what
    assert read_provenance(bytes(corrupt)).c2pa == "invalid"


def test_oversized_manifest_store_is_a_row_error(pki, signed_images, monkeypatch):
    from dfx.runtime.provenance import c2pa as provenance

    monkeypatch.setattr(provenance, "MAX_REPORT_CHARS", 200)  # the real cap is 8 MB of JSON; ours is a few kB
    prov = provenance.ProvenanceReader().read(signed_images["ai.jpg"].read_bytes())
    assert prov.c2pa == "invalid" and "too large" in prov.error


def test_trust_anchor_file_errors(tmp_path, pki):
    from dfx.runtime.provenance.c2pa import ProvenanceError, ProvenanceReader

    (tmp_path / "empty.pem").write_text("no certificate here\n")
    with pytest.raises(ProvenanceError, match="no PEM certificate"):
        ProvenanceReader(tmp_path / "empty.pem")
    with pytest.raises(ProvenanceError, match="cannot read trust anchors"):
        ProvenanceReader(tmp_path / "missing.pem")


# ---- dfx scan and the Detector ------------------------------------------------------------------------
def _scan(bundle: Path, inputs: list[Path], out: Path, *extra: str) -> dict[str, Result]:
    code = main(["scan", str(bundle), *map(str, inputs), "--out", str(out), "--backend", "ort-cpu", "--quiet", *extra])
    assert code == 0
    return {Path(r.path).name: r for r in read_results(out)}


def test_scan_reads_provenance_beside_unchanged_scores(exported_bundle, pki, signed_images, tmp_path):
    _, paths = pki
    folder = signed_images["ai.jpg"].parent
    (folder / "broken.jpg").write_bytes(signed_images["ai.jpg"].read_bytes()[:300])  # manifest cut off, no pixels
    try:
        rows = _scan(exported_bundle, [folder], tmp_path / "on.jsonl", "--trust-anchors", str(paths["root"]))
        off = _scan(exported_bundle, [folder], tmp_path / "off.csv", "--no-provenance")
    finally:
        (folder / "broken.jpg").unlink()
    for name, (state, ai, _) in EXPECTED.items():
        row = rows[name]
        assert (row.c2pa, row.ai_declared) == (state, ai), (name, row)
        assert row.error is None and row.decision in ("fake", "real")
        # The detector's own fields are the same with provenance on and off.
        assert row.logit == pytest.approx(off[name].logit, abs=1e-6) and row.decision == off[name].decision
        assert off[name].c2pa is None and off[name].verdict == off[name].decision
    assert rows["tampered.jpg"].verdict == "invalid-manifest" and "dataHash" in rows["tampered.jpg"].c2pa_failures
    for name in ("ai.jpg", "ai.png", "composite.jpg"):
        assert rows[name].verdict == "ai-declared"
    for name in ("camera.jpg", "plain.jpg"):
        assert rows[name].verdict == rows[name].decision or rows[name].verdict == "conflict"
    broken = rows["broken.jpg"]  # one bad file: its own error and provenance error, the scan went on
    assert broken.error and broken.logit is None and broken.c2pa == "invalid" and broken.provenance_error


@pytest.mark.parametrize("threshold, camera, plain", [(-1e9, "conflict", "fake"), (1e9, "real", "real")])
def test_scan_conflict_when_trusted_capture_meets_a_fake_score(exported_bundle, pki, signed_images, tmp_path, threshold, camera, plain):
    _, paths = pki
    files = [signed_images[n] for n in ("camera.jpg", "plain.jpg", "ai.jpg")]
    rows = _scan(exported_bundle, files, tmp_path / "rows.csv", "--trust-anchors", str(paths["root"]), "--threshold", str(threshold))
    assert rows["camera.jpg"].verdict == camera
    assert rows["plain.jpg"].verdict == plain  # no manifest: the detector decides
    assert rows["ai.jpg"].verdict == "ai-declared"  # whatever the score
    untrusted = _scan(exported_bundle, files[:1], tmp_path / "untrusted.jsonl", "--threshold", str(threshold))
    assert untrusted["camera.jpg"].c2pa == "valid" and untrusted["camera.jpg"].verdict == ("fake" if threshold < 0 else "real")


def test_detector_reads_provenance_from_bytes_and_paths(exported_bundle, pki, signed_images):
    from PIL import Image

    from dfx.runtime.scan.detector import Detector

    _, paths = pki
    ai = signed_images["ai.jpg"]
    with Detector.load(exported_bundle, "ort-cpu", trust_anchors=paths["root"]) as detector:
        from_bytes, from_path, from_pil = detector.predict([ai.read_bytes(), ai, Image.open(ai)])
    assert from_bytes.c2pa == from_path.c2pa == "trusted" and from_path.verdict == "ai-declared"
    assert from_pil.c2pa is None and from_pil.verdict == from_pil.decision  # decoded pixels carry no manifest
    assert from_pil.logit == pytest.approx(from_path.logit, abs=1e-6)
    with Detector.load(exported_bundle, "ort-cpu", provenance=False) as detector:
        (off,) = detector.predict([ai])
    assert off.c2pa is None and off.provenance_error is None and off.verdict == off.decision
    # Many decode threads share one reader: every input still gets its own manifest's answer.
    names = list(EXPECTED) * 8
    with Detector.load(exported_bundle, "ort-cpu", trust_anchors=paths["root"], workers=6, batch_size=5) as detector:
        results = detector.predict([signed_images[n].read_bytes() for n in names])
    assert [(r.c2pa, r.ai_declared) for r in results] == [EXPECTED[n][:2] for n in names]


# ---- signing the finding ---------------------------------------------------------------------------------
def test_c2pa_sign_reads_back_with_the_finding_and_catches_tampering(exported_bundle, pki, signed_images, tmp_path, capsys):
    from _c2pa_certs import tamper_jpeg_pixels

    from dfx.runtime.provenance.c2pa import DETECTION_LABEL, ProvenanceReader, read_detection

    _, paths = pki
    signed = tmp_path / "signed.jpg"
    for source in ("plain.jpg", "ai.jpg"):
        code = main(["c2pa", "sign", str(signed_images[source]), "--bundle", str(exported_bundle), "--cert", str(paths["chain"]),
                     "--key", str(paths["key"]), "--out", str(signed), "--backend", "ort-cpu", "--overwrite"])
        assert code == 0
        report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert report["c2pa"] == "valid"
        data = signed.read_bytes()
        trusted = ProvenanceReader(paths["root"]).read(data)
        assert trusted.c2pa == "trusted" and trusted.claim_generator.startswith("dfx/")
        # The parent ingredient's AI declaration is carried into the new manifest's reading.
        assert trusted.ai_declared is (True if source == "ai.jpg" else None)
        finding = read_detection(data)
        assert set(finding) == {"decision", "logit", "probability", "threshold", "model_sha256", "backend", "precision", "dfx_version"}
        assert finding["decision"] == report["decision"] and finding["logit"] == pytest.approx(report["logit"])
        assert finding["backend"] == "ort-cpu" and len(finding["model_sha256"]) == 64
        # The pixels are the original's.
        from PIL import Image

        import numpy as np

        assert np.array_equal(np.asarray(Image.open(signed)), np.asarray(Image.open(signed_images[source])))
    import c2pa

    with c2pa.Reader("image/jpeg", io.BytesIO(data)) as reader:  # the official reader sees the assertion
        labels = [a["label"] for a in reader.get_active_manifest()["assertions"]]
        store = json.loads(reader.json())
    assert DETECTION_LABEL in labels
    active = store["manifests"][store["active_manifest"]]
    assert [i["relationship"] for i in active["ingredients"]] == ["parentOf"]
    tampered = ProvenanceReader(paths["root"]).read(tamper_jpeg_pixels(data))
    assert tampered.c2pa == "invalid" and any("mismatch" in f for f in tampered.failures)


def test_c2pa_sign_refuses_a_bad_chain_cleanly(exported_bundle, pki, signed_images, tmp_path, capsys):
    _, paths = pki
    args = ["c2pa", "sign", str(signed_images["plain.jpg"]), "--bundle", str(exported_bundle), "--key", str(paths["key"]),
            "--out", str(tmp_path / "x.jpg"), "--backend", "ort-cpu"]
    assert main(args + ["--cert", str(paths["root"])]) == 2  # a CA certificate is no signing certificate
    err = capsys.readouterr().err
    assert "c2pa could not sign" in err and "hint:" in err and "Traceback" not in err
    assert main(args + ["--cert", str(paths["key"])]) == 2  # no certificate at all
    assert "holds no PEM certificate" in capsys.readouterr().err
    assert not (tmp_path / "x.jpg").exists()


# ---- without the extra --------------------------------------------------------------------------------------
def test_without_c2pa_scans_work_and_sign_names_the_extra(exported_bundle, signed_images, tmp_path):
    out = tmp_path / "rows.jsonl"
    result = run_blocked(
        f"""
        from dfx import cli
        import dfx.runtime.provenance.c2pa, dfx.runtime.scan.pipeline, dfx.runtime.provenance.commands
        assert "c2pa" not in sys.modules and "cryptography" not in sys.modules
        code = cli.main(["scan", {str(exported_bundle)!r}, {str(signed_images["ai.jpg"])!r}, "--out", {str(out)!r}, "--backend", "ort-cpu"])
        assert code == 0, code
        code = cli.main(["c2pa", "sign", {str(signed_images["ai.jpg"])!r}, "--bundle", {str(exported_bundle)!r}, "--cert", "c.pem",
                         "--key", "k.pem", "--out", {str(tmp_path / "s.jpg")!r}])
        sys.exit(code)
        """,
        ("c2pa", "tensorflow", "keras", "tensorrt"),
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "pip install 'dfx[c2pa]'" in result.stderr and "Traceback" not in result.stderr
    assert "provenance not read" in result.stderr
    (row,) = read_results(out)
    assert row.error is None and row.c2pa is None and row.verdict == row.decision


def test_bench_times_the_scan_with_provenance_on_and_off(exported_bundle, signed_images):
    from dfx.benchmarks import harness, report

    config = harness.BenchConfig(backends=("ort-int8",), batch_sizes=(4,), iters=2, warmup=1, rounds=2, e2e_batch_size=4,
                                 images=str(signed_images["ai.jpg"].parent), roofline=False, scan_memory=False)
    rows = {r["mode"]: r for r in harness.run(exported_bundle, config)["rows"]}
    on, off = rows["e2e+c2pa"], rows["e2e"]
    assert on["images"] == off["images"] >= 2 * 4 and on["images_per_s"] > 0
    assert on["vs_e2e_off"] == pytest.approx(on["images_per_s"] / off["images_per_s"], rel=0.01)
    assert "c2pa on/off" in report.table(list(rows.values()))
    plain = harness.run(exported_bundle, harness.BenchConfig(**{**config.__dict__, "provenance": False}))["rows"]
    assert "e2e+c2pa" not in {r["mode"] for r in plain}
