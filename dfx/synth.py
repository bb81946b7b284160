"""A synthetic real-versus-GAN image set, made in seconds with numpy and Pillow.

No dataset or weights can be downloaded, so dfx carries its own:

- "real" (``real/camera``, ``real/scan``): a dead-leaves model (occluding discs with a
  power-law size distribution, whose spectrum falls off like natural images), rendered at
  full resolution, softened by a small optical blur, with camera-like sensor noise.
- "fake" (``fake/tconv``, ``fake/upconv``): the same kind of content rendered at 1/2 or 1/4
  resolution and brought up to size by a generator-style chain: a stride-2 transposed 3x3
  convolution (the classic checkerboard) or nearest-neighbour upsampling followed by 3x3
  convolutions, with noise injected at low resolution as StyleGAN does. Both leave periodic
  peaks in the spectrum at multiples of 1/2 and 1/4 of the sampling rate, as real GAN images
  do.

Global statistics do not give the label away: every image (real or fake) is shifted and
scaled to a per-image mean and standard deviation drawn from one shared distribution, and
the file format (JPEG at quality 80-95, or PNG) is drawn independently of the label.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

REAL_SOURCES = ("camera", "scan")
FAKE_GENERATORS = ("tconv", "upconv")


def generate(out_dir: str | os.PathLike, n: int = 400, size: int = 64, seed: int = 0, progress: bool = True) -> dict:
    """Write `n` images (half real, half fake, split evenly over sources and generators) of
    `size` x `size` pixels under `out_dir`/real/<source>/ and `out_dir`/fake/<generator>/.

    Returns a summary: {"root", "images", "real", "fake", "size", "seed", "groups"}.
    Deterministic for a given (n, size, seed).
    """
    from PIL import Image
    from tqdm import tqdm

    if n < 4:
        raise ValueError("n must be at least 4 (one image per source and generator)")
    if size < 16 or size % 4:
        raise ValueError("size must be a multiple of 4 and at least 16")
    root = Path(out_dir)
    groups = [("real", g) for g in REAL_SOURCES] + [("fake", g) for g in FAKE_GENERATORS]
    for label, group in groups:
        (root / label / group).mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    rng = np.random.default_rng(seed)
    jobs = [groups[i % len(groups)] for i in range(n)]
    for index, (label, group) in enumerate(tqdm(jobs, desc="synth", unit="img", disable=None if progress else True)):
        # One generator per image so each image depends only on (seed, index).
        image_rng = np.random.default_rng([seed, index])
        pixels = _real(image_rng, size, group) if label == "real" else _fake(image_rng, size, group)
        pixels = _match_stats(pixels, image_rng)
        if label == "real":
            pixels = pixels + image_rng.normal(0, image_rng.uniform(1.5, 4.0), pixels.shape)  # sensor noise
        data, suffix = _encode(Image.fromarray(_to_uint8(pixels), "RGB"), rng)
        (root / label / group / f"{group}_{index:05d}{suffix}").write_bytes(data)
        key = f"{label}/{group}"
        counts[key] = counts.get(key, 0) + 1
    real = sum(v for k, v in counts.items() if k.startswith("real/"))
    return {"root": str(root.resolve()), "images": n, "real": real, "fake": n - real, "size": size, "seed": seed,
            "groups": dict(sorted(counts.items()))}


# ---- content ------------------------------------------------------------------------------------
def dead_leaves(rng: np.random.Generator, size: int, leaves: int | None = None) -> np.ndarray:
    """Occluding discs of random colour, radius ~ r^-3 (scale-invariant, like natural images).

    Returns float64 (size, size, 3) in 0..255.
    """
    from PIL import Image, ImageDraw

    leaves = leaves or int(6 * size)
    image = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    r_min, r_max = max(size / 64, 0.7), size / 3
    # inverse-CDF sampling of p(r) ~ r^-3 on [r_min, r_max]
    u = rng.uniform(size=leaves)
    radii = 1 / np.sqrt(1 / r_min**2 - u * (1 / r_min**2 - 1 / r_max**2))
    centres = rng.uniform(-0.1 * size, 1.1 * size, (leaves, 2))
    base = rng.integers(0, 256, 3)  # a palette per image: colours scatter around one hue
    colours = np.clip(base + rng.normal(0, 70, (leaves, 3)), 0, 255).astype(int)
    for (x, y), r, c in zip(centres, radii, colours):
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in c))
    pixels = np.asarray(image, dtype=np.float64)
    # smooth illumination across the scene
    yy, xx = np.mgrid[0:size, 0:size] / size
    gx, gy = rng.normal(0, 0.25, 2)
    return pixels * (1 + gx * (xx - 0.5) + gy * (yy - 0.5))[:, :, None]


def _real(rng: np.random.Generator, size: int, source: str) -> np.ndarray:
    from PIL import Image, ImageFilter

    pixels = dead_leaves(rng, size)
    radius = rng.uniform(0.3, 0.7) if source == "camera" else rng.uniform(0.5, 0.9)  # optics
    blurred = Image.fromarray(_to_uint8(pixels), "RGB").filter(ImageFilter.GaussianBlur(radius))
    return np.asarray(blurred, dtype=np.float64)


def _fake(rng: np.random.Generator, size: int, generator: str) -> np.ndarray:
    if generator == "tconv":
        x = dead_leaves(rng, size // 2) / 255.0
        x = x + rng.normal(0, 0.03, x.shape)  # injected noise at the generator's resolution
        x = _transposed_conv2x(x, _kernel(rng, positive=True, centre=0.3))
        x = _conv3x3(x, _kernel(rng, positive=False, centre=3.0))
    else:
        x = dead_leaves(rng, size // 4) / 255.0
        for _ in range(2):
            x = x + rng.normal(0, 0.02, x.shape)
            x = x.repeat(2, axis=0).repeat(2, axis=1)  # nearest-neighbour upsampling
            x = _conv3x3(x, _kernel(rng, positive=False, centre=1.0))
            x = np.maximum(x, 0.1 * x)  # leaky ReLU, as between generator blocks
    return x * 255.0


def _kernel(rng: np.random.Generator, positive: bool, centre: float = 1.0) -> np.ndarray:
    """A random 3x3 kernel per channel (3, 3, 3): learned-looking, normalised to unit gain."""
    k = rng.uniform(0.2, 1.0, (3, 3, 3)) if positive else rng.normal(0.3, 0.35, (3, 3, 3))
    k[1, 1, :] += centre
    return k / k.sum(axis=(0, 1), keepdims=True)


def _conv3x3(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Depthwise 3x3 'same' convolution with edge padding. x: (H, W, C); kernel: (3, 3, C)."""
    h, w = x.shape[:2]
    padded = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode="edge")
    out = np.zeros_like(x)
    for dy in range(3):
        for dx in range(3):
            out += padded[dy : dy + h, dx : dx + w] * kernel[dy, dx]
    return out


def _transposed_conv2x(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Stride-2 transposed 3x3 convolution: zero insertion, then a 3x3 kernel. Output pixels
    at even and odd positions receive different numbers of kernel taps: the checkerboard."""
    h, w, c = x.shape
    up = np.zeros((2 * h, 2 * w, c))
    up[::2, ::2] = x
    return _conv3x3(up, kernel * 4.0)  # 4 = the zero-insertion's loss of gain


# ---- finishing ----------------------------------------------------------------------------------
def _match_stats(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shift and scale to a per-image mean and std drawn from one distribution for both labels."""
    mean, std = rng.uniform(90, 165), rng.uniform(35, 60)
    current = pixels.std()
    scaled = (pixels - pixels.mean()) * (std / current if current > 1e-6 else 1.0)
    return scaled + mean


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _encode(image, rng: np.random.Generator) -> tuple[bytes, str]:
    """JPEG (quality 80-95) or PNG, drawn independently of the label."""
    buffer = io.BytesIO()
    if rng.uniform() < 0.7:
        image.save(buffer, "JPEG", quality=int(rng.integers(80, 96)))
        return buffer.getvalue(), ".jpg"
    image.save(buffer, "PNG")
    return buffer.getvalue(), ".png"
