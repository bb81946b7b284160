"""Aligned pseudo-fakes: real photos passed through small autoencoders (`dfx data reconstruct`).

Almost every generator ends in a learned decoder that up-samples. A real photo passed through an
autoencoder comes back with the same face, framing, size and file format, but carrying a
decoder's traces; trained on such aligned pairs a detector can use nothing else (Zhang et al.,
WIFS 2019 "AutoGAN"; Rajan et al., ICLR 2025 "Aligned Datasets Improve Detection of Latent
Diffusion-Generated Images"). No weights can be downloaded, so the autoencoders are trained here,
on the user's own real photos: random patches, fully convolutional, so one model reconstructs a
photo of any size.

The bank: one autoencoder per decoder, named ``ae-<family>-x<stride>`` (the group of its fakes;
``ae-<family>`` is the family, held out as one unit by the protocol):

- families: ``nearest`` (nearest up-sampling + 3x3 conv), ``bilinear`` (bilinear + 3x3 conv),
  ``tconv`` (3x3 transposed conv, stride 2: the checkerboard), ``shuffle`` (3x3 conv to 4x the
  channels + depth-to-space, as in ESPCN / many GAN heads);
- strides: the latent is 1/4 or 1/8 of the photo's side (x4: 8 channels, x8: 32 channels, so both
  keep half a value per pixel: a bottleneck, not an identity map).

Loss: L1 on pixels plus ``freq_weight`` x L1 between the log spectra (|FFT|) of output and target
(``loss="l1+fft"``). Plain L1 reconstructions are blurry (the mean of plausible outputs); the
spectral term asks for the target's high-frequency energy, so the fakes keep sharpness and the
detector cannot win on blur alone. ``reconstruct.json`` records, per decoder, the PSNR and the
sharpness ratio (Laplacian energy of the output / of the source) on photos kept out of training.

Layout written (the decoder is the generator group, so dfx reads DIR like any fake/ tree)::

    DIR/fake/<decoder>/<source group>_<stem>_<hash>.<jpg|png>
    DIR/pairs.jsonl          one line per fake: fake, source (absolute and relative), decoder, seed, quality
    DIR/models/<decoder>.weights.h5 (+ .json)   the trained autoencoders, reused on a rerun
    DIR/reconstruct.json     settings, per-decoder training record, counts, unreadable inputs

A fake is saved like its source: the same size; a JPEG source gives a JPEG written with the
source's own quantisation tables and chroma subsampling (its estimated IJG quality is recorded);
anything else gives a PNG. Deterministic for a seed (TensorFlow op determinism is switched on
for the run), resumable: finished fakes and trained models are skipped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from dfx.atomic import atomic_path, write_atomic
from dfx.datasets import PAIRS_FILE
from dfx.errors import DfxError

FAMILIES = ("nearest", "bilinear", "tconv", "shuffle")
STRIDES = (4, 8)
FAMILY_PREFIX = "ae-"  # pseudo-fake groups read as what they are, and never clash with a generator's name
DECODERS = tuple(f"{FAMILY_PREFIX}{family}-x{stride}" for family in FAMILIES for stride in STRIDES)
LOSSES = ("l1", "l1+fft")
REPORT_FILE = "reconstruct.json"
# Bump when the autoencoders or their training change, so cached models are retrained.
MODEL_VERSION = 1
# Channels per level: full resolution, 1/2, 1/4, 1/8. Narrow at full resolution, where a conv
# costs the most (about 12k multiply-adds per pixel in all for x4).
WIDTHS = (16, 32, 64, 96)
LATENT_VALUES_PER_PIXEL = 0.5  # latent channels = 0.5 * stride^2: x4 -> 8, x8 -> 32


@dataclass(frozen=True)
class ReconstructConfig:
    data: tuple[str, ...]  # real photos: labelled roots (their real/ part is used) or plain folders of photos
    out: str  # DIR: fake/<decoder>/, pairs.jsonl, models/, reconstruct.json
    decoders: tuple[str, ...] = DECODERS  # which autoencoders to train and use
    per_photo: int | None = 1  # decoders each photo goes through (chosen per photo by the seed); None: all
    patch: int = 64  # training patch side (random crops at native resolution)
    steps: int = 800  # optimiser steps per autoencoder (~1-2 min each on 2 vCPUs)
    batch_size: int = 16  # patches per step
    learning_rate: float = 2e-3  # Adam, cosine-decayed to 10 %
    loss: str = "l1+fft"  # l1 | l1+fft (see the module docstring)
    freq_weight: float = 0.5  # weight of the log-spectrum L1 term (measured: see docs/pseudo-fakes.md)
    train_photos: int = 512  # photos sampled (by the seed, over all sources) to train the autoencoders
    holdout_photos: int = 32  # further photos kept out of training, for the PSNR / sharpness record
    limit: int | None = None  # reconstruct only the first N photos (after a seeded shuffle); None: all
    seed: int = 0  # model initialisation, patches and the decoder assignment
    progress: bool = True  # tqdm bars


def decoder_family(group: str) -> str | None:
    """"ae-tconv-x8" -> "ae-tconv"; None for a group that is not a pseudo-fake decoder."""
    family, _, stride = group.rpartition("-x")
    known = family.startswith(FAMILY_PREFIX) and family[len(FAMILY_PREFIX):] in FAMILIES
    return family if known and stride.isdigit() else None


def _parse_decoder(name: str) -> tuple[str, int]:
    family = decoder_family(name)
    if family is None:
        raise DfxError(f"unknown decoder {name!r}", hint=f"known: {', '.join(DECODERS)} (ae-<family>-x<stride>, stride 2, 4, 8 or 16)")
    stride = int(name.rpartition("-x")[2])
    if stride not in (2, 4, 8, 16):
        raise DfxError(f"decoder {name!r}: the stride must be 2, 4, 8 or 16")
    return family, stride


# ---- photos ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Photo:
    path: str  # absolute
    group: str  # photo source, e.g. "ffhq"
    key: str  # "<group>/<file name>": location-independent, seeds the decoder choice


def find_photos(roots: tuple[str, ...]) -> list[Photo]:
    """Real photos under each root: the real/ part of a labelled tree, or every image of a plain
    folder (its name is the group). Sorted by path."""
    from dfx import datasets
    from dfx.images import iter_image_files

    photos: dict[str, Photo] = {}
    for root in roots:
        p = Path(root)
        if not p.exists():
            raise DfxError(f"{root} does not exist")
        if p.is_dir() and not (p / "real").is_dir() and not (p / "fake").is_dir():
            for path in iter_image_files([p]):
                path = os.path.abspath(path)
                photos[path] = Photo(path, p.resolve().name, f"{p.resolve().name}/{os.path.basename(path)}")
            continue
        for s in datasets.discover_any([root]):
            if s.label == 0:
                photos[s.path] = Photo(s.path, s.group, f"{s.group}/{os.path.basename(s.path)}")
    if not photos:
        raise DfxError(f"no real photos under {', '.join(roots)}",
                       hint="give folders of real photos, or labelled roots with a real/ folder")
    return sorted(photos.values(), key=lambda ph: ph.path)


def _rng_for(*parts) -> np.random.Generator:
    digest = hashlib.sha256("\0".join(str(p) for p in parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def assign(photo: Photo, decoders: tuple[str, ...], per_photo: int | None, seed: int) -> list[str]:
    """The decoders this photo goes through: a seeded choice that depends on the photo's key
    only, so adding photos or decoders elsewhere does not reshuffle the others."""
    if per_photo is None or per_photo >= len(decoders):
        return list(decoders)
    order = _rng_for("assign", seed, photo.key).permutation(len(decoders))
    return [decoders[i] for i in sorted(order[:per_photo])]


def fake_name(photo: Photo, fmt: str) -> str:
    stem = Path(photo.path).stem
    digest = hashlib.sha256(photo.path.encode()).hexdigest()[:8]  # two roots may hold the same file name
    return f"{photo.group}_{stem}_{digest}.{'jpg' if fmt == 'JPEG' else 'png'}"


# ---- JPEG quality -------------------------------------------------------------------------------------

_IJG_TABLES: dict[int, tuple[list[int], list[int]]] = {}


def _ijg_tables(quality: int) -> tuple[list[int], list[int]]:
    """The luma and chroma tables libjpeg writes at `quality` (read back from Pillow, so the
    order of the coefficients is whatever Pillow reports for any file)."""
    if quality not in _IJG_TABLES:
        from PIL import Image

        buffer = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buffer, "JPEG", quality=quality)
        with Image.open(buffer) as im:
            q = im.quantization
        _IJG_TABLES[quality] = (list(q[0]), list(q.get(1, q[0])))
    return _IJG_TABLES[quality]


def estimate_quality(tables: dict) -> int | None:
    """The IJG quality (1-100) whose standard tables are nearest to these (sum of absolute
    differences, luma and chroma); None without tables. Cameras and editors with their own
    tables get the nearest IJG quality."""
    if not tables or 0 not in tables:
        return None
    luma = np.asarray(tables[0], np.float64)
    chroma = np.asarray(tables.get(1, tables[0]), np.float64)
    best, best_error = None, np.inf
    for q in range(1, 101):
        ref_luma, ref_chroma = _ijg_tables(q)
        error = np.abs(luma - ref_luma).sum() + np.abs(chroma - ref_chroma).sum()
        if error < best_error:
            best, best_error = q, error
    return best


def source_encoding(path: str) -> dict:
    """How the source is stored: {"format": "JPEG"|"PNG", "qtables", "subsampling", "quality"}."""
    from PIL import Image, JpegImagePlugin

    from dfx.images import open_formats

    with Image.open(path, formats=open_formats()) as im:
        if im.format == "JPEG":
            tables = {k: list(v) for k, v in (im.quantization or {}).items()}
            return {"format": "JPEG", "qtables": tables, "subsampling": JpegImagePlugin.get_sampling(im),
                    "quality": estimate_quality(tables)}
    return {"format": "PNG", "qtables": None, "subsampling": None, "quality": None}


def encode_like(pixels: np.ndarray, encoding: dict) -> bytes:
    """uint8 (H, W, 3) encoded as the source was: JPEG with its own tables and subsampling, or PNG."""
    from PIL import Image

    image = Image.fromarray(pixels, "RGB")
    buffer = io.BytesIO()
    if encoding["format"] == "JPEG":
        options = {"qtables": [encoding["qtables"][k] for k in sorted(encoding["qtables"])]} if encoding["qtables"] else {"quality": encoding["quality"] or 90}
        if encoding["subsampling"] in (0, 1, 2):
            options["subsampling"] = encoding["subsampling"]
        image.save(buffer, "JPEG", **options)
    else:
        image.save(buffer, "PNG")
    return buffer.getvalue()


# ---- the autoencoders ----------------------------------------------------------------------------------

def build_autoencoder(decoder: str, seed: int):
    """A fully convolutional autoencoder (any H, W divisible by the stride): float32 in [0, 1]
    -> float32 in [0, 1] (N, H, W, 3)."""
    import keras
    from keras import layers

    family, stride = _parse_decoder(decoder)
    family = family[len(FAMILY_PREFIX):]
    levels = int(round(np.log2(stride)))
    widths = list(WIDTHS) + [WIDTHS[-1]] * max(0, levels + 1 - len(WIDTHS))
    init = keras.initializers.HeNormal(seed=seed)

    def conv(x, filters, name, strides=1, activation="relu", kernel=3):
        return layers.Conv2D(filters, kernel, strides=strides, padding="same", activation=activation, kernel_initializer=init, name=name)(x)

    inputs = keras.Input((None, None, 3), name="photo")
    x = layers.Rescaling(2.0, offset=-1.0, name="centre")(inputs)
    x = conv(x, widths[0], "enc0")
    for level in range(1, levels + 1):
        x = conv(x, widths[level], f"enc{level}", strides=2)
    latent = conv(x, int(LATENT_VALUES_PER_PIXEL * stride * stride), "latent", activation=None, kernel=1)
    x = conv(latent, widths[levels], "dec_in", kernel=1)
    for level in range(levels, 0, -1):
        filters = widths[level - 1]
        name = f"up{level}"
        if family == "tconv":
            x = layers.Conv2DTranspose(filters, 3, strides=2, padding="same", activation="relu", kernel_initializer=init, name=name)(x)
        elif family == "shuffle":
            x = conv(x, 4 * filters, f"{name}_conv", activation=None)
            x = layers.ReLU(name=f"{name}_relu")(DepthToSpace(2, name=name)(x))
        else:
            x = layers.UpSampling2D(2, interpolation=family, name=name)(x)
            x = conv(x, filters, f"{name}_conv")
    x = conv(x, 3, "out", activation=None)
    outputs = layers.Rescaling(0.5, offset=0.5, name="uncentre")(x)
    return keras.Model(inputs, outputs, name=decoder.replace("-", "_"))


def _depth_to_space_layer():
    import keras
    import tensorflow as tf

    class _DepthToSpace(keras.layers.Layer):
        """Pixel shuffle: (N, H, W, 4C) -> (N, 2H, 2W, C)."""

        def __init__(self, block: int, **kwargs):
            super().__init__(**kwargs)
            self.block = block

        def call(self, x):
            return tf.nn.depth_to_space(x, self.block)

        def get_config(self):
            return {**super().get_config(), "block": self.block}

    return _DepthToSpace


def DepthToSpace(block: int, name: str):  # noqa: N802 - reads like the layer it builds
    return _depth_to_space_layer()(block, name=name)


def make_loss(kind: str, freq_weight: float) -> Callable:
    """L1 on pixels, plus (l1+fft) L1 between log-magnitude spectra of output and target."""
    import tensorflow as tf

    if kind not in LOSSES:
        raise DfxError(f"--loss must be one of {', '.join(LOSSES)}, not {kind!r}")

    def loss(y_true, y_pred):
        pixel = tf.reduce_mean(tf.abs(y_true - y_pred))
        if kind == "l1":
            return pixel
        def spectrum(x):  # (N, H, W, 3) -> log |FFT| per channel, (N, 3, H, W)
            return tf.math.log(tf.abs(tf.signal.fft2d(tf.cast(tf.transpose(x, [0, 3, 1, 2]), tf.complex64))) + 1e-2)
        return pixel + freq_weight * tf.reduce_mean(tf.abs(spectrum(y_true) - spectrum(y_pred)))

    return loss


def sharpness(pixels: np.ndarray) -> float:
    """Mean squared 4-neighbour Laplacian of the grey image (float): high-frequency energy."""
    g = np.asarray(pixels, np.float64).mean(-1)
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return float(np.mean(lap**2))


def reconstruct_pixels(model, pixels: np.ndarray, stride: int) -> np.ndarray:
    """uint8 (H, W, 3) through the autoencoder; reflect-padded to a multiple of the stride and
    cropped back, so the output has the source's size exactly."""
    h, w = pixels.shape[:2]
    ph, pw = (-h) % stride, (-w) % stride
    x = np.pad(pixels, ((0, ph), (0, pw), (0, 0)), mode="reflect" if min(h, w) > 1 else "edge")
    y = np.asarray(model(x[None].astype(np.float32) / 255.0, training=False))[0, :h, :w]
    return np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)


