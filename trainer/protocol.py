"""The leave-one-source-out protocol: does the model hold on generators and cameras it never saw?

For every generator and every photo source G in the data: train on all the other groups (their
training split), then score G's images (all of them: the model never saw G) against the other
class's validation images. Plus the in-distribution row (train on every group, score the
validation split) and robustness rows (the same validation images after JPEG re-compression at
quality 60, Gaussian blur sigma 1, rescaling to half size, an 80% centre crop, a mirror and a 10
degree rotation, applied at native resolution before the pixel path).

Beside each row, a *shortcut baseline* that sees only cheap cues (width, height, file format,
JPEG quantisation tables, per-channel mean/std) is trained and scored on the very same splits
(scikit-learn's gradient-boosted trees). A model that does not beat it by a wide margin on a
held-out group learned the cue, not the generator.

Every fold is a real bundle written by the trainer (`folds/<name>/`), so a killed run resumes:
finished folds are reused when their recorded settings match. Decoded images are cached once
per (size, fit, canvas) in `cache/`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from dfx import datasets, metrics
from dfx.errors import DfxError
from dfx.trainer.models import DEFAULT_ARCHITECTURE

IN_DISTRIBUTION = "in-distribution"
# Bump when the recipe behind a fold changes (models, augmentation, training loop), so finished
# folds of an older recipe are retrained rather than reused.
RECIPE_VERSION = 2
# Robustness rows: (name, what it does to the native-resolution image).
PERTURBATIONS = ("jpeg-q60", "blur-sigma1", "half-size", "crop-80", "mirror", "rotate-10")


@dataclass(frozen=True)
class ProtocolConfig:
    data: tuple[str, ...]  # labelled roots pooled into one set (real/<source>, fake/<generator>)
    out: str  # folder for folds/, cache/, protocol.json and protocol.md
    architecture: str = DEFAULT_ARCHITECTURE  # what is trained in every fold
    size: int = 96  # model input side
    fit: str = "crop"  # the bundle's pixel policy (native-resolution centre crop)
    train_canvas: int | None = 128  # training images stored at this side; random size windows per step
    epochs: int = 12  # per fold: ~6 min each for npr_cnn on 2 vCPUs at 96 px
    epoch_size: int = 2048  # balanced draws per epoch
    batch_size: int = 64  # smaller than dfx train's 128: more steps in a short run
    learning_rate: float = 1e-3  # peak, after warm-up
    augment: str = "generalize"  # the trainer's augmentation mode
    groups: tuple[str, ...] | None = None  # run only these rows (group names, or "in-distribution"); None: all
    seed: int = 0  # split and training seed
    val_fraction: float = 0.2  # the split every fold shares
    baseline: bool = True  # train and score the shortcut baseline beside the model
    progress: bool = True  # progress output on a terminal


def run(config: ProtocolConfig, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> dict:
    """Run the protocol (or the chosen rows); write protocol.json and protocol.md; return the report."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    samples = datasets.discover(list(config.data))
    train_s, val_s = datasets.split(samples, config.val_fraction, config.seed)
    keys = sorted({(s.label, s.group) for s in samples})
    names = [IN_DISTRIBUTION] + [g for _, g in keys]
    if len(set(names)) != len(names):
        raise DfxError("a group name is used by both classes; rename one folder")
    chosen = names if not config.groups else [n for n in names if n in config.groups]
    unknown = sorted(set(config.groups or ()) - set(names))
    if unknown:
        raise DfxError(f"unknown group(s) {', '.join(unknown)}", hint=f"known: {', '.join(names)}")
    label_of = {g: label for label, g in keys}

    pixels = _Cache(out / "cache", config)
    train_x = pixels.arrays("train", train_s)
    eval_x = pixels.arrays("eval", samples)
    path_index = {s.path: i for i, s in enumerate(samples)}
    features = _shortcut_features(samples, out / "cache") if config.baseline else None

    report_path = out / "protocol.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    if report.get("config_key") != _config_key(config):
        report = {"rows": {}}
    report.update(config=_jsonable(config), config_key=_config_key(config), data=datasets.summary(samples))
    for name in chosen:
        started = time.time()
        held = None if name == IN_DISTRIBUTION else name
        fold_train = [s for s in train_s if s.group != held]
        fold_val = [s for s in val_s if s.group != held]
        bundle = _train_fold(config, out / "folds" / name, fold_train, fold_val, train_x, train_s, eval_x, path_index, log)
        threshold = bundle.threshold
        model = _load_model(bundle)
        rows = {}
        if held is None:
            rows[name] = _score(model, eval_x, path_index, fold_val, threshold)
            for perturbation in PERTURBATIONS:
                x = pixels.perturbed(perturbation, fold_val)
                rows[f"{IN_DISTRIBUTION} / {perturbation}"] = _score_arrays(model, x, fold_val, threshold)
        else:
            other = [s for s in val_s if s.label != label_of[held]]
            evaluated = [s for s in samples if s.group == held] + other
            rows[name] = _score(model, eval_x, path_index, evaluated, threshold)
            rows[name]["held_out"] = "fake" if label_of[held] else "real"
        if features is not None:
            base_eval = fold_val if held is None else evaluated
            base = _baseline(features, path_index, fold_train, fold_val, base_eval)
            rows[name]["baseline_auc"] = base
        rows[name]["seconds"] = round(time.time() - started, 1)
        rows[name]["train_seconds"] = bundle.manifest["training"]["seconds"]
        rows[name]["best_epoch"] = bundle.manifest["training"]["best_epoch"]
        report["rows"].update(rows)
        report_path.write_text(json.dumps(report, indent=2, default=_json_default))
        log(f"{name}: AUC {rows[name]['auc']:.4f}" + (f"  baseline {rows[name]['baseline_auc']:.4f}" if "baseline_auc" in rows[name] else ""))
    report["summary"] = summarize(report["rows"])
    report_path.write_text(json.dumps(report, indent=2, default=_json_default))
    (out / "protocol.md").write_text(format_table(report) + "\n")
    return report


