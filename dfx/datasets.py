"""Labelled datasets: walk a tree or read a labels file into `Sample`s; split them.

Accepted layouts (label 0 = real, 1 = fake; `group` names the photo source or generator):

- ``real/<source>/...`` and ``fake/<generator>/...`` (flat ``real/`` and ``fake/`` work too;
  their images get the group ``real`` / ``fake``);
- the seed project's layout, a folder per source (``celeba/``, ``ffhq/``, ``attgan/``, ...),
  mapped with ``real=["celeba", "ffhq"]`` and ``fake=[...]`` (known names map by themselves);
- a CSV/TSV labels file of ``path,label[,group]`` rows, paths relative to the file.

A tree with a ``pairs.jsonl`` at its root (written by ``dfx data reconstruct``) pairs each fake
with the real photo it was made from (`Sample.source`); `split` keeps a pair in one split.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dfx.errors import DfxError
from dfx.images import is_image_path

SEED_REAL = ("celeba", "ffhq")
SEED_FAKE = ("attgan", "gdwct", "stargan", "stylegan", "stylegan2")
PAIRS_FILE = "pairs.jsonl"  # one JSON object per fake: {"fake": relative path, "source", "source_relative", ...}
LABELS = ("real", "fake")  # the class names of labels 0 and 1
_LABEL_WORDS = {"real": 0, "0": 0, "fake": 1, "1": 1, "gan": 1, "synthetic": 1}


class DatasetError(DfxError):
    """A dataset folder or labels file cannot be read as labelled images."""


@dataclass(frozen=True)
class Sample:
    path: str  # absolute path of the image file
    label: int  # 0 real, 1 fake
    group: str  # photo source or generator, e.g. "ffhq", "stylegan2"
    source: str | None = None  # a pseudo-fake's real photo (absolute path), from the tree's pairs.jsonl


def as_roots(source) -> list[str]:
    """One data root or several, as a list of strings."""
    if isinstance(source, (list, tuple)):
        return [os.fspath(s) for s in source]
    return [os.fspath(source)]


def discover(source, real: list[str] | None = None, fake: list[str] | None = None) -> list[Sample]:
    """All labelled images under `source` (a folder or a labels file, or a list of them whose
    samples are pooled: the same group name in two roots is one group), sorted by path."""
    roots = as_roots(source)
    if not roots:
        raise DatasetError("no data given")
    samples = discover_any(roots, real, fake)
    labels = {s.label for s in samples}
    if labels != {0, 1}:
        missing = LABELS[1 if 1 not in labels else 0]
        shown = roots[0] if len(roots) == 1 else ", ".join(roots)
        raise DatasetError(f"{shown} has no {missing} images; training and evaluation need both",
                           hint="for one class only, use `dfx eval` (it reports the false-positive or detection rate)")
    return samples


def discover_any(source, real: list[str] | None = None, fake: list[str] | None = None) -> list[Sample]:
    """Like `discover`, but one class alone is fine (e.g. a folder of users' real photos)."""
    samples = [s for root in as_roots(source) for s in _discover_one(Path(root), real, fake)]
    return sorted(set(samples), key=lambda s: s.path)


def has_labels(source: str | os.PathLike) -> bool:
    """Whether `source` is laid out as labelled data, not a plain folder of images: a labels
    file, real/ or fake/ folders, or the seed's known source folders (names in any case: a Fake/
    folder is `discover`'s to read or refuse with its reason, never to be taken as photos)."""
    path = Path(source)
    return path.is_file() or any(d.name.lower() in ("real", "fake") for d in _subdirs(path)) or bool(_seed_folders(path))


def _seed_folders(source: Path) -> list[str]:
    return [d.name for d in _subdirs(source) if d.name.lower() in SEED_REAL + SEED_FAKE]


def _discover_one(source: Path, real: list[str] | None, fake: list[str] | None) -> list[Sample]:
    if not source.exists():
        raise DatasetError(f"{source} does not exist")
    if source.is_file():
        samples = read_labels_file(source)
    elif real or fake:
        samples = _mapped_folders(source, real or [], fake or [])
    elif (source / "real").is_dir() or (source / "fake").is_dir():
        samples = _label_tree(source)
        pairs = read_pairs(source)
        if pairs:
            samples = [Sample(s.path, s.label, s.group, pairs.get(s.path)) for s in samples]
    else:
        known = _seed_folders(source)
        if not known:
            raise DatasetError(
                f"{source} has neither real/ and fake/ folders nor known source folders",
                hint="lay it out as real/<source>/ and fake/<generator>/, or map folders with "
                "--real celeba,ffhq --fake attgan,stylegan2",
            )
        samples = _mapped_folders(
            source,
            [n for n in known if n.lower() in SEED_REAL],
            [n for n in known if n.lower() in SEED_FAKE],
        )
    if not samples:
        raise DatasetError(f"{source} holds no images")
    return samples


def _subdirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _images_under(folder: Path) -> list[str]:
    found: list[str] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(root, f) for f in sorted(files) if is_image_path(f) and not f.startswith("."))
    return [os.path.abspath(p) for p in found]


