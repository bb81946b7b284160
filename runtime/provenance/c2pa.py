"""C2PA provenance beside the pixels: read an image's Content Credentials, say whether they
declare AI, combine that with the detector's decision, and sign the detector's finding back.

    reader = ProvenanceReader(trust_anchors="roots.pem")      # or None: at most "valid"
    prov = reader.read(jpeg_bytes)                            # never raises on any bytes
    prov.c2pa, prov.ai_declared, prov.failures, prov.error
    combined_verdict(result.decision, prov.c2pa, prov.ai_declared)

Reading goes through the official c2pa-python bindings (c2pa-rs) only; nothing here parses
JUMBF. The one shortcut is a byte search: every embedded manifest store is a JUMBF superbox
(box type ``jumb``) labelled ``c2pa``, so bytes holding neither string carry no manifest and
skip the reader. The reader is told never to touch the network (no remote manifests, no OCSP).

`c2pa-python` is imported inside the functions, so importing this module stays light; without
the `c2pa` extra, `ProvenanceReader.maybe()` gives None and a scan's provenance columns stay
null, while signing fails with the install hint.
"""

from __future__ import annotations

import io
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from dfx.errors import DfxError

# The custom assertion that carries dfx's finding in a signed manifest (reverse-domain label).
DETECTION_LABEL = "org.dfx.detection"

# IPTC digital source types that say the content was made by AI, as the last segment of
# http://cv.iptc.org/newscodes/digitalsourcetype/<term>.
AI_SOURCE_TYPES = frozenset(
    {
        "trainedAlgorithmicMedia",  # made by a generative model
        "compositeWithTrainedAlgorithmicMedia",  # edited with generative AI (e.g. generative fill)
        "algorithmicMedia",  # made by an algorithm, no training data (pure procedural)
        "compositeSynthetic",  # a composite that includes synthetic elements
    }
)
# Ingredients whose content ends up in the asset: the edited original and composited parts.
# inputTo (e.g. a reference image fed to a generator) does not put its pixels into the output.
CARRIED_RELATIONSHIPS = frozenset({"parentOf", "componentOf"})
# A manifest store whose JSON report is larger than this is refused (a row error, not a
# memory spike): real stores are kilobytes, thumbnails included.
MAX_REPORT_CHARS = 8 * 1024 * 1024
_MAX_INGREDIENT_DEPTH = 16  # manifest chains are short; a cycle must not loop forever


class ProvenanceError(DfxError):
    """Provenance cannot be read or signed as asked (bad trust anchors, key, image, c2pa error)."""


@dataclass(frozen=True)
class Provenance:
    """What one input's C2PA manifest says. `c2pa` is None when it was not read."""

    c2pa: str | None  # "none" | "valid" | "trusted" | "invalid"; None: not read (off, no extra, error)
    failures: tuple[str, ...] = ()  # validation failure codes (e.g. assertion.dataHash.mismatch)
    claim_generator: str | None = None  # the active manifest's claim generator, "name/version"
    ai_declared: bool | None = None  # True: declares AI; False: declares a non-AI source; None: says nothing
    source_types: tuple[str, ...] = ()  # every digitalSourceType counted, active manifest first
    error: str | None = None  # why it could not be read, or why the manifest is unreadable

    def columns(self) -> dict[str, Any]:
        """The fields a scan row carries (flat, so they fit a CSV)."""
        return {
            "c2pa": self.c2pa,
            "c2pa_failures": "; ".join(self.failures) or None,
            "claim_generator": self.claim_generator,
            "ai_declared": self.ai_declared,
            "provenance_error": self.error,
        }


NOT_READ = Provenance(None)


