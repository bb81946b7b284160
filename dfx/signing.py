"""Signed bundles: an Ed25519 or ECDSA signature over manifest.json, in manifest.sig.

The manifest holds the sha256 of every file, and every reader checks files against it, so one
signature over the manifest's exact bytes vouches for the whole bundle. A reader given a
trusted public key refuses an unsigned bundle, a signature by another key, and a manifest
changed after signing; without a key nothing changes, but the reader can say "unsigned".

Keys are ordinary PEM (or OpenSSH) files, e.g. from OpenSSL:

    openssl genpkey -algorithm ed25519 -out dfx-sign.pem          # private: stays with export
    openssl pkey -in dfx-sign.pem -pubout -out dfx-sign.pub.pem    # public: goes to every reader

`cryptography` (the `sign` extra) is imported only when a signature is made or checked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from dfx.errors import DfxError, require

SIGNATURE = "manifest.sig"
SIGNATURE_FORMAT = "dfx-bundle-signature"
SIGNATURE_VERSION = 1
# Domain separation: these bytes can only ever verify as a dfx manifest signature.
_CONTEXT = b"dfx-bundle-manifest-signature-v1\n"
_MAX_SIGNATURE_BYTES = 64 * 1024
_ECDSA_HASHES = {"secp256r1": "SHA256", "secp384r1": "SHA384", "secp521r1": "SHA512"}
PUBLIC_KEY_ENV = "DFX_PUBLIC_KEY"  # a trusted public key file for readers that embed dfx
PASSWORD_ENV = "DFX_SIGN_KEY_PASSWORD"  # passphrase of an encrypted private key, if any


class SignatureError(DfxError):
    """A key cannot be read, or a bundle's signature is missing, malformed or does not verify.
    dfx.bundle re-raises it as a BundleError naming the bundle."""


def _crypto() -> Any:
    return require("cryptography", "sign", "signed bundles")


def load_private_key(path: str | os.PathLike) -> Any:
    """An Ed25519 or ECDSA (P-256/384/521) private key from a PEM or OpenSSH file."""
    _crypto()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    data = _read_key_file(path)
    password = os.environ.get(PASSWORD_ENV)
    secret = password.encode() if password else None
    try:
        key: Any = (serialization.load_ssh_private_key(data, secret) if b"OPENSSH PRIVATE KEY" in data
                    else serialization.load_pem_private_key(data, secret))  # which kinds are accepted is checked below
    except (ValueError, TypeError) as exc:
        raise SignatureError(
            f"cannot read the signing key {os.fspath(path)} ({exc})",
            hint=f"give a PEM private key (openssl genpkey -algorithm ed25519); set {PASSWORD_ENV} if it is encrypted",
        ) from exc
    if not isinstance(key, (ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey)):
        raise SignatureError(f"{os.fspath(path)} is a {type(key).__name__}; dfx signs with Ed25519 or ECDSA keys")
    _algorithm(key.public_key())  # refuses curves without a hash assignment
    return key


def load_public_key(source: Any) -> Any:
    """A trusted public key: a PEM/OpenSSH file path, its bytes, or a key object."""
    _crypto()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    if isinstance(source, (ed25519.Ed25519PublicKey, ec.EllipticCurvePublicKey)):
        key = source
    else:
        data = bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else _read_key_file(source)
        name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "the public key"
        try:
            loaded: Any = (serialization.load_ssh_public_key(data.strip()) if data.lstrip().startswith((b"ssh-", b"ecdsa-"))
                           else serialization.load_pem_public_key(data))
            key = loaded  # which kinds are accepted is checked below
        except (ValueError, TypeError) as exc:
            raise SignatureError(
                f"cannot read {name} as a public key ({exc})",
                hint="give the PEM public key (openssl pkey -in KEY.pem -pubout -out KEY.pub.pem)",
            ) from exc
    if not isinstance(key, (ed25519.Ed25519PublicKey, ec.EllipticCurvePublicKey)):
        raise SignatureError(f"the public key is a {type(key).__name__}; dfx bundles are signed with Ed25519 or ECDSA")
    _algorithm(key)
    return key


def key_id(public_key: Any) -> str:
    """A short, stable name for a public key: sha256 of its DER form, 16 hex digits."""
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()[:16]


def _algorithm(public_key: Any) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec

    if isinstance(public_key, ec.EllipticCurvePublicKey):
        curve = public_key.curve.name
        if curve not in _ECDSA_HASHES:
            raise SignatureError(f"ECDSA on {curve} is not supported", hint="use Ed25519 or ECDSA P-256")
        return f"ecdsa-{curve}-{_ECDSA_HASHES[curve].lower()}"
    return "ed25519"


def sign_manifest(manifest_bytes: bytes, private_key: Any) -> dict[str, Any]:
    """The manifest.sig document for these exact manifest bytes."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    public = private_key.public_key()
    algorithm = _algorithm(public)
    payload = _CONTEXT + manifest_bytes
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        signature = private_key.sign(payload, ec.ECDSA(getattr(hashes, _ECDSA_HASHES[public.curve.name])()))
    else:
        signature = private_key.sign(payload)
    return {
        "format": SIGNATURE_FORMAT,
        "version": SIGNATURE_VERSION,
        "algorithm": algorithm,
        "key_id": key_id(public),
        "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
        "signature": base64.b64encode(signature).decode("ascii"),
    }


