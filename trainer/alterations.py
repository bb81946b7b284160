"""What happens to an image on its way to us, applied at native resolution before the pixel path.

- `launder`: one social-media pipeline: the long side resized to a random 256-512 px (never
  enlarged: platforms do not up-scale), then JPEG at a random quality 70-90 (4:2:0). The protocol's
  laundered rows pass every image of both classes through it, so that neither size, format nor
  compression can tell the classes apart.
- `rescaled`: the image resized by a random factor in [low, 1): the training-side scale jitter
  (TrainConfig.scale_jitter), a re-shared, smaller copy of the photo.

Every random choice is seeded by (seed, the image's folder and file name), so one image always
gets the same alteration, wherever the data lives. `load_altered` decodes many through the one
pixel path, in threads, altering inside the workers (never holding all altered images at once).
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Callable

import numpy as np

LAUNDER_LONG_SIDE = (256, 512)  # px, inclusive
LAUNDER_QUALITY = (70, 90)  # JPEG quality, inclusive


def _rng(kind: str, seed: int, path: str) -> np.random.Generator:
    p = Path(path)
    digest = hashlib.sha256(f"{kind}\0{seed}\0{p.parent.name}/{p.name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def launder(path: str, seed: int = 0) -> bytes:
    """The JPEG bytes of `path` after the social-media pipeline (see the module docstring)."""
    from PIL import Image

    from dfx.images import to_rgb

    image = to_rgb(path)
    rng = _rng("launder", seed, path)
    target = int(rng.integers(LAUNDER_LONG_SIDE[0], LAUNDER_LONG_SIDE[1] + 1))
    quality = int(rng.integers(LAUNDER_QUALITY[0], LAUNDER_QUALITY[1] + 1))
    w, h = image.size
    if max(w, h) > target:
        scale = target / max(w, h)
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC, reducing_gap=None)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, subsampling=2)
    return buffer.getvalue()


def rescaled(path: str, low: float, seed: int = 0, key: str | None = None):
    """`path` resized by a random factor in [low, 1) (bicubic, antialiased): a PIL image. The
    factor is seeded by `key` (default `path`): a pseudo-fake passes its photo's path, so both
    sides of a pair shrink alike."""
    from PIL import Image

    from dfx.images import to_rgb

    image = to_rgb(path)
    factor = float(_rng("rescale", seed, key or path).uniform(low, 1.0))
    w, h = image.size
    return image.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.Resampling.BICUBIC)


def load_altered(paths: list[str], alter: Callable[[str], object], size: int, fit: str, *, workers: int | None = None,
                 desc: str | None = None, progress: bool = True) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """(uint8 (N, size, size, 3) of those that decoded, their indices, (path, reason) of the
    rest): each path altered (`alter(path)` -> a PIL image or encoded bytes) and then fitted by
    dfx.images.load_image, in threads (dfx.images.load_many's pool)."""
    from dfx.images import load_many

    pixels, kept, errors = load_many(paths, size, fit, workers=workers or min(4, os.cpu_count() or 1), desc=desc,
                                     progress=progress, alter=alter)
    done = set(kept)
    failed = [path for i, path in enumerate(paths) if i not in done]  # in input order, as the errors are
    return pixels, kept, [(path, error.reason) for path, error in zip(failed, errors)]
