"""Frozen-backbone features, computed once per window and cached on disk.

The backbone is frozen, so what the head trains on is a pure function of (the tower, the pixels
that enter it). The cache key is the sha256 of the tower's file hash and the window's uint8
pixels: the image bytes, the pixel policy (size, fit, faces) and the alteration (laundering,
half size, a training copy) all reach the tower only through those pixels, so one key covers
them all, and two files with the same pixels share one entry. A window costs ~0.1-0.4 s in the
tower on 2 vCPUs and ~1 ms to hash, so every run after the first trains in seconds.

Layout: `<root>/<tower hash 12>/<key[:2]>/<key>.npy`, one float32 (layers, width) array per
window (36 KB for ViT-B/16: the CLS token after each of its 12 blocks), written atomically, so a
killed extraction resumes where it stopped. The folder is bounded (`limit_bytes`): past it, the
entries read longest ago are removed after each extraction.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from dfx.atomic import write_atomic

CACHE_ENV = "DFX_FEATURE_CACHE"  # the cache folder; default ~/.cache/dfx/features
LIMIT_ENV = "DFX_FEATURE_CACHE_GB"  # its bound in GB; default 4 (about 110,000 ViT-B/16 windows)
DEFAULT_LIMIT_GB = 4.0


def default_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "dfx" / "features")


def default_limit() -> int:
    return int(float(os.environ.get(LIMIT_ENV) or DEFAULT_LIMIT_GB) * 1e9)


class FeatureCache:
    """Per-window features of one tower (`tower_id`: its file's sha256), on disk."""

    def __init__(self, tower_id: str, root: str | os.PathLike | None = None, limit_bytes: int | None = None):
        self.tower_id = tower_id
        self.folder = Path(root or default_root()) / tower_id[:12]
        self.limit = default_limit() if limit_bytes is None else limit_bytes

    def key(self, window: np.ndarray) -> str:
        digest = hashlib.sha256(self.tower_id.encode())
        digest.update(str(window.shape).encode())
        digest.update(np.ascontiguousarray(window, np.uint8).tobytes())
        return digest.hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        path = self._path(key)
        try:
            value = np.load(path)
        except (OSError, ValueError):
            return None  # absent, or cut short by a crash before the rename (never: writes are atomic)
        os.utime(path)  # read time for the bound: the entries used longest ago go first
        return value

    def put(self, key: str, value: np.ndarray) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda f: np.save(f, np.asarray(value, np.float32)))

    def trim(self) -> int:
        """Remove the entries read longest ago until the folder is within its bound; returns how many."""
        if not self.folder.exists():
            return 0
        entries = [(p.stat().st_mtime, p.stat().st_size, p) for p in self.folder.glob("*/*.npy")]
        total = sum(size for _, size, _ in entries)
        removed = 0
        for _, size, path in sorted(entries):
            if total <= self.limit:
                break
            path.unlink(missing_ok=True)
            total -= size
            removed += 1
        return removed


def features(windows: np.ndarray, cache: FeatureCache, extract: Callable[[np.ndarray], np.ndarray], *, batch_size: int = 16,
             progress: bool = True, desc: str = "features") -> np.ndarray:
    """float32 (N, layers, width) for uint8 windows (N, H, W, 3): from the cache where present,
    else `extract(batch)` (the tower) in batches, each batch cached as soon as it is done."""
    from tqdm import tqdm

    keys = [cache.key(w) for w in windows]
    found = [cache.get(k) for k in keys]
    missing = [i for i, f in enumerate(found) if f is None]
    if missing:
        with tqdm(total=len(missing), desc=f"{desc} ({len(windows) - len(missing)} cached)", unit="img",
                  disable=None if progress else True, file=sys.stderr) as bar:
            for start in range(0, len(missing), batch_size):
                at = missing[start:start + batch_size]
                out = np.asarray(extract(windows[at]), np.float32)
                for i, value in zip(at, out):
                    cache.put(keys[i], value)
                    found[i] = value
                bar.update(len(at))
        cache.trim()
    if not found:
        return np.zeros((0, 0, 0), np.float32)
    return np.stack(found).astype(np.float32)
