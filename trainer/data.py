"""Training input: decode once through dfx.images.load_image (THE pixel path), cache the uint8
arrays in memory, and feed them through tf.data with augmentation and class balancing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dfx.datasets import Sample
from dfx.images import load_many


@dataclass
class Arrays:
    """Decoded images of one split. `samples` are those that decoded, aligned with x and y."""

    x: np.ndarray  # uint8 (N, H, W, 3)
    y: np.ndarray  # int64 (N,), 1 = fake
    samples: list[Sample]
    errors: list[tuple[str, str]]  # (path, reason) of images that failed to decode


def load_arrays(samples: list[Sample], size: tuple[int, int], fit: str, *, workers: int | None = None, progress: bool = True, desc: str = "decode") -> Arrays:
    """Decode every sample with load_image (threaded). Unreadable images are skipped and
    reported, never fatal: one broken file must not cost a training run."""
    x, keep, failures = load_many([s.path for s in samples], size, fit, workers=workers, desc=desc, progress=progress)
    kept = [samples[i] for i in keep]
    errors = [(exc.source, exc.reason) for exc in failures]
    return Arrays(x, np.array([s.label for s in kept], np.int64), kept, errors)


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


def group_shares(samples: list[Sample]) -> dict[str, float]:
    """Each group's share of a balanced epoch: half for each class, split evenly between the
    class's groups (generators or photo sources), whatever their sizes. So 500 SD faces do not
    drown 400 ProGAN ones, and four photo sources count alike. Keys are "real/<group>"."""
    groups: dict[int, set[str]] = {0: set(), 1: set()}
    for s in samples:
        groups[s.label].add(s.group)
    shares = {}
    for label, names in groups.items():
        for name in sorted(names):
            shares[f"{'fake' if label else 'real'}/{name}"] = 0.5 / len(names) if len(groups[1 - label]) else 1.0 / len(names)
    return shares


def balanced_indices(samples: list[Sample], epochs: int, epoch_size: int, seed: int) -> np.ndarray:
    """Sample indices for `epochs` epochs of `epoch_size` images, drawn with the shares of
    `group_shares` (with replacement within a group, so a small group is repeated rather than
    outweighed). int64 (epochs * epoch_size,)."""
    shares = group_shares(samples)
    keys = [f"{'fake' if s.label else 'real'}/{s.group}" for s in samples]
    counts = {k: keys.count(k) for k in shares}
    p = np.array([shares[k] / counts[k] for k in keys], np.float64)
    rng = np.random.default_rng(seed)
    return rng.choice(len(samples), size=epochs * epoch_size, replace=True, p=p / p.sum()).astype(np.int64)


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
