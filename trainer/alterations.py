"""What happens to an image on its way to us, applied at native resolution before the pixel path.

- `launder`: one social-media pipeline: the long side resized to a random 256-512 px (down or
  up: every image leaves at a size drawn independently of its source, so size says nothing), then
  JPEG at a random quality 70-90 (4:2:0). The protocol's laundered rows pass every image of both
  classes through it, so that neither size, format nor compression can tell the classes apart.
  (Until protocol v2.1 small images kept their size, and the shortcut baseline still read it.)
  `dfx train --launder-training` trains on laundered copies too (`copy`) or only (`all`).
- `rescaled`: the image resized by a random factor in [low, 1): the training-side scale jitter
  (TrainConfig.scale_jitter), a re-shared, smaller copy of the photo.
- `reframed`: the image cut to a random square around its face, from the face itself to the
  whole short side: the training-side framing jitter (TrainConfig.framing_jitter). Each source
  frames its faces its own way, and five numbers of framing separate the shared folders' classes
  (docs/pseudo-fakes.md, "Framing"); the copies show every source's faces at every framing.

Every random choice is seeded by (seed, the image's folder and file name), so one image always
gets the same alteration, wherever the data lives. dfx.photo_data.load_faces decodes many through
the one pixel path, in threads, altering inside the workers (never holding all altered images at
once). Each alteration takes `image=` too: a face's crop cut from the photo at `path` (whole photos,
dfx.photo_data), altered in place of the file and seeded by the photo.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np

LAUNDER_LONG_SIDE = (256, 512)  # px, inclusive
LAUNDER_QUALITY = (70, 90)  # JPEG quality, inclusive


def _rng(kind: str, seed: int, path: str) -> np.random.Generator:
    p = Path(path)
    digest = hashlib.sha256(f"{kind}\0{seed}\0{p.parent.name}/{p.name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def launder(path: str, seed: int = 0, image=None, key: str | None = None, kind: str = "launder") -> bytes:
    """The JPEG bytes of `path` after the social-media pipeline (see the module docstring).
    `image`: pixels to launder instead of the file's (a face's crop from it; `path` still seeds).
    `key` (default `path`) seeds the size and quality: a pseudo-fake passes its photo's path, so
    both sides of a pair leave alike. `kind` keeps training draws apart from the protocol's rows."""
    from PIL import Image

    from dfx.images import to_rgb

    image = to_rgb(path if image is None else image)
    rng = _rng(kind, seed, key or path)
    target = int(rng.integers(LAUNDER_LONG_SIDE[0], LAUNDER_LONG_SIDE[1] + 1))
    quality = int(rng.integers(LAUNDER_QUALITY[0], LAUNDER_QUALITY[1] + 1))
    w, h = image.size
    if max(w, h) != target:
        scale = target / max(w, h)
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC, reducing_gap=None)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, subsampling=2)
    return buffer.getvalue()


def rescaled(path: str, low: float, seed: int = 0, key: str | None = None, image=None):
    """`path` resized by a random factor in [low, 1) (bicubic, antialiased): a PIL image. The
    factor is seeded by `key` (default `path`): a pseudo-fake passes its photo's path, so both
    sides of a pair shrink alike. `image`: pixels to rescale instead of the file's (a face's crop)."""
    from PIL import Image

    from dfx.images import to_rgb

    image = to_rgb(path if image is None else image)
    factor = float(_rng("rescale", seed, key or path).uniform(low, 1.0))
    w, h = image.size
    return image.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.Resampling.BICUBIC)


FRAME_TIGHTEST = 1.0  # the tightest reframed cut: the face finder's box itself (its larger side)


def reframed(path: str, finder, seed: int = 0, key: str | None = None, image=None, tightest: bool = False):
    """`path` cut to a random square around its largest face (a PIL image): the side is drawn
    uniformly between FRAME_TIGHTEST x the face box (dfx.faces.FaceFinder `finder`) and the
    image's short side (`tightest`: always the former, the protocol's face-crop row), the square
    centred on the face and slid inside the image (dfx.faces.square_region). Without a face
    found: the centred square of the short side. Seeded by `key` (default `path`), so both sides
    of a pair are cut alike; `image`: pixels to cut instead of the file's (a face's crop)."""
    from dfx.faces import largest_face, square_region
    from dfx.images import to_rgb

    image = to_rgb(path if image is None else image)
    pixels = np.asarray(image)
    height, width = pixels.shape[:2]
    short = min(height, width)
    box = largest_face(finder.find(pixels))
    draw = 0.0 if tightest else float(_rng("reframe", seed, key or path).uniform(0.0, 1.0))
    if box is not None:
        smallest = min(short, FRAME_TIGHTEST * max(box.width, box.height))
        side, cx, cy = smallest + draw * (short - smallest), (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
    else:
        side, cx, cy = short, width / 2, height / 2
    return image.crop(square_region(cx, cy, side, height, width))
