"""The bundle: one folder that carries a trained model and every form made from it.

``manifest.json`` records the input contract (size, layout, dtype, fit policy), the labels,
the decision threshold and how it was chosen, data summary, metrics, and for every file its
sha256, size, role and the versions of the tools that made it. Anything that reads a bundle
checks the manifest and the hashes first and refuses what does not match. An engine is
executable code: never load one whose hash the manifest does not vouch for.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

from dfx.atomic import write_atomic
from dfx.forms import FORMS, ONNX_FORMS
from dfx.errors import DfxError

FORMAT = "dfx-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LABELS = ("real", "fake")  # index = model target; the logit scores "fake"
# The manifest role of each ONNX form: export writes them, the runtime and the bench look them up.
# The manifest roles of the ONNX forms (dfx.forms is the table).
ONNX_ROLES = {name: FORMS[name].role for name in ONNX_FORMS}


# Bounds for manifests from elsewhere: a hostile one must not make a reader allocate gigabytes
# (a 32-image batch at 2048 px is 400 MB of uint8) or read a file the size of a disk.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_INPUT_SIDE = 2048
_HEX = frozenset("0123456789abcdef")


class BundleError(DfxError):
    """A bundle is missing, malformed, unsigned where a signature is required, or a file does
    not match the manifest."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sigmoid(logit: float) -> float:
    return 1.0 / (1.0 + math.exp(-logit)) if logit >= 0 else math.exp(logit) / (1.0 + math.exp(logit))