def _label_tree(root: Path) -> list[Sample]:
    samples = []
    for label_name, label in (("real", 0), ("fake", 1)):
        folder = root / label_name
        if not folder.is_dir():
            continue
        for path in _images_under(folder):
            parts = Path(path).relative_to(folder.resolve()).parts
            group = parts[0] if len(parts) > 1 else label_name
            samples.append(Sample(path, label, group))
    return samples


def _mapped_folders(root: Path, real: list[str], fake: list[str]) -> list[Sample]:
    samples: list[Sample] = []
    for names, label in ((real, 0), (fake, 1)):
        for name in names:
            folder = root / name
            if not folder.is_dir():
                raise DatasetError(f"{folder} does not exist (named by --{'real' if label == 0 else 'fake'})")
            samples.extend(Sample(p, label, name) for p in _images_under(folder))
    return samples


def read_pairs(root: str | os.PathLike) -> dict[str, str]:
    """{fake path: its source photo's path} (absolute) from ROOT/pairs.jsonl; {} without one.
    The source is looked up beside the tree first (its relative path), so folders moved
    together still pair up. A line cut short by a killed writer is skipped."""
    root = Path(root)
    path = root / PAIRS_FILE
    if not path.is_file():
        return {}
    pairs = {}
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
            fake = os.path.abspath(root / entry["fake"])
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
        near = os.path.abspath(root / entry["source_relative"]) if entry.get("source_relative") else None
        pairs[fake] = near if near and os.path.exists(near) else entry.get("source")
    return pairs


