"""Signed bundles (issue #15): a signature over manifest.json; given a trusted public key,
Bundle.open, Detector.load and dfx scan refuse unsigned, foreign and changed bundles with the
reason; without a key they behave as before and say whether the bundle is signed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from _blocked import run_blocked
from _hardening_bundle import make_onnx_bundle

from dfx.bundle import Bundle, BundleError
from dfx.cli import main

pytest.importorskip("cryptography", reason="signed bundles need cryptography (pip install 'dfx[sign]')")


def _write_keypair(folder: Path, name: str, private) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization

    secret, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    secret.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    public.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return secret, public


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    folder = tmp_path_factory.mktemp("keys")
    return {
        "ed25519": _write_keypair(folder, "ed25519", ed25519.Ed25519PrivateKey.generate()),
        "other": _write_keypair(folder, "other", ed25519.Ed25519PrivateKey.generate()),
        "p256": _write_keypair(folder, "p256", ec.generate_private_key(ec.SECP256R1())),
    }


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    return make_onnx_bundle(tmp_path_factory.mktemp("plain") / "bundle")


@pytest.fixture()
def signed(plain, keys, tmp_path) -> Path:
    root = Path(shutil.copytree(plain, tmp_path / "signed"))
    Bundle.open(root).sign(keys["ed25519"][0])
    return root


def test_signed_bundle_opens_with_its_key(signed, keys):
    bundle = Bundle.open(signed, public_key=keys["ed25519"][1])
    assert bundle.signature.startswith("verified: ed25519 signature by key ")
    doc = json.loads((signed / "manifest.sig").read_text())
    assert doc["algorithm"] == "ed25519" and doc["key_id"] in bundle.signature
    assert Bundle.open(signed, public_key=keys["ed25519"][1].read_bytes()).signature == bundle.signature  # PEM bytes too


def test_ecdsa_p256_signs_and_verifies(plain, keys, tmp_path):
    root = Path(shutil.copytree(plain, tmp_path / "b"))
    Bundle.open(root).sign(keys["p256"][0])
    assert "ecdsa-secp256r1-sha256" in Bundle.open(root, public_key=keys["p256"][1]).signature
    with pytest.raises(BundleError, match="not by the trusted key"):
        Bundle.open(root, public_key=keys["ed25519"][1])  # the key decides the algorithm, not the file


def test_without_a_key_nothing_changes_but_the_status_says_so(plain, signed):
    assert Bundle.open(plain).signature == "unsigned"
    status = Bundle.open(signed).signature
    assert status.startswith("signed (ed25519, key ") and "not checked" in status


def test_unsigned_bundle_is_refused_when_a_key_is_given(plain, keys):
    with pytest.raises(BundleError, match="unsigned and a trusted key") as info:
        Bundle.open(plain, public_key=keys["ed25519"][1])
    assert "--sign-key" in info.value.hint


def test_foreign_signature_is_refused(signed, keys):
    with pytest.raises(BundleError, match="signed by key .* not by the trusted key"):
        Bundle.open(signed, public_key=keys["other"][1])


def test_changed_manifest_is_refused(signed, keys):
    path = signed / "manifest.json"
    text = path.read_text()
    assert '"logit": 0.0' in text
    path.write_text(text.replace('"logit": 0.0', '"logit": -9.0'))  # everything is "fake" now
    with pytest.raises(BundleError, match="changed after signing"):
        Bundle.open(signed, public_key=keys["ed25519"][1])
    assert Bundle.open(signed).threshold == -9.0  # without a key: today's behaviour


def test_changed_model_file_is_refused(signed, keys):
    (signed / "model.onnx").write_bytes((signed / "model.onnx").read_bytes() + b"\x00")
    with pytest.raises(BundleError, match="does not match the manifest"):
        Bundle.open(signed, public_key=keys["ed25519"][1])  # the signed manifest vouches for the hash


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'{"format": "dfx-bundle-signature", "version": 1}', b"\xff" * 100,
                                     b'{"format": "dfx-bundle-signature", "version": 1, "algorithm": "ed25519", '
                                     b'"key_id": "x", "signature": "!!"}'])
def test_garbage_signature_file(signed, keys, content):
    (signed / "manifest.sig").write_bytes(content)
    with pytest.raises(BundleError):
        Bundle.open(signed, public_key=keys["ed25519"][1])
    assert Bundle.open(signed).signature.startswith(("unsigned (", "signed ("))


def test_saving_the_manifest_drops_the_stale_signature(signed, keys):
    bundle = Bundle.open(signed)
    bundle.manifest["threshold"]["logit"] = 1.5
    bundle.save()
    assert not (signed / "manifest.sig").exists()
    with pytest.raises(BundleError, match="unsigned"):
        Bundle.open(signed, public_key=keys["ed25519"][1])


def test_detector_load_checks_the_key(plain, signed, keys, monkeypatch):
    from dfx.runtime.scan.detector import Detector

    with pytest.raises(BundleError, match="unsigned"):
        Detector.load(plain, backend="ort-cpu", public_key=keys["ed25519"][1])
    with pytest.raises(BundleError, match="unsigned"):
        Detector.load(Bundle.open(plain), backend="ort-cpu", public_key=keys["ed25519"][1])
    monkeypatch.setenv("DFX_PUBLIC_KEY", str(keys["other"][1]))
    with pytest.raises(BundleError, match="not by the trusted key"):
        Detector.load(signed, backend="ort-cpu")  # the deployment's key, from the environment
    monkeypatch.setenv("DFX_PUBLIC_KEY", str(keys["ed25519"][1]))
    with Detector.load(signed, backend="ort-cpu") as detector:
        assert detector.bundle.signature.startswith("verified")
        [result] = detector.predict(np.full((16, 16, 3), 255, np.uint8))
        assert result.ok and result.decision == "fake" and result.logit == pytest.approx(127.5 / 32)


def test_scan_refuses_and_reports(plain, signed, keys, tmp_path, capsys):
    image = tmp_path / "x.npy.png"
    from PIL import Image

    Image.new("RGB", (16, 16), (10, 10, 10)).save(image)
    out = tmp_path / "rows.jsonl"
    assert main(["scan", str(plain), str(image), "--out", str(out), "--public-key", str(keys["ed25519"][1])]) == 2
    err = capsys.readouterr().err
    assert "unsigned and a trusted key" in err and "Traceback" not in err and not out.exists()
    assert main(["scan", str(signed), str(image), "--out", str(out), "--public-key", str(keys["ed25519"][1]),
                 "--backend", "ort-cpu"]) == 0
    assert "dfx scan: bundle verified: ed25519 signature by key" in capsys.readouterr().err
    assert main(["scan", str(signed), str(image), "--out", str(out), "--overwrite", "--backend", "ort-cpu"]) == 0
    assert "dfx scan: bundle is signed (ed25519" in capsys.readouterr().err
    assert main(["scan", str(plain), str(image), "--out", str(out), "--overwrite", "--backend", "ort-cpu"]) == 0
    assert "dfx scan: bundle is unsigned" in capsys.readouterr().err


def test_bad_keys_are_clear_errors(plain, keys, tmp_path, capsys):
    with pytest.raises(BundleError, match="cannot read"):
        Bundle.open(plain, public_key=tmp_path / "missing.pub.pem")
    with pytest.raises(BundleError, match="as a public key"):
        Bundle.open(plain, public_key=b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    # export checks its key before any work (the bundle here could not even be exported)
    assert main(["export", str(plain), "--sign-key", str(tmp_path / "missing.pem")]) == 2
    assert "cannot read the key file" in capsys.readouterr().err
    assert main(["export", str(plain), "--sign-key", str(keys["ed25519"][1])]) == 2  # a public key is not a signing key
    assert "cannot read the signing key" in capsys.readouterr().err


def test_signing_stays_out_of_light_imports_and_names_its_extra(signed, keys):
    result = run_blocked(
        f"""
        import dfx.bundle, dfx.signing
        from dfx.bundle import Bundle
        assert "cryptography" not in sys.modules
        print(Bundle.open({str(signed)!r}).signature)
        try:
            Bundle.open({str(signed)!r}, public_key={str(keys["ed25519"][1])!r})
        except ImportError as exc:
            print("HINT", exc.hint)
        """,
        ("cryptography",),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "signed (ed25519" in result.stdout and "HINT pip install 'dfx[sign]'" in result.stdout


def test_export_signs_what_it_wrote_and_readers_verify_it(trained_bundle, keys, tmp_path, capsys):
    """`dfx export --sign-key` end to end: the exported bundle (ONNX, parity report and all)
    verifies with the public key in Bundle.open and dfx scan, and any later change is refused."""
    bundle = Path(shutil.copytree(trained_bundle, tmp_path / "bundle"))
    secret, public = keys["ed25519"]
    assert main(["export", str(bundle), "--sign-key", str(secret), "--parity-count", "16"]) == 0
    assert "signed manifest.json with key" in capsys.readouterr().out
    opened = Bundle.open(bundle, public_key=public)
    assert opened.signature.startswith("verified: ed25519") and opened.has("model.onnx")
    images = sorted(p for p in Path(opened.manifest["data"]["root"]).rglob("*.png"))[:3]
    out = tmp_path / "rows.jsonl"
    assert main(["scan", str(bundle), *map(str, images), "--out", str(out), "--public-key", str(public), "--backend", "ort-cpu"]) == 0
    assert "bundle verified: ed25519" in capsys.readouterr().err and len(out.read_text().splitlines()) == 3
    with pytest.raises(BundleError, match="not by the trusted key"):
        Bundle.open(bundle, public_key=keys["other"][1])
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["threshold"] = -100.0  # a changed decision rule: everything "fake"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="manifest"):
        Bundle.open(bundle, public_key=public)
