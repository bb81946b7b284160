"""Test-only C2PA signing material, made fresh by the tests (never committed): a root CA, an
intermediate CA and an ES256 signing certificate that meet c2pa-rs's certificate profile, plus
helpers that sign fixture images with arbitrary manifests through the official bindings.

The leaf profile c2pa-rs checks: X.509 v3, not a CA, keyUsage digitalSignature, an extended key
usage it accepts (emailProtection here), an authority key identifier, and an O= in the subject
(without it c2pa-rs has been reported to fail with claimSignature.mismatch).
"""

from __future__ import annotations

import datetime
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"


@dataclass(frozen=True)
class TestPKI:
    root_pem: bytes  # the trust anchor
    chain_pem: bytes  # signing certificate, then the intermediate
    key_pem: bytes  # the signing certificate's PKCS#8 private key

    def write(self, folder: Path) -> dict[str, Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"root": folder / "root.pem", "chain": folder / "chain.pem", "key": folder / "key.pem"}
        paths["root"].write_bytes(self.root_pem)
        paths["chain"].write_bytes(self.chain_pem)
        paths["key"].write_bytes(self.key_pem)
        return paths


def make_pki(organization: str = "dfx tests") -> TestPKI:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(common: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                x509.NameAttribute(NameOID.COMMON_NAME, common),
            ]
        )

    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)
    end = start + datetime.timedelta(days=30)
    ca_usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)  # keyCertSign, cRLSign
    signing_usage = x509.KeyUsage(True, False, False, False, False, False, False, False, False)  # digitalSignature

    def certificate(subject: str, key: Any, issuer: x509.Name, issuer_key: Any, ca: bool, path_length: int | None) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
            .add_extension(ca_usage if ca else signing_usage, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
        )
        if not ca:
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    root_key, inter_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = certificate("dfx test root CA", root_key, name("dfx test root CA"), root_key, True, None)
    inter = certificate("dfx test intermediate CA", inter_key, root.subject, root_key, True, 0)
    leaf = certificate("dfx test signer", leaf_key, inter.subject, inter_key, False, None)
    pem = serialization.Encoding.PEM
    key = leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return TestPKI(root.public_bytes(pem), leaf.public_bytes(pem) + inter.public_bytes(pem), key)


def image_bytes(fmt: str, size: int = 64, seed: int = 0) -> bytes:
    """A small noisy RGB image (JPEG or PNG), no manifest."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def created(source_type: str) -> dict[str, Any]:
    """A c2pa.actions.v2 assertion whose one action creates the asset from `source_type`."""
    return {"label": "c2pa.actions.v2", "data": {"actions": [{"action": "c2pa.created", "digitalSourceType": IPTC + source_type}]}}


def sign(pki: TestPKI, data: bytes, mime: str, assertions: list[dict[str, Any]], ingredients: list[tuple[dict[str, Any], bytes, str]] = (), generator: str = "dfx-fixture") -> bytes:
    """`data` signed with a manifest holding `assertions` and (json, bytes, mime) ingredients."""
    import c2pa

    manifest = {"claim_generator_info": [{"name": generator, "version": "1.0"}], "title": "fixture", "assertions": assertions}
    settings = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}, "builder": {"thumbnail": {"enabled": False}}}
    signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, pki.chain_pem, pki.key_pem, None))
    with c2pa.Context.from_dict(settings) as context, c2pa.Builder(manifest, context=context) as builder:
        for ingredient, source, ingredient_mime in ingredients:
            builder.add_ingredient(ingredient, ingredient_mime, io.BytesIO(source))
        out = io.BytesIO()
        builder.sign(signer, mime, io.BytesIO(data), out)
    signer.close()
    return out.getvalue()


def tamper_jpeg_pixels(signed: bytes) -> bytes:
    """Change a few bytes of entropy-coded pixel data after the last SOS marker, leaving the
    manifest intact: the image still decodes, its hash no longer matches the manifest's."""
    sos = signed.rfind(b"\xff\xda")
    assert sos > 0, "not a baseline JPEG"
    data = bytearray(signed)
    spot = sos + (len(signed) - sos) // 2
    for offset in range(4):
        if data[spot + offset] not in (0xFF, 0xFE, 0x00):  # never make or break a marker
            data[spot + offset] ^= 0x01
    return bytes(data)