def combined_verdict(decision: str | None, c2pa: str | None, ai_declared: bool | None) -> str | None:
    """The one policy that puts the manifest and the detector together.

    | manifest (`c2pa`, `ai_declared`)          | detector   | verdict            |
    |-------------------------------------------|------------|--------------------|
    | valid or trusted, declares AI             | any        | `ai-declared`      |
    | invalid (tampered, corrupt, bad signature)| any        | `invalid-manifest` |
    | trusted, declares a non-AI source         | fake       | `conflict`         |
    | anything else (none, not read, valid ...) | fake/real  | `fake` / `real`    |
    | no AI declaration                         | no score   | None               |

    A declared AI origin is believed whatever the score: nobody forges a label that makes their
    image look generated, and a valid manifest cannot be altered unnoticed. A missing or stripped
    manifest is no evidence of anything, so the detector decides. A trusted manifest that
    declares a capture (or another non-AI source) against a "fake" score needs a human: either
    the signer was fooled or the detector is wrong. An invalid manifest is flagged; the row's
    `decision` still holds the detector's call. Without a trusted manifest a capture claim
    counts for nothing (anyone can self-sign one), so `valid` + capture + fake stays `fake`.
    """
    if c2pa in ("valid", "trusted") and ai_declared:
        return "ai-declared"
    if c2pa == "invalid":
        return "invalid-manifest"
    if decision is None:
        return None
    if c2pa == "trusted" and ai_declared is False and decision == "fake":
        return "conflict"
    return decision


# ---- reading -------------------------------------------------------------------------------------
def has_manifest_marker(data: bytes | bytearray | memoryview) -> bool:
    """False only when the bytes cannot hold an embedded manifest store (no JUMBF ``jumb`` box,
    no ``c2pa`` label): the fast path that lets manifest-less images skip the reader."""
    view = bytes(data) if isinstance(data, memoryview) else data
    return view.find(b"jumb") >= 0 or view.find(b"c2pa") >= 0


# The formats dfx decodes that carry C2PA manifests (c2pa reads no BMP).
_C2PA_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "GIF", "AVIF", "HEIF")


def sniff_mime(data: bytes) -> str | None:
    """The MIME type from the first bytes (dfx.images' signatures), for the formats C2PA reads
    (None: unknown or not one of them)."""
    from dfx.images import MIME_TYPES, SNIFF_BYTES, sniff

    fmt = sniff(bytes(data[:SNIFF_BYTES]))
    return MIME_TYPES[fmt] if fmt in _C2PA_FORMATS else None


def _read_pem(path: str | os.PathLike, what: str) -> str:
    try:
        text = Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProvenanceError(f"cannot read {what} {os.fspath(path)!r} ({exc})") from exc
    return text


def load_trust_anchors(path: str | os.PathLike) -> str:
    """A PEM bundle of trusted root certificates, checked to hold at least one certificate."""
    pem = _read_pem(path, "trust anchors")
    if "-----BEGIN CERTIFICATE-----" not in pem:
        raise ProvenanceError(f"{os.fspath(path)} holds no PEM certificate", hint="pass a PEM file of trusted root certificates")
    return pem


