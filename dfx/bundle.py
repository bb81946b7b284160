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
import tempfile
from pathlib import Path
from typing import Any

from dfx.errors import DfxError

FORMAT = "dfx-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LABELS = ("real", "fake")  # index = model target; the logit scores "fake"
# The manifest role of each ONNX form: export writes them, the runtime and the bench look them up.
ONNX_ROLES = {"fp32": "onnx-fp32", "fp16": "onnx-fp16", "int8": "onnx-int8", "cpu-int8": "onnx-cpu-int8"}


class BundleError(DfxError):
    """A bundle is missing, malformed, or a file does not match the manifest."""


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
        """Write manifest.json atomically (a crash never leaves half a manifest)."""
        text = json.dumps(self.manifest, indent=2, sort_keys=False, default=_json_default)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".manifest.", suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            handle.write(text + "\n")
        os.replace(tmp, self.root / MANIFEST)

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

    # ---- reading ---------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | os.PathLike, *, verify: bool = True) -> "Bundle":
        """Open a bundle, check its format, and (by default) the sha256 of every listed file."""
        root = Path(root)
        path = root / MANIFEST
        if not root.exists():
            raise BundleError(f"no bundle at {root}: the folder does not exist")
        if not path.is_file():
            raise BundleError(f"{root} is not a dfx bundle: it has no {MANIFEST}", hint="train one with `dfx train`")
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise BundleError(f"{path} is not valid JSON ({exc})") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise BundleError(f"{path} is not a dfx bundle manifest")
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleError(
                f"{root} has bundle format {version}; this dfx reads format {FORMAT_VERSION}",
                hint="re-export the bundle with this version of dfx",
            )
        bundle = cls(root, manifest)
        if verify:
            for name in manifest.get("files", {}):
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
        actual = sha256_file(path)
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

    def files_with_role(self, role: str) -> list[str]:
        return [n for n, e in self.manifest["files"].items() if e.get("role") == role]


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


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays, Paths
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")