class Bundle:
    """A bundle folder and its manifest. Create with `Bundle.create`, read with `Bundle.open`."""

    def __init__(self, root: Path, manifest: dict[str, Any]):
        self.root = Path(root)
        self.manifest = manifest
        self._verified: set[str] = set()
        self._manifest_bytes: bytes | None = None  # exactly what was read (and what a signature covers)
        self.signature = "unsigned"  # a status line: unsigned / signed, not checked / verified: ...

    # ---- creating and saving -------------------------------------------------------------
    @classmethod
    def create(
        cls,
        root: str | os.PathLike,
        *,
        input_size: tuple[int, int],
        fit: str,
        architecture: str,
        overwrite: bool = False,
    ) -> "Bundle":
        root = Path(root)
        if (root / MANIFEST).exists() and not overwrite:
            raise BundleError(f"{root} already holds a bundle", hint="pass --overwrite or choose another --out")
        root.mkdir(parents=True, exist_ok=True)
        height, width = input_size
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "architecture": architecture,
            # The model takes float32 NHWC RGB in 0..255 (rescaling is inside the model);
            # runners feed it uint8 pixels from dfx.images cast to float32.
            "input": {
                "height": int(height),
                "width": int(width),
                "channels": 3,
                "layout": "NHWC",
                "dtype": "float32",
                "range": [0, 255],
                "fit": fit,
            },
            "labels": list(LABELS),
            "positive_label": "fake",
            "threshold": {"logit": 0.0, "method": "default"},
            "files": {},
        }
        return cls(root, manifest)

    def save(self) -> None:
        """Write manifest.json atomically (a crash never leaves half a manifest). A signature of
        the old manifest cannot hold for the new one, so it is removed: sign() again."""
        from dfx.signing import SIGNATURE

        text = json.dumps(self.manifest, indent=2, sort_keys=False, default=json_default)
        (self.root / SIGNATURE).unlink(missing_ok=True)
        write_atomic(self.root / MANIFEST, text + "\n")
        self._manifest_bytes = (text + "\n").encode()
        self.signature = "unsigned"

    def sign(self, private_key: Any) -> str:
        """Sign manifest.json as it is on disk with an Ed25519/ECDSA key (a key object or a PEM
        file path); writes manifest.sig and returns the key id."""
        from dfx import signing

        key = private_key if hasattr(private_key, "sign") else signing.load_private_key(private_key)
        data = (self.root / MANIFEST).read_bytes()
        doc = signing.sign_manifest(data, key)
        write_atomic(self.root / signing.SIGNATURE, json.dumps(doc, indent=2) + "\n")
        self._manifest_bytes = data
        self.signature = f"signed ({doc['algorithm']}, key {doc['key_id']})"
        return doc["key_id"]

    @property
    def signature_line(self) -> str:
        """The signature status as the commands print it: "bundle is unsigned", "bundle is
        signed (ed25519, key ...), not checked", "bundle verified: ed25519 signature by key ..."."""
        verb = "is " if self.signature.startswith(("unsigned", "signed")) else ""
        return f"bundle {verb}{self.signature}"

    def require_signature(self, public_key: Any) -> str:
        """Refuse this bundle (BundleError with the reason) unless manifest.sig is a valid
        signature by `public_key` (a key object, PEM bytes or a PEM file path) over the manifest
        exactly as it was read. Returns the status line, also kept in `self.signature`."""
        from dfx import signing

        data = self._manifest_bytes
        if data is None:
            data = (self.root / MANIFEST).read_bytes()
        try:
            self.signature = signing.verify_manifest(data, signing.read_signature(self.root), public_key)
        except signing.SignatureError as exc:
            raise BundleError(f"{self.root}: {exc}", hint=exc.hint) from exc
        return self.signature

    def add_file(self, name: str, *, role: str, tools: dict[str, str] | None = None, **extra: Any) -> str:
        """Record `name` (relative to the bundle) with its sha256; returns the hash. Call save()."""
        path = self.root / name
        if not path.is_file():
            raise BundleError(f"cannot add {name}: no such file in {self.root}")
        digest = sha256_file(path)
        self.manifest["files"][name] = {
            "sha256": digest,
            "bytes": path.stat().st_size,
            "role": role,
            "tools": dict(tools or {}),
            **extra,
        }
        self._verified.add(name)
        return digest

    def remove_file(self, name: str) -> None:
        self.manifest["files"].pop(name, None)
        (self.root / name).unlink(missing_ok=True)
        self._verified.discard(name)

    def weight_line(self) -> str:
        """What the bundle weighs on disk, by the manifest's files: "353.1 MB (model.keras 344.0 MB, ...)"."""
        files = sorted(self.manifest["files"].items(), key=lambda kv: -kv[1].get("bytes", 0))
        total = sum(f.get("bytes", 0) for _, f in files)
        big = ", ".join(f"{name} {f['bytes'] / 1e6:.1f} MB" for name, f in files[:4] if f.get("bytes", 0) >= 1e6)
        return f"{total / 1e6:.1f} MB" + (f" ({big})" if big else "")

    # ---- reading ---------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | os.PathLike, *, verify: bool = True, public_key: Any = None) -> "Bundle":
        """Open a bundle, check its manifest, and (by default) the sha256 of every listed file.

        With a trusted `public_key` (key object, PEM bytes or PEM file path) the manifest's
        signature is checked first, on the bytes as read, before they are even parsed: an
        unsigned or mismatching bundle is refused. Whatever the folder holds, the only error
        raised is BundleError (MissingExtraError when a key is given without `cryptography`).
        """
        root = Path(root)
        path = root / MANIFEST
        if not root.exists():
            raise BundleError(f"no bundle at {root}: the folder does not exist")
        if not path.is_file():
            raise BundleError(f"{root} is not a dfx bundle: it has no {MANIFEST}", hint="train one with `dfx train`")
        try:
            with open(path, "rb") as handle:
                data = handle.read(MAX_MANIFEST_BYTES + 1)
        except OSError as exc:
            raise BundleError(f"cannot read {path} ({exc.strerror or exc})") from exc
        if len(data) > MAX_MANIFEST_BYTES:
            raise BundleError(f"{path} is over {MAX_MANIFEST_BYTES} bytes; not a dfx manifest")
        bundle = cls(root, {})
        bundle._manifest_bytes = data
        if public_key is not None:
            bundle.require_signature(public_key)
        else:
            from dfx import signing

            try:
                bundle.signature = signing.describe_unchecked(signing.read_signature(root))
            except signing.SignatureError as exc:
                bundle.signature = f"unsigned ({exc})"
        try:
            manifest = json.loads(data.decode("utf-8"))
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
            raise BundleError(f"{path} is not valid JSON ({str(exc)[:200]})") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise BundleError(f"{path} is not a dfx bundle manifest")
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleError(
                f"{root} has bundle format {str(version)[:40]}; this dfx reads format {FORMAT_VERSION}",
                hint="re-export the bundle with this version of dfx",
            )
        check_manifest(manifest, path)
        bundle.manifest = manifest
        if verify:
            for name in manifest["files"]:
                bundle.verify(name)
        return bundle

    def has(self, name: str) -> bool:
        return name in self.manifest["files"]

    def verify(self, name: str) -> Path:
        """Check that `name` is vouched for by the manifest and that its bytes match."""
        entry = self.manifest["files"].get(name)
        if entry is None:
            raise BundleError(f"{name} is not listed in {self.root / MANIFEST}; refusing to use it")
        path = self.root / name
        if name in self._verified:
            return path
        if not path.is_file():
            raise BundleError(f"{self.root} is incomplete: {name} is listed in the manifest but missing")
        try:
            actual = sha256_file(path)
        except OSError as exc:
            raise BundleError(f"cannot read {path} ({exc.strerror or exc})") from exc
        if actual != entry["sha256"]:
            raise BundleError(
                f"{path} does not match the manifest (sha256 {actual[:12]}… != {entry['sha256'][:12]}…); "
                "refusing to use a file that was changed after export",
                hint="re-run `dfx export` to rebuild it",
            )
        self._verified.add(name)
        return path

    def file(self, name: str) -> Path:
        """The path of a verified file."""
        return self.verify(name)

    def sha256(self, name: str) -> str:
        return self.manifest["files"][name]["sha256"]

    # ---- convenient views ------------------------------------------------------------------
    @property
    def input_size(self) -> tuple[int, int]:
        spec = self.manifest["input"]
        return int(spec["height"]), int(spec["width"])

    @property
    def fit(self) -> str:
        return self.manifest["input"]["fit"]

    @property
    def threshold(self) -> float:
        """Decision threshold on the logit: logit >= threshold means "fake"."""
        return float(self.manifest["threshold"]["logit"])

    def probability(self, logit: float) -> float:
        """The calibrated P(fake) of a logit: sigmoid(scale * logit + offset) with the Platt
        fit stored at training ("calibration" in the manifest); the plain sigmoid without one."""
        calibration = self.manifest.get("calibration") or {}
        return sigmoid(float(calibration.get("scale", 1.0)) * logit + float(calibration.get("offset", 0.0)))

    def files_with_role(self, role: str) -> list[str]:
        return [n for n, e in self.manifest["files"].items() if e.get("role") == role]