class ProvenanceReader:
    """Reads C2PA manifests with one c2pa Context (trust anchors, no network). Thread-safe:
    the decode pool's threads share it."""

    def __init__(self, trust_anchors: str | os.PathLike | None = None, *, trust_anchors_pem: str | None = None):
        from dfx.errors import require

        self.c2pa = require("c2pa", "c2pa", "reading C2PA manifests")
        pem = trust_anchors_pem if trust_anchors_pem is not None else (load_trust_anchors(trust_anchors) if trust_anchors else None)
        self.trusted = pem is not None  # without anchors a manifest can at most be "valid"
        self._pem = pem
        self._lock = threading.Lock()
        self._context = self._new_context()
        self._pid = os.getpid()

    def _new_context(self) -> Any:
        settings: dict[str, Any] = {
            # A screen must not reach out: remote manifests and OCSP would leak what is scanned.
            "verify": {"remote_manifest_fetch": False, "ocsp_fetch": False},
        }
        if self._pem is not None:
            settings["trust"] = {"trust_anchors": self._pem}
        try:
            return self.c2pa.Context.from_dict(settings)
        except Exception as exc:  # a malformed PEM is refused here, once, not on every file
            raise ProvenanceError(f"c2pa rejected the trust anchors ({exc})", hint="pass a PEM file of root certificates") from exc

    @classmethod
    def maybe(cls, enabled: bool = True, trust_anchors: str | os.PathLike | None = None) -> "ProvenanceReader | None":
        """A reader, or None when reading is off or the `c2pa` extra is missing (rows then carry
        null provenance). Asking for trust anchors without the extra is an error, not silence."""
        from dfx.errors import MissingExtraError

        if not enabled:
            return None
        try:
            return cls(trust_anchors)
        except MissingExtraError:
            if trust_anchors:
                raise
            return None

    def _ctx(self) -> Any:
        if os.getpid() != self._pid:  # a forked worker (Ray, multiprocessing) gets its own native context
            with self._lock:
                if os.getpid() != self._pid:
                    self._context, self._pid = self._new_context(), os.getpid()
        return self._context

    def read(self, data: bytes | bytearray | memoryview) -> Provenance:
        """The provenance of one encoded image. Never raises: failures come back as
        `Provenance(error=...)` (c2pa None for unreadable formats, "invalid" for a manifest that
        is there but broken)."""
        try:
            if not has_manifest_marker(data):
                return Provenance("none")
            return self._read(bytes(data))
        except Exception as exc:  # noqa: BLE001 - one file's trouble must stay in its row
            return Provenance(None, error=f"c2pa: {type(exc).__name__}: {exc}")

    def _read(self, data: bytes) -> Provenance:
        c2pa = self.c2pa
        try:
            reader = c2pa.Reader.try_create(sniff_mime(data), io.BytesIO(data), None, self._ctx())
        except c2pa.C2paError.NotSupported as exc:
            return Provenance(None, error=f"c2pa cannot read this format ({exc})")
        except c2pa.C2paError as exc:
            # A manifest marker was there but c2pa-rs could not parse the store: corrupt.
            return Provenance("invalid", error=f"unreadable C2PA manifest ({exc})")
        if reader is None:
            return Provenance("none")
        with reader:
            report = reader.json()
        if len(report) > MAX_REPORT_CHARS:
            return Provenance("invalid", error=f"C2PA manifest store too large ({len(report)} characters of JSON)")
        return interpret(json.loads(report))


def read_provenance(data: bytes, trust_anchors: str | os.PathLike | None = None, *, reader: ProvenanceReader | None = None) -> Provenance:
    """The provenance of encoded image bytes. Never raises on any input bytes (the fuzz
    harnesses' entry point); raises ProvenanceError for unreadable trust anchors and
    MissingExtraError when c2pa-python is not installed."""
    return (reader or ProvenanceReader(trust_anchors)).read(data)


def interpret(store: dict[str, Any]) -> Provenance:
    """A Provenance from c2pa-rs's manifest-store report (`Reader.json()`)."""
    manifests = store.get("manifests") or {}
    active = manifests.get(store.get("active_manifest") or "")
    if not isinstance(active, dict):
        return Provenance("invalid", error="C2PA manifest store has no active manifest")
    state = str(store.get("validation_state") or "").lower()
    failures = tuple(_failure_codes(store))
    if state not in ("valid", "trusted", "invalid"):
        state = "invalid" if failures else "valid"  # older reports: no state, failures only
    types = tuple(_source_types(active, manifests))
    ai = any(_term(t) in AI_SOURCE_TYPES for t in types) if types else None
    return Provenance(
        state,
        failures=failures if state == "invalid" else (),
        claim_generator=_claim_generator(active),
        ai_declared=ai,
        source_types=types,
    )


def _failure_codes(store: dict[str, Any]) -> Iterable[str]:
    results = store.get("validation_results") or {}
    seen: list[str] = []
    groups = [results.get("activeManifest") or {}] + [d.get("validationDeltas") or {} for d in results.get("ingredientDeltas") or []]
    for group in groups:
        for item in group.get("failure") or []:
            code = str(item.get("code", "")) if isinstance(item, dict) else str(item)
            if code and code not in seen:
                seen.append(code)
    if not results:  # c2pa-rs before validation_results: a flat validation_status list
        for item in store.get("validation_status") or []:
            code = str(item.get("code", "")) if isinstance(item, dict) else str(item)
            if code and code not in seen:
                seen.append(code)
    return seen