def _model_key(config: ReconstructConfig, decoder: str, train_keys: list[str]) -> dict:
    fields = ("patch", "steps", "batch_size", "learning_rate", "loss", "freq_weight", "seed")
    return {"decoder": decoder, "version": MODEL_VERSION, **{f: getattr(config, f) for f in fields},
            "photos": hashlib.sha256("\n".join(train_keys).encode()).hexdigest()}


def train_autoencoder(config: ReconstructConfig, decoder: str, index: int, patches_from: list[np.ndarray],
                      holdout: list[np.ndarray], folder: Path, train_keys: list[str]) -> tuple[object, dict]:
    """Train (or load the cached) autoencoder; returns (model, record)."""
    import keras
    from tqdm import tqdm

    _, stride = _parse_decoder(decoder)
    weights = folder / f"{decoder}.weights.h5"
    meta = folder / f"{decoder}.json"
    key = _model_key(config, decoder, train_keys)
    model_seed = config.seed * 100 + index
    keras.utils.set_random_seed(model_seed)
    model = build_autoencoder(decoder, model_seed)
    if weights.exists() and meta.exists():
        record = json.loads(meta.read_text())
        if record.get("key") == key:
            model.load_weights(str(weights))
            record["reused"] = True
            return model, record
    started = time.time()
    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, config.steps, alpha=0.1)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=make_loss(config.loss, config.freq_weight))
    rng = _rng_for("patches", config.seed, decoder)
    p = config.patch
    losses = []
    bar = tqdm(range(config.steps), desc=f"train {decoder}", unit="step", disable=None if config.progress else True)
    for _ in bar:
        batch = np.empty((config.batch_size, p, p, 3), np.float32)
        for b in range(config.batch_size):
            photo = patches_from[rng.integers(len(patches_from))]
            top = rng.integers(photo.shape[0] - p + 1)
            left = rng.integers(photo.shape[1] - p + 1)
            patch = photo[top : top + p, left : left + p]
            batch[b] = patch[:, ::-1] if rng.random() < 0.5 else patch
        batch /= 255.0
        losses.append(float(model.train_on_batch(batch, batch)))
        if len(losses) % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    psnr, sharp = [], []
    for photo in holdout:
        out = reconstruct_pixels(model, photo, stride)
        mse = float(np.mean((out.astype(np.float64) - photo) ** 2))
        psnr.append(10 * np.log10(255.0**2 / max(mse, 1e-10)))
        sharp.append(sharpness(out) / max(sharpness(photo), 1e-10))
    record = {
        "key": key, "decoder": decoder, "seconds": round(time.time() - started, 1),
        "final_loss": float(np.mean(losses[-50:])) if losses else None,
        "holdout_photos": len(holdout),
        "psnr_db": round(float(np.mean(psnr)), 2) if psnr else None,
        "sharpness_ratio": round(float(np.median(sharp)), 3) if sharp else None,  # output / source Laplacian energy
        "parameters": int(model.count_params()),
    }
    with atomic_path(weights) as tmp:
        model.save_weights(str(tmp))
    meta.write_text(json.dumps(record, indent=2))
    record["reused"] = False
    return model, record


