"""Which images export uses (calibration, validation, parity) and how they are decoded.

Defaults come from the bundle's manifest["data"] record: calibration on the training split,
parity on the validation split, exactly as training drew them. Pixels go through
dfx.images.load_image at the bundle's size and fit, the same path serving uses, and whole photos
through the faces mode training recorded (manifest["data"]["faces"], dfx.photo_data): one image
per face, as the model was trained.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from dfx import datasets
from dfx.bundle import Bundle
from dfx.datasets import DatasetError, Sample
from dfx.photo_data import FacePolicy, load_faces


@dataclass(frozen=True)
class ImageSet:
    images: np.ndarray  # uint8 (N, H, W, 3): one per image, or per face of a whole photo
    labels: np.ndarray  # int64 (N,), 1 = fake
    samples: list[Sample]  # the ones that decoded, aligned with images (a photo's once per face)
    source: str  # human description, e.g. "the bundle's validation split (/data/faces)"
    skipped: list[str]  # "path: reason" for files that could not be decoded or had no face


def resolve(bundle: Bundle, data: str | os.PathLike | None, split: str) -> tuple[list[Sample], str]:
    """Samples from DATA (every labelled image in it) or from the bundle's own `split`
    ("train" or "val"). Raises DatasetError (with a hint) when neither is available."""
    if data is not None:
        return datasets.discover(data), str(data)
    record = bundle.manifest.get("data")
    if not record:
        raise DatasetError(
            f"{bundle.root} does not record its training data",
            hint="pass the images explicitly (--calib DATA / --parity DATA)",
        )
    train, val = datasets.splits_from_record(record)
    chosen = train if split == "train" else val
    if not chosen:
        raise DatasetError(f"the bundle's {split} split is empty")
    name = "training" if split == "train" else "validation"
    return chosen, f"the bundle's {name} split ({record['root']})"


def load(samples: list[Sample], size: tuple[int, int], fit: str, source: str, progress: str | None = None,
         faces: FacePolicy | None = None) -> ImageSet:
    """Decode samples (threaded) whole or face by face (`faces`: the bundle's training policy,
    dfx.photo_data.bundle_policy; None: whole); undecodable files and photos without a face are
    skipped and listed, never fatal."""
    found = load_faces(samples, size, fit, faces, desc=progress, progress=bool(progress), leave=False)
    return ImageSet(found.x, found.labels, found.kept, source, [f"{p}: {r}" for p, r in found.skipped])


def noise_images(count: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Deterministic uint8 noise images: the stand-in when a bundle's data is not here."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(count, size[0], size[1], 3), dtype=np.uint8)


def per_class_and_group(samples: list[Sample]) -> dict:
    """{"real": {"unsplash": 256}, "fake": {"stylegan2": 256}} for the calibration report."""
    table: dict[str, dict[str, int]] = {"real": {}, "fake": {}}
    for s in samples:
        cls = datasets.LABELS[s.label]
        table[cls][s.group] = table[cls].get(s.group, 0) + 1
    return {k: dict(sorted(v.items())) for k, v in table.items()}