def _claim_generator(manifest: dict[str, Any]) -> str | None:
    info = manifest.get("claim_generator_info")
    if isinstance(info, list) and info and isinstance(info[0], dict) and info[0].get("name"):
        name, version = str(info[0]["name"]), info[0].get("version")
        return f"{name}/{version}" if version else name
    generator = manifest.get("claim_generator")
    return str(generator) if generator else None


def _term(source_type: str) -> str:
    return source_type.rstrip("/").rsplit("/", 1)[-1]


def _source_types(manifest: dict[str, Any], manifests: dict[str, Any], depth: int = 0, seen: set[str] | None = None) -> Iterable[str]:
    """digitalSourceType of every action in `manifest`, then of the ingredients it carries
    (parent and composited components), recursively."""
    seen = set() if seen is None else seen
    for assertion in manifest.get("assertions") or []:
        label = str(assertion.get("label", "")) if isinstance(assertion, dict) else ""
        if label.split("__")[0] not in ("c2pa.actions", "c2pa.actions.v2"):
            continue
        for action in (assertion.get("data") or {}).get("actions") or []:
            if isinstance(action, dict):
                source = action.get("digitalSourceType") or (action.get("parameters") or {}).get("digitalSourceType")
                if isinstance(source, str) and source:
                    yield source
    if depth >= _MAX_INGREDIENT_DEPTH:
        return
    for ingredient in manifest.get("ingredients") or []:
        if not isinstance(ingredient, dict) or ingredient.get("relationship", "componentOf") not in CARRIED_RELATIONSHIPS:
            continue
        ref = ingredient.get("active_manifest")
        child = manifests.get(ref) if isinstance(ref, str) else None
        if isinstance(child, dict) and isinstance(ref, str) and ref not in seen:
            seen.add(ref)
            yield from _source_types(child, manifests, depth + 1, seen)


# ---- signing -------------------------------------------------------------------------------------
ALGORITHMS = ("es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519")


@dataclass(frozen=True)
class SigningIdentity:
    """Who signs: a PEM certificate chain (signing certificate first, then intermediates; not
    the root), its PEM private key, the algorithm, and an optional RFC 3161 timestamp URL."""

    cert_chain_pem: str
    private_key_pem: str = field(repr=False)
    alg: str = "es256"
    tsa_url: str | None = None

    @classmethod
    def from_files(cls, cert: str | os.PathLike, key: str | os.PathLike, alg: str = "es256", tsa_url: str | None = None) -> "SigningIdentity":
        chain, private = _read_pem(cert, "certificate chain"), _read_pem(key, "private key")
        if "-----BEGIN CERTIFICATE-----" not in chain:
            raise ProvenanceError(f"{os.fspath(cert)} holds no PEM certificate",
                                  hint="--cert takes the PEM chain: signing certificate first, then intermediates")
        if "PRIVATE KEY-----" not in private:
            raise ProvenanceError(f"{os.fspath(key)} holds no PEM private key", hint="--key takes an unencrypted PEM (PKCS#8) private key")
        if "ENCRYPTED PRIVATE KEY" in private:
            raise ProvenanceError(f"{os.fspath(key)} is encrypted", hint="c2pa needs an unencrypted PEM private key")
        return cls(chain, private, alg, tsa_url)


def finding_assertion(result: Any, threshold: float) -> dict[str, Any]:
    """The `org.dfx.detection` assertion's data: the detector's finding on one image."""
    from dfx import __version__

    return {
        "decision": result.decision,
        "logit": result.logit,
        "probability": result.probability,
        "threshold": float(threshold),
        "model_sha256": result.model_sha256,
        "backend": result.backend,
        "precision": result.precision,
        "dfx_version": __version__,
    }