def read_labels_file(path: str | os.PathLike) -> list[Sample]:
    """Read ``path,label[,group]`` rows (CSV or TSV, header optional)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8-sig")
    delimiter = "\t" if path.suffix.lower() == ".tsv" or ("\t" in text.splitlines()[0] if text else False) else ","
    rows = [r for r in csv.reader(text.splitlines(), delimiter=delimiter) if r and any(c.strip() for c in r)]
    if rows and rows[0][1:2] and rows[0][1].strip().lower() not in _LABEL_WORDS:
        rows = rows[1:]  # a header row
    samples = []
    for number, row in enumerate(rows, start=1):
        if len(row) < 2:
            raise DatasetError(f"{path}: row {number} needs path and label, got {row!r}")
        word = row[1].strip().lower()
        if word not in _LABEL_WORDS:
            raise DatasetError(f"{path}: row {number} has label {row[1]!r}; use real/fake or 0/1")
        label = _LABEL_WORDS[word]
        group = row[2].strip() if len(row) > 2 and row[2].strip() else ("real" if label == 0 else "fake")
        image = Path(row[0].strip())
        image = image if image.is_absolute() else (path.parent / image)
        samples.append(Sample(str(image.resolve()), label, group))
    return samples


def split(samples: list[Sample], val_fraction: float = 0.2, seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """Deterministic train/validation split, stratified by (label, group). A fake paired with a
    real photo that is among `samples` (Sample.source) goes wherever its photo goes, so a
    photo's reconstruction never validates a model that trained on the photo (or the reverse);
    the other samples split exactly as they would without the pairs."""
    if not 0 < val_fraction < 1:
        raise ValueError("val_fraction must be between 0 and 1")
    present = {s.path for s in samples}
    followers = [s for s in samples if s.source and s.source in present]
    leaders = [s for s in samples if not (s.source and s.source in present)]
    train, val = _stratified_split(leaders, val_fraction, seed)
    in_val = {s.path for s in val}
    for s in followers:
        (val if s.source in in_val else train).append(s)
    return sorted(train, key=lambda s: s.path), sorted(val, key=lambda s: s.path)


def _stratified_split(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    strata: dict[tuple[int, str], list[Sample]] = {}
    for sample in sorted(samples, key=lambda s: s.path):
        strata.setdefault((sample.label, sample.group), []).append(sample)
    rng = np.random.default_rng(seed)
    train: list[Sample] = []
    val: list[Sample] = []
    for key in sorted(strata):
        members = strata[key]
        order = rng.permutation(len(members))
        n_val = int(round(len(members) * val_fraction))
        if len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        val.extend(members[i] for i in order[:n_val])
        train.extend(members[i] for i in order[n_val:])
    return sorted(train, key=lambda s: s.path), sorted(val, key=lambda s: s.path)


def balanced_sample(samples: list[Sample], count: int, seed: int = 0) -> list[Sample]:
    """Up to `count` samples, half real and half fake, spread evenly over groups in each class."""
    rng = np.random.default_rng(seed)
    chosen: list[Sample] = []
    for label in (0, 1):
        groups: dict[str, list[Sample]] = {}
        for s in samples:
            if s.label == label:
                groups.setdefault(s.group, []).append(s)
        want = count // 2 if label == 0 else count - count // 2
        pools = {g: [m[i] for i in rng.permutation(len(m))] for g, m in sorted(groups.items())}
        while want > 0 and any(pools.values()):  # round-robin over groups
            for g in sorted(pools):
                if pools[g] and want > 0:
                    chosen.append(pools[g].pop())
                    want -= 1
    return sorted(chosen, key=lambda s: s.path)


def summary(samples: list[Sample]) -> dict:
    """Counts per label and per group, for manifests and reports."""
    by_label = Counter(LABELS[s.label] for s in samples)
    by_group = Counter(f"{'fake' if s.label else 'real'}/{s.group}" for s in samples)
    return {"images": len(samples), "real": by_label["real"], "fake": by_label["fake"], "groups": dict(sorted(by_group.items()))}


def data_record(root, real: list[str] | None, fake: list[str] | None, val_fraction: float, seed: int) -> dict:
    """What a bundle's manifest stores under "data" so later steps can rebuild the same split.
    `root` may be one data root or several ("roots" then lists them all; "root" is the first)."""
    roots = [str(Path(r).resolve()) for r in as_roots(root)]
    record = {"root": roots[0], "real": real, "fake": fake, "val_fraction": val_fraction, "seed": seed}
    if len(roots) > 1:
        record["roots"] = roots
    return record


def record_roots(record: dict) -> list[str]:
    """The data roots a manifest's "data" record names (older bundles have "root" only)."""
    return list(record.get("roots") or ([record["root"]] if record.get("root") else []))


def splits_from_record(record: dict) -> tuple[list[Sample], list[Sample]]:
    """(train, val) exactly as training saw them, from a manifest's "data" record."""
    roots = record_roots(record)
    missing = [r for r in roots if not Path(r).exists()]
    if not roots or missing:
        raise DatasetError(
            f"the bundle's training data ({', '.join(missing) or None}) is not on this machine",
            hint="pass the data explicitly (for example --calib DATA / --parity DATA)",
        )
    samples = discover(roots, record.get("real"), record.get("fake"))
    return split(samples, record.get("val_fraction", 0.2), record.get("seed", 0))