# ---- the run ---------------------------------------------------------------------------------------------

def run(config: ReconstructConfig, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> dict:
    """Train the bank, write every chosen photo's reconstructions and the manifest; return the report."""
    from dfx.errors import require

    require("tensorflow", "train", "dfx data reconstruct")
    import tensorflow as tf
    from tqdm import tqdm

    from dfx.images import ImageError, to_rgb

    for name in config.decoders:
        _parse_decoder(name)
    if not config.decoders:
        raise DfxError("give at least one decoder")
    if config.per_photo is not None and config.per_photo < 1:
        raise DfxError("--per-photo must be at least 1")
    tf.config.experimental.enable_op_determinism()  # the same seed gives the same fakes, bit for bit
    started = time.time()
    out = Path(config.out)
    photos = find_photos(tuple(config.data))
    order = _rng_for("order", config.seed).permutation(len(photos))
    chosen = [photos[i] for i in order[: config.limit]] if config.limit else [photos[i] for i in order]
    (out / "models").mkdir(parents=True, exist_ok=True)

    # The autoencoders learn from a seeded sample of all the photos (every source), plus a few
    # held-out photos for the quality record.
    sample = [photos[i] for i in _rng_for("train-photos", config.seed).permutation(len(photos))]
    holdout_count = min(config.holdout_photos, len(photos) // 4)  # a few photos the models never see
    errors: dict[str, str] = {}
    train_pixels, holdout_pixels, train_keys = [], [], []
    for photo in sample:
        if len(train_pixels) >= config.train_photos and len(holdout_pixels) >= holdout_count:
            break
        try:
            pixels = np.asarray(to_rgb(photo.path))
        except ImageError as exc:
            errors[photo.path] = exc.reason
            continue
        if min(pixels.shape[:2]) < config.patch:
            continue
        if len(holdout_pixels) < holdout_count:
            holdout_pixels.append(pixels[:256, :256])  # a corner is enough for PSNR and sharpness
        elif len(train_pixels) < config.train_photos:
            train_pixels.append(pixels)
            train_keys.append(photo.key)
    if not train_pixels:
        raise DfxError(f"no readable photo of at least {config.patch} px to train the autoencoders on",
                       hint="check the folders, or lower --patch")

    done = _read_pairs(out)
    pairs_file = out / PAIRS_FILE
    records = {}
    written = skipped = 0
    for index, decoder in enumerate(config.decoders):
        todo = [ph for ph in chosen if decoder in assign(ph, config.decoders, config.per_photo, config.seed)]
        folder = out / "fake" / decoder
        folder.mkdir(parents=True, exist_ok=True)
        pending = [ph for ph in todo if ph.path not in errors and not _finished(out, done, decoder, ph)]
        skipped += len(todo) - len(pending)
        if not pending and (out / "models" / f"{decoder}.json").exists():
            records[decoder] = json.loads((out / "models" / f"{decoder}.json").read_text()) | {"reused": True}
            log(f"{decoder}: all {len(todo)} fakes already written")
            continue
        model, record = train_autoencoder(config, decoder, index, train_pixels, holdout_pixels, out / "models", train_keys)
        records[decoder] = record
        how = "reused the cached model" if record["reused"] else f"trained in {record['seconds']} s"
        log(f"{decoder}: {how}; "
            f"held-out PSNR {record['psnr_db']} dB, sharpness ratio {record['sharpness_ratio']}; writing {len(pending)} fakes")
        _, stride = _parse_decoder(decoder)
        with pairs_file.open("a") as pairs:
            for photo in tqdm(pending, desc=f"write {decoder}", unit="img", disable=None if config.progress else True):
                try:
                    pixels = np.asarray(to_rgb(photo.path))
                    encoding = source_encoding(photo.path)
                except (ImageError, OSError) as exc:
                    errors[photo.path] = getattr(exc, "reason", str(exc))
                    continue
                data = encode_like(reconstruct_pixels(model, pixels, stride), encoding)
                target = folder / fake_name(photo, encoding["format"])
                write_atomic(target, data)  # a killed run never leaves half a file under its real name
                entry = {
                    "fake": str(target.relative_to(out)), "source": photo.path,
                    "source_relative": os.path.relpath(photo.path, out), "source_group": photo.group,
                    "decoder": decoder, "family": decoder_family(decoder), "seed": config.seed,
                    "format": encoding["format"], "quality": encoding["quality"],
                }
                pairs.write(json.dumps(entry) + "\n")
                pairs.flush()
                done[(decoder, photo.path)] = entry
                written += 1
    report = {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()},
        "photos": len(photos), "reconstructed_photos": len(chosen),
        "fakes_written": written, "fakes_skipped_as_done": skipped,
        "fakes_total": sum(1 for (d, _) in done if d in config.decoders),
        "unreadable": {"count": len(errors), "first": [{"path": p, "reason": r} for p, r in list(errors.items())[:10]]},
        "decoders": records, "seconds": round(time.time() - started, 1),
    }
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2))
    return report


def _read_pairs(out: Path) -> dict[tuple[str, str], dict]:
    done = {}
    path = out / PAIRS_FILE
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill: its fake is rewritten
            done[(entry["decoder"], entry["source"])] = entry
    return done


def _finished(out: Path, done: dict, decoder: str, photo: Photo) -> bool:
    entry = done.get((decoder, photo.path))
    return entry is not None and (out / entry["fake"]).exists()