def sign_finding(
    data: bytes,
    result: Any,
    threshold: float,
    identity: SigningIdentity,
    *,
    title: str = "image",
) -> bytes:
    """The image `data` with a new C2PA manifest: EDIT intent, the original (and its manifest, if
    any) as the parent ingredient, and the detector's `result` as the `org.dfx.detection`
    assertion. Returns the signed file's bytes; pixels are untouched."""
    from dfx import __version__
    from dfx.errors import require

    c2pa = require("c2pa", "c2pa", "signing C2PA manifests")
    if result.error is not None or result.logit is None:
        raise ProvenanceError(f"{result.path}: no finding to sign ({result.error})")
    if identity.alg not in ALGORITHMS:
        raise ProvenanceError(f"unknown signing algorithm {identity.alg!r}", hint=f"choose from {', '.join(ALGORITHMS)}")
    mime = sniff_mime(data)
    if mime is None:
        raise ProvenanceError(f"{title}: c2pa signing supports JPEG, PNG, WebP, TIFF and GIF here; this is none of them")
    manifest = {
        "claim_generator_info": [{"name": "dfx", "version": __version__}],
        "title": title,
        "assertions": [{"label": DETECTION_LABEL, "data": finding_assertion(result, threshold)}],
    }
    settings = {
        "verify": {"remote_manifest_fetch": False, "ocsp_fetch": False},
        "builder": {"thumbnail": {"enabled": False}},  # the finding needs no preview; keeps files small
    }
    try:
        info = c2pa.C2paSignerInfo(identity.alg.encode(), identity.cert_chain_pem.encode(), identity.private_key_pem.encode(), identity.tsa_url)
        signer = c2pa.Signer.from_info(info)
        with c2pa.Context.from_dict(settings) as context, c2pa.Builder(manifest, context=context) as builder:
            builder.set_intent(c2pa.C2paBuilderIntent.EDIT)
            builder.add_ingredient({"title": title, "relationship": "parentOf"}, mime, io.BytesIO(data))
            out = io.BytesIO()
            builder.sign(signer, mime, io.BytesIO(data), out)
        signer.close()
    except c2pa.C2paError as exc:
        raise ProvenanceError(f"c2pa could not sign {title}: {exc}", hint=_sign_hint(str(exc))) from exc
    return out.getvalue()


def _sign_hint(message: str) -> str:
    if "mismatch" in message or "certificate" in message.lower() or "key" in message.lower():
        return ("the key must match the first certificate of --cert, which must be a v3 end-entity certificate "
                "(not a CA) with keyUsage digitalSignature, extendedKeyUsage emailProtection or documentSigning, "
                "an authority key identifier and an O= in its subject")
    return "check the certificate chain, key and algorithm"


def read_detection(data: bytes, reader: ProvenanceReader | None = None) -> dict[str, Any] | None:
    """The `org.dfx.detection` assertion of the active manifest, or None (for checking signed files)."""
    reader = reader or ProvenanceReader()
    c2pa = reader.c2pa
    try:
        found = c2pa.Reader.try_create(sniff_mime(data), io.BytesIO(data), None, reader._ctx())
        if found is None:
            return None
        with found:
            store = found.get_active_manifest()
    except c2pa.C2paError as exc:
        raise ProvenanceError(f"c2pa cannot read the manifest ({exc})") from exc
    for assertion in (store or {}).get("assertions") or []:
        if isinstance(assertion, dict) and assertion.get("label") == DETECTION_LABEL:
            return assertion.get("data")
    return None


def sign_image(detector: Any, image: str | os.PathLike | bytes, identity: SigningIdentity, out: str | os.PathLike | None = None) -> tuple[bytes, Any]:
    """Scan `image` (a path or encoded bytes) with `detector` (a dfx Detector) and sign its
    finding into the image (sign_finding). Writes `out` when given; returns (signed bytes, the
    detector's Result). The image is read once; its bytes feed both the detector and c2pa."""
    from dfx.images import describe, read_bytes

    name = describe(image)
    data = bytes(image) if isinstance(image, (bytes, bytearray, memoryview)) else read_bytes(image)
    result = detector.predict([data])[0]
    if result.error is not None:
        raise ProvenanceError(f"{name}: {result.error}")
    title = os.path.basename(name) if isinstance(image, (str, os.PathLike)) else "image"
    signed = sign_finding(data, result, detector.threshold, identity, title=title)
    if out is not None:
        Path(out).write_bytes(signed)
    return signed, result