def summarize(rows: dict) -> dict:
    held = {k: r for k, r in rows.items() if "held_out" in r}
    aucs = [r["auc"] for r in held.values()]
    base = rows.get(IN_DISTRIBUTION, {}).get("auc")
    robust = {k: r["auc"] for k, r in rows.items() if k.startswith(f"{IN_DISTRIBUTION} /")}
    return {
        "held_out_mean_auc": float(np.mean(aucs)) if aucs else None,
        "held_out_min_auc": float(np.min(aucs)) if aucs else None,
        "in_distribution_auc": base,
        "worst_robustness_drop": float(base - min(robust.values())) if robust and base is not None else None,
        "min_margin_over_baseline": min((r["auc"] - r["baseline_auc"] for r in held.values() if "baseline_auc" in r), default=None),
    }


def format_table(report: dict) -> str:
    c = report["config"]
    lines = [
        f"{c['architecture']} at {c['size']} px ({c['fit']}, training canvas {c['train_canvas']}), {c['epochs']} epochs x "
        f"{c['epoch_size']} images, augment {c['augment']}",
        "",
        "| row | images | AUC | AP | accuracy | TPR @ 1% FPR | rate at threshold | shortcut baseline AUC | train min |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["rows"].items():
        rate = ""
        if r.get("held_out") == "real":
            rate = f"{r['held_out_fpr']:.1%} flagged"
        elif r.get("held_out") == "fake":
            rate = f"{r['held_out_tpr']:.1%} caught"
        base = f"{r['baseline_auc']:.3f}" if r.get("baseline_auc") is not None else ""
        minutes = f"{r['train_seconds'] / 60:.1f}" if r.get("train_seconds") else ""
        label = f"held out: {name}" if r.get("held_out") else name
        lines.append(f"| {label} | {r['images']} | {r['auc']:.3f} | {r['average_precision']:.3f} | {r['accuracy']:.3f} | "
                     f"{r['tpr_at_1pct_fpr']:.3f} | {rate} | {base} | {minutes} |")
    s = report.get("summary", {})
    if s.get("held_out_mean_auc") is not None:
        lines += ["", f"held-out mean AUC {s['held_out_mean_auc']:.3f}, min {s['held_out_min_auc']:.3f}; "
                      f"worst robustness drop {s['worst_robustness_drop'] if s['worst_robustness_drop'] is None else round(s['worst_robustness_drop'], 3)}; "
                      f"smallest margin over the shortcut baseline {s['min_margin_over_baseline'] if s['min_margin_over_baseline'] is None else round(s['min_margin_over_baseline'], 3)}"]
    return "\n".join(lines)


# ---- folds ---------------------------------------------------------------------------------------

def _train_fold(config, folder: Path, fold_train, fold_val, train_x, train_s, eval_x, path_index, log):
    from dfx.bundle import Bundle
    from dfx.trainer.data import Arrays
    from dfx.trainer.train import TrainConfig, fit_arrays

    train_config = TrainConfig(
        data=tuple(config.data), out=str(folder), size=config.size, fit=config.fit, val_fraction=config.val_fraction,
        seed=config.seed, epochs=config.epochs, batch_size=config.batch_size, learning_rate=config.learning_rate,
        warmup_epochs=1.0, patience=config.epochs, augment=config.augment, architecture=config.architecture,
        train_canvas=config.train_canvas, balance=True, epoch_size=config.epoch_size, overwrite=True, progress=config.progress,
    )
    if (folder / "manifest.json").exists():
        try:
            bundle = Bundle.open(folder)
            if bundle.manifest.get("protocol_key") == _config_key(config):
                log(f"{folder.name}: reusing the finished fold")
                return bundle
        except DfxError:
            pass
    log(f"{folder.name}: training on {len(fold_train)} images ({', '.join(sorted({s.group for s in fold_train}))})")
    train_index = {s.path: i for i, s in enumerate(train_s)}
    ti = np.array([train_index[s.path] for s in fold_train])
    vi = np.array([path_index[s.path] for s in fold_val])
    train_arrays = Arrays(train_x[ti], np.array([s.label for s in fold_train]), list(fold_train), [])
    val_arrays = Arrays(eval_x[vi], np.array([s.label for s in fold_val]), list(fold_val), [])
    bundle = Bundle.create(folder, input_size=(config.size, config.size), fit=config.fit, architecture=config.architecture, overwrite=True)
    bundle = fit_arrays(train_config, bundle, train_arrays, val_arrays)
    bundle.manifest["protocol_key"] = _config_key(config)
    bundle.manifest["protocol_fold"] = folder.name
    bundle.save()
    return bundle


def _load_model(bundle):
    import keras

    return keras.saving.load_model(str(bundle.verify("model.keras")), compile=False)


def _score(model, eval_x, path_index, chosen, threshold) -> dict:
    x = eval_x[np.array([path_index[s.path] for s in chosen])]
    return _score_arrays(model, x, chosen, threshold)


def _score_arrays(model, x, chosen, threshold) -> dict:
    from dfx.trainer.data import predict_logits

    y = np.array([s.label for s in chosen])
    logits = predict_logits(model, x)
    row = metrics.summarize(y, logits, threshold)
    out = {k: row[k] for k in ("images", "auc", "average_precision", "accuracy", "tpr_at_1pct_fpr", "specificity", "recall")}
    out["held_out_fpr"] = 1.0 - row["specificity"]
    out["held_out_tpr"] = row["recall"]
    return out


# ---- pixels ----------------------------------------------------------------------------------------

class _Cache:
    """Decoded pixels, saved once per (size, fit, canvas) so reruns and folds skip decoding."""

    def __init__(self, folder: Path, config: ProtocolConfig):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config = config

    def arrays(self, role: str, samples) -> np.ndarray:
        from dfx.images import load_many

        c = self.config
        side = (c.train_canvas or c.size) if role == "train" else c.size
        return self._cached(f"{role}-{c.fit}-{side}", samples, lambda: load_many([s.path for s in samples], side, c.fit, desc=f"decode {role}", progress=c.progress))

    def perturbed(self, name: str, samples) -> np.ndarray:
        from dfx.images import load_many

        c = self.config
        sources = _PerturbedSources(name, [s.path for s in samples])
        return self._cached(f"val-{name}-{c.fit}-{c.size}", samples, lambda: load_many(sources, c.size, c.fit, desc=name, progress=c.progress))

    def _cached(self, key: str, samples, decode) -> np.ndarray:
        path = self.folder / f"{key}.npy"
        paths_file = self.folder / f"{key}.json"
        paths = [s.path for s in samples]
        if path.exists() and paths_file.exists() and json.loads(paths_file.read_text()) == paths:
            return np.load(path)
        x, kept, errors = decode()
        if errors:
            raise DfxError(f"{len(errors)} image(s) could not be decoded, e.g. {errors[0]}", hint="remove them from the data")
        np.save(path, x)
        paths_file.write_text(json.dumps(paths))
        return x


class _PerturbedSources(list):
    """PIL images made on demand (load_many decodes them in threads) from the files, altered."""

    def __init__(self, name: str, paths: list[str]):
        super().__init__(paths)
        self.name = name

    def __iter__(self):
        return (perturb(self.name, p) for p in super().__iter__())


def perturb(name: str, path: str):
    """The native-resolution image at `path` after one robustness alteration (a PIL image)."""
    import io

    from PIL import ImageFilter, ImageOps

    from dfx.images import to_rgb

    image = to_rgb(path)
    w, h = image.size
    if name == "jpeg-q60":
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=60)
        return to_rgb(buffer.getvalue())
    if name == "blur-sigma1":
        return image.filter(ImageFilter.GaussianBlur(1))
    if name == "half-size":
        return image.resize((max(1, w // 2), max(1, h // 2)), resample=3)  # bicubic, antialiased
    if name == "crop-80":
        cw, ch = int(round(w * 0.8)), int(round(h * 0.8))
        left, top = (w - cw) // 2, (h - ch) // 2
        return image.crop((left, top, left + cw, top + ch))
    if name == "mirror":
        return ImageOps.mirror(image)
    if name == "rotate-10":
        return image.rotate(10, resample=2)  # bilinear, same canvas
    raise ValueError(f"unknown perturbation {name!r}")


# ---- the shortcut baseline ---------------------------------------------------------------------------

FEATURES = ("width", "height", "jpeg", "png", "other_format", "q_luma", "q_chroma", "mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b")


def cheap_cues(path: str) -> list[float]:
    """The cues a model should not need: size, format, JPEG quantisation, colour statistics."""
    from PIL import Image

    with Image.open(path) as image:
        fmt = image.format or ""
        tables = getattr(image, "quantization", None) or {}
        w, h = image.size
        q_luma = float(np.mean(tables[0])) if 0 in tables else 0.0
        q_chroma = float(np.mean(tables[1])) if 1 in tables else 0.0
        small = image.convert("RGB")
        small.thumbnail((64, 64))
        px = np.asarray(small, np.float64).reshape(-1, 3)
    return [w, h, fmt == "JPEG", fmt == "PNG", fmt not in ("JPEG", "PNG"), q_luma, q_chroma, *px.mean(0), *px.std(0)]


def _shortcut_features(samples, cache: Path) -> np.ndarray:
    path = cache / "cues.npy"
    paths_file = cache / "cues.json"
    paths = [s.path for s in samples]
    if path.exists() and paths_file.exists() and json.loads(paths_file.read_text()) == paths:
        return np.load(path)
    x = np.array([cheap_cues(p) for p in paths], np.float64)
    np.save(path, x)
    paths_file.write_text(json.dumps(paths))
    return x


def _baseline(features, path_index, train, val, evaluated) -> float:
    from dfx.errors import require

    require("sklearn", "train", "the shortcut baseline")
    from sklearn.ensemble import HistGradientBoostingClassifier

    fit_on = list(train) + list(val)  # the cues need no early stopping: all the fold's training groups
    x = features[[path_index[s.path] for s in fit_on]]
    y = np.array([s.label for s in fit_on])
    clf = HistGradientBoostingClassifier(max_iter=200, random_state=0, class_weight="balanced").fit(x, y)
    xe = features[[path_index[s.path] for s in evaluated]]
    ye = np.array([s.label for s in evaluated])
    return float(metrics.auc(ye, clf.predict_proba(xe)[:, 1]))


# ---- bookkeeping ----------------------------------------------------------------------------------------

def _jsonable(config: ProtocolConfig) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()}


def _config_key(config: ProtocolConfig) -> str:
    """What makes two runs' folds interchangeable (not `groups`, `out` or `progress`)."""
    d = _jsonable(config)
    for k in ("groups", "out", "progress", "baseline"):
        d.pop(k)
    d["data"] = [str(Path(p).resolve()) for p in d["data"]]
    d["recipe"] = RECIPE_VERSION
    return json.dumps(d, sort_keys=True)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(type(value))
