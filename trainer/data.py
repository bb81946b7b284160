"""Training input: decode once through dfx.images.load_image (THE pixel path), cache the uint8
arrays in memory, and feed them through tf.data with augmentation and class balancing. Whole
photos go through dfx.photo_data.load_faces: one window per face, each with its photo's label."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from dfx.datasets import Sample
from dfx.errors import DfxError
from dfx.photo_data import FacePolicy, load_faces


@dataclass
class Arrays:
    """Decoded images of one split. `samples` are those that decoded, aligned with x and y (a
    whole photo's sample once per face found in it)."""

    x: np.ndarray  # uint8 (N, H, W, 3)
    y: np.ndarray  # int64 (N,), 1 = fake
    samples: list[Sample]
    errors: list[tuple[str, str]]  # (path, reason) of images that failed to decode
    # int64 (N,): 0 the image as stored, 1 its rescaled copy (with_rescaled), 2 its laundered copy
    # (with_laundered), 3 its reframed copy (with_reframed); None: all 0
    variant: np.ndarray | None = None
    no_face: list[str] = field(default_factory=list)  # photos searched where no face was found (skipped)
    searched: int = 0  # photos the face finder looked at

    @classmethod
    def of(cls, found) -> "Arrays":
        """The Arrays of a dfx.photo_data.FaceSet (what load_faces returns)."""
        return cls(found.x, found.labels, found.kept, found.errors, no_face=found.no_face, searched=found.searched)


def load_arrays(samples: list[Sample], size: tuple[int, int], fit: str, *, faces: FacePolicy | None = None,
                workers: int | None = None, progress: bool = True, desc: str = "decode") -> Arrays:
    """Decode every sample with load_image (threaded), whole or face by face (`faces`; None: off).
    Unreadable images and photos without a face are skipped and reported, never fatal: one broken
    file must not cost a training run."""
    return Arrays.of(load_faces(samples, size, fit, faces, workers=workers, desc=desc, progress=progress))


def class_weights(y: np.ndarray) -> dict[int, float]:
    """Inverse-frequency weights, mean 1 over the training set: each class contributes half of
    the loss whatever the imbalance (e.g. 400 real vs 480 fake)."""
    counts = np.bincount(y, minlength=2).astype(np.float64)
    return {label: float(len(y) / (2 * counts[label])) if counts[label] else 0.0 for label in (0, 1)}


def train_dataset(arrays: Arrays, batch_size: int, augment, seed: int):
    """Shuffled, augmented, class-weighted batches of (float32 images, float32 labels, weights)."""
    import tensorflow as tf

    weights = class_weights(arrays.y)
    w = np.array([weights[int(label)] for label in arrays.y], np.float32)
    ds = tf.data.Dataset.from_tensor_slices((arrays.x, arrays.y.astype(np.float32)[:, None], w))
    ds = ds.shuffle(len(arrays.y), seed=seed, reshuffle_each_iteration=True)
    if augment is not None:
        ds = ds.map(lambda img, label, weight: (augment(img), label, weight), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(lambda img, label, weight: (tf.cast(img, tf.float32), label, weight))
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def predict_logits(model, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """float32 logits (N,) for uint8 images, in batches (predict_on_batch: no tf.data overhead)."""
    out = [np.asarray(model.predict_on_batch(x[i : i + batch_size].astype(np.float32))).reshape(-1) for i in range(0, len(x), batch_size)]
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0,), np.float32)


PSEUDO_SHARES = ("per-decoder", "one-generator")  # TrainConfig.pseudo_share


def group_shares(samples: list[Sample], pseudo_share: str = "per-decoder") -> dict[str, float]:
    """Each group's share of a balanced epoch: half for each class, split evenly between the
    class's groups (generators or photo sources), whatever their sizes. So 500 SD faces do not
    drown 400 ProGAN ones, and four photo sources count alike. Keys are "real/<group>".
    `pseudo_share` "one-generator": the pseudo-fake decoders (dfx data reconstruct) together
    take one generator's share, split evenly between them, instead of one share each (8
    decoders beside 3 generators would otherwise fill 8/11 of the fake half)."""
    from dfx.trainer.reconstruct import decoder_family

    groups: dict[int, set[str]] = {0: set(), 1: set()}
    for s in samples:
        groups[s.label].add(s.group)
    shares = {}
    for label, names in groups.items():
        half = 0.5 if len(groups[1 - label]) else 1.0
        pseudo = {n for n in names if label == 1 and decoder_family(n)} if pseudo_share == "one-generator" else set()
        units = len(names) - len(pseudo) + (1 if pseudo else 0)
        for name in sorted(names):
            share = half / units
            shares[f"{'fake' if label else 'real'}/{name}"] = share / len(pseudo) if name in pseudo else share
    return shares


def balanced_indices(samples: list[Sample], epochs: int, epoch_size: int, seed: int, pseudo_share: str = "per-decoder") -> np.ndarray:
    """Sample indices for `epochs` epochs of `epoch_size` images, drawn with the shares of
    `group_shares` (with replacement within a group, so a small group is repeated rather than
    outweighed). int64 (epochs * epoch_size,)."""
    shares = group_shares(samples, pseudo_share)
    keys = [f"{'fake' if s.label else 'real'}/{s.group}" for s in samples]
    counts = {k: keys.count(k) for k in shares}
    p = np.array([shares[k] / counts[k] for k in keys], np.float64)
    rng = np.random.default_rng(seed)
    return rng.choice(len(samples), size=epochs * epoch_size, replace=True, p=p / p.sum()).astype(np.int64)


def _partners(samples: list[Sample], variant: np.ndarray | None) -> np.ndarray:
    """For each sample, the index of its pair's real photo in the same variant (-1: none).
    A whole photo is one sample per face found, in the finder's order: the k-th face of a
    pseudo-fake pairs with the k-th face of its photo (the reconstruction keeps the framing),
    or with the photo's last face when the photo has fewer."""
    v = np.zeros(len(samples), np.int64) if variant is None else np.asarray(variant, np.int64)
    windows: dict[tuple[str, int], list[int]] = {}
    ordinal = np.zeros(len(samples), np.int64)  # which face of its photo each sample is
    for i, (s, k) in enumerate(zip(samples, v)):
        same = windows.setdefault((s.path, int(k)), [])
        ordinal[i] = len(same)
        same.append(i)
    out = np.full(len(samples), -1, np.int64)
    for i, (s, k) in enumerate(zip(samples, v)):
        photo = windows.get((s.source, int(k))) if s.source else None
        if photo:
            out[i] = photo[min(int(ordinal[i]), len(photo) - 1)]
    return out


def paired_indices(samples: list[Sample], indices: np.ndarray, batch_size: int, variant: np.ndarray | None = None) -> np.ndarray:
    """`indices` (balanced draws) with pairs brought together: in each batch, the real photo of
    every drawn pseudo-fake (Sample.source, when it is a training sample; the same variant, so a
    rescaled fake meets its photo rescaled alike) takes the place of one of the batch's drawn
    real images, so the batch holds both sides of the pair and the only difference the loss
    sees between them is the decoder's trace. The fakes' shares stay those of `group_shares`;
    the real side shifts towards the photos that have reconstructions. int64, like `indices`."""
    partner = _partners(samples, variant)
    real = np.array([s.label == 0 for s in samples])
    out = np.array(indices, np.int64, copy=True)
    for start in range(0, len(out), batch_size):
        batch = out[start : start + batch_size]  # a view: edits land in `out`
        partners = [int(partner[i]) for i in batch if partner[i] >= 0]
        slots = [k for k, i in enumerate(batch) if real[i]]
        for k, p in zip(slots, partners):
            batch[k] = p
    return out


def pair_share(samples: list[Sample], indices: np.ndarray, batch_size: int, variant: np.ndarray | None = None) -> float:
    """Fraction of drawn pseudo-fakes whose real photo is in the same batch (for the manifest)."""
    partner = _partners(samples, variant)
    hits = total = 0
    for start in range(0, len(indices), batch_size):
        batch = indices[start : start + batch_size]
        members = set(batch.tolist())
        for i in batch:
            if partner[i] >= 0:
                total += 1
                hits += int(partner[i]) in members
    return hits / total if total else 0.0


def balanced_dataset(arrays: Arrays, indices: np.ndarray, batch_size: int, augment):
    """Batches of (float32 images, float32 labels) following `indices` (see balanced_indices);
    the images stay in one in-memory tensor and are gathered per step."""
    import tensorflow as tf

    images = tf.constant(arrays.x)
    labels = tf.constant(arrays.y.astype(np.float32)[:, None])
    ds = tf.data.Dataset.from_tensor_slices(indices)

    def fetch(i):
        image = tf.gather(images, i)
        label = tf.gather(labels, i)
        return (augment(image) if augment is not None else tf.cast(image, tf.float32)), label

    return ds.map(fetch, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def with_rescaled(arrays: Arrays, canvas: tuple[int, int], fit: str, low: float, seed: int, *,
                  faces: FacePolicy | None = None, workers: int | None = None, progress: bool = True) -> Arrays:
    """`arrays` plus a second copy of every image, resized by a seeded factor in [low, 1) at
    native resolution and then fitted like the first (TrainConfig.scale_jitter): the same
    samples twice (variant 0 and 1), so balanced draws pick either copy. A pseudo-fake is
    rescaled by its photo's factor, so the pair stays aligned. Whole photos: each face's crop is
    rescaled (its photo's factor)."""
    photos = list(dict.fromkeys(arrays.samples))  # a photo once, however many faces it has
    return with_copies(arrays, Arrays.of(rescaled_copies(photos, canvas[0], fit, low, seed, faces=faces, workers=workers, progress=progress)), 1)


def with_laundered(arrays: Arrays, canvas: tuple[int, int], fit: str, seed: int, *,
                   faces: FacePolicy | None = None, workers: int | None = None, progress: bool = True) -> Arrays:
    """`arrays` plus a laundered copy of every image (variant 2; TrainConfig.launder_training "copy")."""
    photos = list(dict.fromkeys(arrays.samples))
    return with_copies(arrays, Arrays.of(laundered_copies(photos, canvas[0], fit, seed, faces=faces, workers=workers, progress=progress)), 2)


def with_reframed(arrays: Arrays, canvas: tuple[int, int], fit: str, seed: int, finder, *,
                  faces: FacePolicy | None = None, workers: int | None = None, progress: bool = True) -> Arrays:
    """`arrays` plus a copy of every image cut to a random square around its face (variant 3;
    TrainConfig.framing_jitter, trainer.alterations.reframed)."""
    photos = list(dict.fromkeys(arrays.samples))
    return with_copies(arrays, Arrays.of(reframed_copies(photos, canvas[0], fit, seed, finder, faces=faces, workers=workers,
                                                         progress=progress)), 3)


def with_copies(arrays: Arrays, copies: Arrays, variant: int) -> Arrays:
    """`arrays` followed by altered `copies` of its images, marked `variant` (Arrays.variant)."""
    first = arrays.variant if arrays.variant is not None else np.zeros(len(arrays.samples), np.int64)
    return Arrays(np.concatenate([arrays.x, copies.x]), np.concatenate([arrays.y, copies.y]),
                  list(arrays.samples) + list(copies.samples), arrays.errors + copies.errors,
                  np.concatenate([first, np.full(len(copies.samples), variant, np.int64)]), arrays.no_face, arrays.searched)


def laundered_copies(samples: list[Sample], side: int, fit: str, seed: int, *, faces: FacePolicy | None = None,
                     workers: int | None = None, progress: bool = True):
    """dfx.photo_data.FaceSet of each sample after the social-media pipeline (trainer.alterations.launder:
    long side to 256-512 px, JPEG q70-90), drawn apart from the protocol's laundered rows and seeded
    by its pair's photo when it has one, then fitted by the pixel path."""
    from dfx.trainer.alterations import launder

    keys = {s.path: s.source or s.path for s in samples}

    def alter(path, image=None):
        return launder(path, seed, image=image, key=keys[path], kind="launder-training")

    return load_faces(samples, side, fit, faces, alter=alter, workers=workers, desc="decode laundered", progress=progress)


@functools.cache
def framing_finder():
    """The face finder of framing jitter and of the protocol's framing cues: the scan's network,
    looking for faces of 40 px and more (training images are face crops, ProGAN's faces ~77 px).
    One per process. Raises DfxError with the install hint where it cannot be made."""
    from dataclasses import asdict

    from dfx.faces import FinderConfig
    from dfx.photo_data import face_policy

    policy = face_policy("all", finder_config=asdict(FinderConfig(min_face=40)))
    assert policy.finder is not None
    try:
        return policy.finder.get()
    except DfxError as exc:
        raise DfxError(f"framing (dfx train --framing-jitter, the protocol's framing cues) needs the face finder: {exc}",
                       hint=exc.hint) from exc


def reframed_copies(samples: list[Sample], side: int, fit: str, seed: int, finder, *, faces: FacePolicy | None = None,
                    workers: int | None = None, progress: bool = True):
    """dfx.photo_data.FaceSet of each sample cut to a random square around its face (seeded by
    its pair's photo when it has one; `finder`: a dfx.faces.FaceFinder), fitted by the pixel path."""
    from dfx.trainer.alterations import reframed

    keys = {s.path: s.source or s.path for s in samples}

    def alter(path, image=None):
        return reframed(path, finder, seed, key=keys[path], image=image)

    return load_faces(samples, side, fit, faces, alter=alter, workers=workers, desc="decode reframed", progress=progress)


def rescaled_copies(samples: list[Sample], side: int, fit: str, low: float, seed: int, *, faces: FacePolicy | None = None,
                    workers: int | None = None, progress: bool = True):
    """dfx.photo_data.FaceSet of each sample rescaled (seeded by its pair's photo when it has one)
    and fitted by the pixel path."""
    from dfx.trainer.alterations import rescaled

    keys = {s.path: s.source or s.path for s in samples}

    def alter(path, image=None):
        return rescaled(path, low, seed, key=keys[path], image=image)

    return load_faces(samples, side, fit, faces, alter=alter, workers=workers, desc="decode rescaled", progress=progress)