def _safe_name(name: object) -> bool:
    """A bundle-relative file name that stays inside the bundle: no absolute paths, no `..`,
    no empty or odd parts (a manifest from elsewhere must not point a reader at /etc/...)."""
    if not isinstance(name, str) or not name or len(name) > 255 or "\\" in name or "\x00" in name:
        return False
    parts = name.split("/")
    return not name.startswith("/") and all(p not in ("", ".", "..") for p in parts)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_manifest(manifest: dict[str, Any], path: Path | str = MANIFEST) -> None:
    """Every field a reader relies on has the type and range it expects; else BundleError naming
    the field. Readers can then index the manifest without meeting a TypeError."""
    from dfx.images import FIT_POLICIES

    def bad(field: str, why: str) -> BundleError:
        return BundleError(f"{path}: {field} {why}", hint="the manifest was damaged or not written by dfx; re-export the bundle")

    spec = manifest.get("input")
    if not isinstance(spec, dict):
        raise bad("input", "is missing")
    for key in ("height", "width"):
        value: Any = spec.get(key)
        if not _is_int(value) or not 1 <= value <= MAX_INPUT_SIDE:
            raise bad(f"input.{key}", f"must be an integer in 1..{MAX_INPUT_SIDE}, not {str(value)[:40]}")
    if spec.get("fit") not in FIT_POLICIES:
        raise bad("input.fit", f"must be one of {', '.join(FIT_POLICIES)}")
    threshold = manifest.get("threshold")
    logit = threshold.get("logit") if isinstance(threshold, dict) else None
    if not isinstance(logit, (int, float)) or isinstance(logit, bool) or not math.isfinite(logit):
        raise bad("threshold.logit", "must be a finite number")
    calibration = manifest.get("calibration")  # the Platt fit behind Bundle.probability, when present
    if calibration is not None:
        if not isinstance(calibration, dict):
            raise bad("calibration", "must be an object")
        for key in ("scale", "offset"):
            value = calibration.get(key, 0.0)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise bad(f"calibration.{key}", "must be a finite number")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise bad("files", "must be an object of file name -> entry")
    for name, entry in files.items():
        if not _safe_name(name):
            raise bad(f"files[{name[:80]!r}]", "is not a plain relative path inside the bundle")
        if not isinstance(entry, dict):
            raise bad(f"files[{name!r}]", "must be an object")
        digest = entry.get("sha256")
        if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= _HEX:
            raise bad(f"files[{name!r}].sha256", "must be 64 lowercase hex digits")
        if not isinstance(entry.get("role", ""), str):
            raise bad(f"files[{name!r}].role", "must be text")
    engines = manifest.get("engines", [])
    if not isinstance(engines, list):
        raise bad("engines", "must be a list")
    for i, entry in enumerate(engines):
        if not isinstance(entry, dict):
            raise bad(f"engines[{i}]", "must be an object")
        for key in ("file", "precision", "compute_capability", "trt_version"):
            if not isinstance(entry.get(key, ""), str) or len(entry.get(key, "")) > 255:
                raise bad(f"engines[{i}].{key}", "must be short text")
        if not _safe_name(entry.get("file", "")):
            raise bad(f"engines[{i}].file", "is not a plain relative path inside the bundle")
        batch = entry.get("max_batch", 32)
        if not _is_int(batch) or not 1 <= batch <= 4096:
            raise bad(f"engines[{i}].max_batch", "must be an integer in 1..4096")
        if not isinstance(entry.get("lean", False), bool):
            raise bad(f"engines[{i}].lean", "must be true or false")


def tool_versions(*modules: str) -> dict[str, str]:
    """Versions of the named distributions/modules that are importable (for the manifest)."""
    from importlib import metadata

    versions: dict[str, str] = {}
    for name in modules:
        for dist in _DISTRIBUTIONS.get(name, (name,)):
            try:
                versions[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return versions


# One import name, several wheels that provide it.
_DISTRIBUTIONS = {
    "tensorflow": ("tensorflow", "tensorflow-cpu"),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt_lean", "tensorrt-lean"),
}


def json_default(value: Any) -> Any:
    # numpy scalars and arrays, Paths
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")