def read_signature(root: Path) -> dict[str, Any] | None:
    """The parsed manifest.sig of a bundle, None when there is none. SignatureError when it is
    not a signature document."""
    path = Path(root) / SIGNATURE
    if not path.is_file():
        return None
    try:
        if path.stat().st_size > _MAX_SIGNATURE_BYTES:
            raise ValueError(f"over {_MAX_SIGNATURE_BYTES} bytes")
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as exc:
        raise SignatureError(f"{path} is not a signature ({exc})") from exc
    if (
        not isinstance(doc, dict)
        or doc.get("format") != SIGNATURE_FORMAT
        or doc.get("version") != SIGNATURE_VERSION
        or not all(isinstance(doc.get(k), str) for k in ("algorithm", "key_id", "signature"))
    ):
        raise SignatureError(f"{path} is not a dfx bundle signature (format {SIGNATURE_FORMAT} v{SIGNATURE_VERSION})")
    return doc


def describe_unchecked(doc: dict[str, Any] | None) -> str:
    """What a reader without a trusted key can say about a bundle's signature."""
    if doc is None:
        return "unsigned"
    return f"signed ({doc['algorithm']}, key {doc['key_id']}), not checked: no trusted public key given"


def verify_manifest(manifest_bytes: bytes, doc: dict[str, Any] | None, public_key: Any) -> str:
    """Check `doc` (from read_signature) over `manifest_bytes` with the trusted `public_key`.
    Returns the status line; raises SignatureError with the reason otherwise."""
    public_key = load_public_key(public_key)  # first: names the `sign` extra when it is missing
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    expected_id, algorithm = key_id(public_key), _algorithm(public_key)
    if doc is None:
        raise SignatureError(
            f"the bundle is unsigned and a trusted key ({expected_id}) was given: refusing it",
            hint="sign it at export (dfx export BUNDLE --sign-key KEY.pem), or drop the public key to accept unsigned bundles",
        )
    # The key decides the algorithm; the document's claim is only compared, never obeyed.
    if doc["algorithm"] != algorithm or doc["key_id"] != expected_id:
        raise SignatureError(
            f"the bundle is signed by key {doc['key_id']} ({doc['algorithm']}), not by the trusted key {expected_id} ({algorithm})",
            hint="ask its publisher for their public key, or re-sign it with yours",
        )
    try:
        signature = base64.b64decode(doc["signature"], validate=True)
    except ValueError as exc:
        raise SignatureError(f"the bundle's signature is not base64 ({exc})") from exc
    payload = _CONTEXT + manifest_bytes
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, payload, ec.ECDSA(getattr(hashes, _ECDSA_HASHES[public_key.curve.name])()))
        else:
            public_key.verify(signature, payload)
    except InvalidSignature as exc:
        raise SignatureError(
            "the bundle's signature does not match its manifest.json: the manifest was changed after signing",
            hint="re-export and re-sign the bundle, or get an untouched copy",
        ) from exc
    return f"verified: {algorithm} signature by key {expected_id}"


def trusted_key_from_env() -> str | None:
    """$DFX_PUBLIC_KEY (a public key file) for readers such as Detector.load and dfx scan."""
    value = os.environ.get(PUBLIC_KEY_ENV, "").strip()
    return value or None


def _read_key_file(path: Any) -> bytes:
    if not isinstance(path, (str, os.PathLike)):
        raise SignatureError(f"expected a key file path or PEM bytes, got {type(path).__name__}")
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_SIGNATURE_BYTES + 1)
    except OSError as exc:
        raise SignatureError(f"cannot read the key file {os.fspath(path)} ({exc.strerror or exc})") from exc
    if len(data) > _MAX_SIGNATURE_BYTES:
        raise SignatureError(f"{os.fspath(path)} is too large to be a key file")
    return data
