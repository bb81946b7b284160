"""`dfx eval` and dfx.trainer.evaluate."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from dfx import datasets
from dfx.bundle import Bundle

pytest.importorskip("tensorflow", reason="the Keras reference runner needs tensorflow")


def test_eval_val_split_matches_training_metrics(trained_bundle):
    from dfx.trainer.evaluate import EvalConfig, evaluate

    report = evaluate(EvalConfig(bundle=str(trained_bundle), split="val", backend="keras", progress=False))
    recorded = Bundle.open(trained_bundle).manifest["metrics"]["val"]
    assert report["images"] == recorded["images"]
    assert report["auc"] == pytest.approx(recorded["auc"], abs=1e-4)
    assert report["confusion"] == recorded["confusion"]
    assert report["backend"] == "keras" and report["errors"]["count"] == 0
    assert set(report["per_generator"]) == {"camera", "scan", "tconv", "upconv"}


def test_cli_json_has_the_seed_metrics_and_writes_a_plot(trained_bundle, synth_data, tmp_path, capsys):
    from dfx.cli import main

    plot = tmp_path / "roc.png"
    code = main(["eval", str(trained_bundle), str(synth_data), "--backend", "keras", "--json", "--plot", str(plot)])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("accuracy", "precision", "recall", "f1", "specificity", "auc", "per_generator",
                "average_precision", "eer", "tpr_at_1pct_fpr", "confusion"):
        assert key in report
    assert report["images"] == 400 and report["split"] == "all"
    assert report["auc"] >= 0.9
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_cli_table_and_unreadable_images_are_reported(trained_bundle, synth_data, tmp_path, capsys):
    from dfx.cli import main

    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    (data / "fake" / "tconv" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (data / "real" / "camera" / "empty.png").write_bytes(b"")
    assert main(["eval", str(trained_bundle), str(data), "--backend", "keras"]) == 0
    captured = capsys.readouterr()
    assert "unreadable: 2 image(s)" in captured.out and "broken.jpg" in captured.out
    assert "fake/tconv" in captured.out and "real/camera" in captured.out
    assert "400 images" in captured.out


def test_labels_file_and_val_split(trained_bundle, synth_data, tmp_path):
    from dfx.trainer.evaluate import EvalConfig, evaluate

    samples = datasets.discover(synth_data)[::5]
    labels = tmp_path / "labels.tsv"
    labels.write_text("path\tlabel\n" + "".join(f"{s.path}\t{'fake' if s.label else 'real'}\n" for s in samples))
    report = evaluate(EvalConfig(bundle=str(trained_bundle), data=str(labels), backend="keras", progress=False))
    assert report["images"] == len(samples)
    assert set(report["per_generator"]) == {"real", "fake"}


def test_eval_errors_are_clear(trained_bundle, tmp_path, capsys):
    from dfx.cli import main

    assert main(["eval", str(tmp_path / "nope"), str(tmp_path)]) == 2
    assert "no bundle" in capsys.readouterr().err
    (tmp_path / "real").mkdir()
    assert main(["eval", str(trained_bundle), str(tmp_path), "--backend", "keras"]) == 2
    assert "error" in capsys.readouterr().err


# ---- dfx threshold ----------------------------------------------------------------------------------------

def test_threshold_flags_at_most_the_target_share_of_real_photos_and_keeps_the_old_record(exported_bundle, synth_data, tmp_path, capsys):
    import numpy as np

    from dfx.cli import main
    from dfx.trainer.evaluate import EvalConfig, evaluate

    bundle = Path(shutil.copytree(exported_bundle, tmp_path / "bundle"))
    before = Bundle.open(bundle).manifest["threshold"]
    assert main(["threshold", str(bundle), str(synth_data), "--target-fpr", "0.05", "--backend", "ort-cpu", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["real_images"] == 200 and report["fake_images"] == 200 and report["written"]
    assert report["new"]["real_flagged"] <= 10 and report["new"]["false_positive_rate"] <= 0.05
    assert report["parity"]["passed"]
    record = Bundle.open(bundle).manifest["threshold"]
    assert record["method"] == "target_fpr" and record["previous"] == before and record["logit"] == report["new"]["logit"]
    # what dfx eval then measures on the same real photos, through the same runner
    real = evaluate(EvalConfig(bundle=str(bundle), data=str(synth_data / "real"), real=("camera", "scan"), backend="ort-cpu", progress=False))
    assert real["flagged_fake"] == report["new"]["real_flagged"]
    # a plain folder counts as real photos; a dry run leaves the bundle alone
    plain = tmp_path / "uploads"
    shutil.copytree(synth_data / "real" / "camera", plain)
    assert main(["threshold", str(bundle), str(plain), "--target-fpr", "0.1", "--backend", "ort-cpu", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "of 100 real photos" in out and "dry run" in out
    assert Bundle.open(bundle).manifest["threshold"] == record
    seed_layout = tmp_path / "seed"  # known source folders are read by their names, fakes included
    shutil.copytree(synth_data / "real" / "camera", seed_layout / "ffhq")
    shutil.copytree(synth_data / "fake" / "tconv", seed_layout / "stylegan2")
    assert main(["threshold", str(bundle), str(seed_layout), "--target-fpr", "0.1", "--backend", "ort-cpu", "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fake_images"] == 100
    assert main(["threshold", str(bundle), str(plain), "--target-fpr", "0.001", "--backend", "ort-cpu"]) == 2
    assert "needs at least 1000" in capsys.readouterr().err
    if importlib.util.find_spec("cryptography"):  # the sign extra: the new manifest signed in the same step
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519

        private = ed25519.Ed25519PrivateKey.generate()
        key, public = tmp_path / "sign.pem", tmp_path / "sign.pub.pem"
        key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        public.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        junk = tmp_path / "junk.pem"
        junk.write_text("not a key")
        assert main(["threshold", str(bundle), str(plain), "--target-fpr", "0.2", "--backend", "ort-cpu", "--sign-key", str(junk)]) == 2
        capsys.readouterr()
        assert Bundle.open(bundle).manifest["threshold"] == record  # a bad key fails before anything is written
        assert main(["threshold", str(bundle), str(plain), "--target-fpr", "0.1", "--backend", "ort-cpu", "--sign-key", str(key)]) == 0
        assert "signed with key" in capsys.readouterr().out
        opened = Bundle.open(bundle, public_key=public)
        assert opened.signature.startswith("verified") and opened.manifest["threshold"]["target_fpr"] == 0.1
    logits = np.array([3.0, 2.0, 2.0, 1.0, 0.0])
    from dfx.metrics import threshold_for_flag_rate

    assert threshold_for_flag_rate(logits, 0.2) == 2.5  # one of five above, ties kept below together
    assert np.sum(logits >= threshold_for_flag_rate(logits, 0.4)) == 1  # two allowed, but 2.0 is a tie: one flagged
