"""The leave-one-source-out protocol: does the model hold on generators and cameras it never saw?

For every generator and every photo source G in the data: train on all the other groups (their
training split), then score G's images (all of them: the model never saw G) against the other
class's validation images. Plus the in-distribution row (train on every group, score the
validation split) and robustness rows (the same validation images after JPEG re-compression at
quality 60, Gaussian blur sigma 1, rescaling to half size, an 80% centre crop, a mirror, a 10
degree rotation and a cut to the face box's square (face-crop: the framing taken away), applied
at native resolution before the pixel path).

Beside each row, a *shortcut baseline* that sees only cheap cues (width, height, file format,
JPEG quantisation tables, per-channel mean/std, and the framing: where the face finder puts the
largest face, relative to the image) is trained and scored on the very same splits
(scikit-learn's gradient-boosted trees), and the framing cues alone beside it. A model that does
not beat it by a wide margin on a held-out group learned the cue, not the generator. And each
row's AUC again on *framing-matched pairs* only (each fake with a real image whose face sits
where its own does, within 2% of the side): there, where the face sits cannot tell the classes
apart, and the framing baseline on the same pairs shows how well the matching holds.

Protocol v2 (this version): pseudo-fakes from `dfx data reconstruct` (fake groups named
``ae-<family>-x<stride>``) are held out by *family* (all strides of one decoder together), beside
the real generators and the photo sources; holding out a photo source also drops the
pseudo-fakes made from its photos. *Laundered rows* score the in-distribution row and every
held-out row again after every image of both classes went through one social-media pipeline
(dfx.trainer.alterations.launder: long side to a random 256-512 px, JPEG q70-90, per image),
with the shortcut baseline scored on the laundered files too. Splits keep a photo and its
reconstructions together (dfx.datasets.split).

Whole photos (`faces`, dfx.photo_data): images are split by photo, then decoded face by face;
each face trains with its photo's label, a photo is scored by its most-fake face, and photos
where no face is found are counted per row (`no_face`), not scored. Alterations apply to each
face's crop (the faces found on the photo as stored), so every row scores the same faces.

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
from dfx.atomic import write_atomic
from dfx.errors import DfxError
from dfx.trainer.models import DEFAULT_CNN

IN_DISTRIBUTION = "in-distribution"
# Bump when the recipe behind a fold changes (models, augmentation, training loop), so finished
# folds of an older recipe are retrained rather than reused.
RECIPE_VERSION = 2
# Robustness rows: (name, what it does to the native-resolution image).
FACE_CROP = "face-crop"  # cut to the square of the face box (framing_finder): does the model read the framing?
PERTURBATIONS = ("jpeg-q60", "blur-sigma1", "half-size", "crop-80", "mirror", "rotate-10", FACE_CROP)
LAUNDERED = "laundered"  # the suffix of a laundered row: "<row> / laundered"
PROTOCOL_VERSION = 2


@dataclass(frozen=True)
class ProtocolConfig:
    data: tuple[str, ...]  # labelled roots pooled into one set (real/<source>, fake/<generator>)
    out: str  # folder for folds/, cache/, protocol.json and protocol.md
    architecture: str = DEFAULT_CNN  # what is trained in every fold (clip_vit: dfx.trainer.probe_protocol)
    size: int = 96  # model input side
    fit: str = "resize"  # the bundle's pixel policy (TrainConfig.fit)
    train_canvas: int | None = 128  # training images stored at this side; random size windows per step
    epochs: int = 12  # per fold: ~3 min each for seed_cnn on 2 vCPUs at 96 px resize
    epoch_size: int = 2048  # balanced draws per epoch
    batch_size: int = 64  # smaller than dfx train's 128: more steps in a short run
    learning_rate: float = 1e-3  # peak, after warm-up
    augment: str = "generalize"  # the trainer's augmentation mode
    groups: tuple[str, ...] | None = None  # run only these rows (group names, or "in-distribution"); None: all
    seed: int = 0  # split and training seed
    val_fraction: float = 0.2  # the split every fold shares
    baseline: bool = True  # train and score the shortcut baseline beside the model
    progress: bool = True  # progress output on a terminal
    pairs: bool = False  # draw pseudo-fakes beside their real photo (TrainConfig.pairs)
    scale_jitter: float | None = None  # training copies rescaled by [scale_jitter, 1) (TrainConfig.scale_jitter)
    framing_jitter: bool = False  # training copies cut to a random square around the face (TrainConfig.framing_jitter)
    pseudo_share: str = "per-decoder"  # how pseudo-fake decoders share the fake half (TrainConfig.pseudo_share)
    launder_training: str | None = None  # "copy" | "all": laundered training images (TrainConfig.launder_training)
    launder: bool = True  # add the laundered rows
    faces: str = "auto"  # whole photos: off | auto | all (dfx.photo_data); auto decodes face crops exactly as off
    # Rates at a threshold with this false-positive rate on each fold's validation split (None:
    # the fold's balanced-accuracy threshold, as `dfx train`). Chosen here, so folds are reused.
    target_fpr: float | None = None


def holdable_units(samples) -> dict[str, tuple[int, frozenset[str]]]:
    """What a fold can hold out: {name: (label, groups)}. A generator or photo source is its own
    unit; pseudo-fake decoders (``ae-<family>-x<stride>``) are held out by family (``ae-<family>``), all strides."""
    from dfx.trainer.reconstruct import decoder_family

    units: dict[str, tuple[int, set[str]]] = {}
    for label, group in sorted({(s.label, s.group) for s in samples}):
        family = decoder_family(group) if label == 1 else None
        name = family or group
        if name in units and not (family and all(decoder_family(g) == family for g in units[name][1])):
            raise DfxError(f"the name {name!r} is used by two groups that are not one decoder family; rename one folder")
        units.setdefault(name, (label, set()))[1].add(group)
    return {name: (label, frozenset(groups)) for name, (label, groups) in units.items()}


def run(config: ProtocolConfig, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> dict:
    """Run the protocol (or the chosen rows); write protocol.json and protocol.md; return the report."""
    from functools import partial

    from dfx.trainer.alterations import launder
    from dfx.trainer.train import check_config, check_target_fpr

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    samples = datasets.discover(list(config.data))
    train_s, val_s = datasets.split(samples, config.val_fraction, config.seed)
    units = holdable_units(samples)
    if IN_DISTRIBUTION in units:
        raise DfxError(f"a group is named {IN_DISTRIBUTION!r}; rename it")
    names = [IN_DISTRIBUTION] + list(units)
    unknown = [n for n in (config.groups or ()) if n not in names]
    if unknown:
        raise DfxError(f"unknown group(s) {', '.join(unknown)}", hint=f"known: {', '.join(names)}")
    chosen = list(dict.fromkeys(config.groups)) if config.groups else names  # in the order asked: the important rows first
    group_of = {s.path: s.group for s in samples}
    from dfx.trainer.reconstruct import decoder_family

    pseudo_groups = {s.group for s in samples if s.label == 1 and decoder_family(s.group)}

    check_target_fpr(config.target_fpr)
    pixels = _Cache(out / "cache", config)
    check_config(_fold_config(config, out))  # refuses a bad combination before any decoding
    train_x = pixels.laundered_train(train_s) if config.launder_training == "all" else pixels.arrays("train", train_s)
    copies = []  # (decoded copies of the training images, their Arrays.variant)
    if config.scale_jitter is not None:
        copies.append((pixels.rescaled(train_s), 1))
    if config.launder_training == "copy":
        copies.append((pixels.laundered_train(train_s), 2))
    if config.framing_jitter:
        copies.append((pixels.reframed(train_s), 3))
    eval_x = pixels.arrays("eval", samples)
    laundered_x = pixels.altered(f"all-{LAUNDERED}-s{config.seed}", samples, partial(launder, seed=config.seed)) if config.launder else None
    path_index = {s.path: i for i, s in enumerate(samples)}
    if eval_x.no_face:
        log(f"faces {config.faces}: no face found in {len(eval_x.no_face)} photo(s), e.g. {eval_x.no_face[0]}; they are not scored")
    key = _config_key(config, faces_used=eval_x.searched > 0)
    # The framing cues and the face-crop row need the face finder (seconds of conversion): only then.
    framer = _framing_finder_or_none(log) if config.baseline or IN_DISTRIBUTION in chosen else None
    features = laundered_features = framing = laundered_framing = None
    if config.baseline:
        launder_file = partial(launder, seed=config.seed)
        features = _shortcut_features(samples, out / "cache")
        if config.launder:
            laundered_features = _shortcut_features(samples, out / "cache", launder_file, f"cues-{LAUNDERED}-s{config.seed}")
        if framer is not None:
            framing = _framing_features(samples, out / "cache", framer)
            features = np.hstack([features, framing])
            if config.launder:
                laundered_framing = _framing_features(samples, out / "cache", framer, launder_file, f"framing-{LAUNDERED}-s{config.seed}")
                laundered_features = np.hstack([laundered_features, laundered_framing])

    report_path = out / "protocol.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    if report.get("config_key") != key or report.get("config", {}).get("target_fpr") != config.target_fpr:
        report = {"rows": {}}  # rows of other folds, or at another threshold
    report.update(protocol=PROTOCOL_VERSION, config=_jsonable(config), config_key=key, data=datasets.summary(samples),
                  baseline_cues=None if features is None else list(FEATURES) + (list(FRAMING) if framing is not None else []),
                  units={n: {"label": datasets.LABELS[lab], "groups": sorted(g)} for n, (lab, g) in units.items()})
    for name in chosen:
        started = time.time()
        held_label, held = units[name] if name != IN_DISTRIBUTION else (None, frozenset())

        def excluded(s, held=held):
            return s.group in held or (s.source is not None and group_of.get(s.source) in held)

        fold_train = [s for s in train_s if not excluded(s)]
        fold_val = [s for s in val_s if not excluded(s)]
        bundle = _train_fold(config, key, out / "folds" / name, fold_train, fold_val, train_x, copies, train_s, eval_x, path_index, log)
        model = _load_model(bundle)
        # the fold's validation photos, scored once: the in-distribution row and the --target-fpr threshold read them
        val_scores = _photo_scores(model, eval_x, path_index, fold_val) if held_label is None or config.target_fpr is not None else None
        threshold = bundle.threshold if val_scores is None or config.target_fpr is None else _threshold_at_fpr(*val_scores, config.target_fpr)
        rows = {}
        scored = {}  # row -> (labels, logits) of `evaluated`, for the framing-matched AUC
        if held_label is None:
            evaluated = fold_val
            rows[name] = _row(*val_scores, threshold)
            scored[name] = val_scores
            real_fakes = [s for s in fold_val if s.group not in pseudo_groups]
            if len(real_fakes) < len(fold_val):  # the same row on the real generators' fakes only
                rows[name]["auc_without_pseudo_fakes"] = _score(model, eval_x, path_index, real_fakes, threshold)["auc"]
            for perturbation in PERTURBATIONS:
                if perturbation == FACE_CROP and framer is None:
                    continue  # no face finder here: said once in the log
                x = pixels.perturbed(perturbation, fold_val)
                rows[f"{IN_DISTRIBUTION} / {perturbation}"] = _score(model, x, {s.path: i for i, s in enumerate(fold_val)}, fold_val, threshold)
        else:
            evaluated = [s for s in samples if s.group in held] + [s for s in val_s if s.label != held_label and not excluded(s)]
            scored[name] = _photo_scores(model, eval_x, path_index, evaluated)
            rows[name] = _row(*scored[name], threshold)
            rows[name]["held_out"] = datasets.LABELS[held_label]
            rows[name]["pseudo_fake_family"] = bool(held & pseudo_groups)
        if laundered_x is not None:
            laundered_name = f"{name} / {LAUNDERED}"
            scored[laundered_name] = _photo_scores(model, laundered_x, path_index, evaluated)
            rows[laundered_name] = _row(*scored[laundered_name], threshold)
            rows[laundered_name]["laundered_of"] = name
            if held_label is not None:
                rows[laundered_name]["held_out"] = rows[name]["held_out"]
                rows[laundered_name]["pseudo_fake_family"] = rows[name]["pseudo_fake_family"]
        # Each baseline is fitted once on the fold's plain files and scored on each view of `evaluated`
        # (the files, and their laundered copies for the laundered row).
        at = [path_index[s.path] for s in evaluated]
        if features is not None:
            cues_model = _fit_baseline(features, path_index, fold_train, fold_val)
            for row_name, view in ((name, features), (f"{name} / {LAUNDERED}", laundered_features)):
                if row_name in scored and view is not None:
                    rows[row_name]["baseline_auc"] = float(metrics.auc(scored[row_name][0], cues_model.predict_proba(view[at])[:, 1]))
        if framing is not None:  # the framing cues alone: how much of the baseline is where the face sits
            framing_model = _fit_baseline(framing, path_index, fold_train, fold_val)
            for row_name, view in ((name, framing), (f"{name} / {LAUNDERED}", laundered_framing)):
                if row_name in scored and view is not None:
                    labels, logits = scored[row_name]
                    framed = framing_model.predict_proba(view[at])[:, 1]
                    rows[row_name]["framing_baseline_auc"] = float(metrics.auc(labels, framed))
                    rows[row_name].update(_framing_matched(labels, logits, framed, view[at]))
        rows[name]["seconds"] = round(time.time() - started, 1)
        rows[name]["train_seconds"] = bundle.manifest["training"]["seconds"]
        rows[name]["best_epoch"] = bundle.manifest["training"]["best_epoch"]
        report["rows"].update(rows)
        report_path.write_text(json.dumps(report, indent=2, default=_json_default))
        laundered_row = rows.get(f"{name} / {LAUNDERED}", {})
        log(f"{name}: AUC {rows[name]['auc']:.4f}" + (f"  baseline {rows[name]['baseline_auc']:.4f}" if "baseline_auc" in rows[name] else "")
            + (f" (framing alone {rows[name]['framing_baseline_auc']:.4f})" if "framing_baseline_auc" in rows[name] else "")
            + (f"  laundered {laundered_row['auc']:.4f}" if laundered_row else "")
            + (f" (baseline {laundered_row['baseline_auc']:.4f})" if "baseline_auc" in laundered_row else ""))
    report["summary"] = summarize(report["rows"])
    report_path.write_text(json.dumps(report, indent=2, default=_json_default))
    (out / "protocol.md").write_text(format_table(report) + "\n")
    return report


def summarize(rows: dict) -> dict:
    plain = {k: r for k, r in rows.items() if "laundered_of" not in r}
    held = {k: r for k, r in plain.items() if "held_out" in r}
    generator_rows = [r for r in held.values() if r["held_out"] == "fake" and not r.get("pseudo_fake_family")]
    generators = [r["auc"] for r in generator_rows]
    matched = [r["framing_matched_auc"] for r in generator_rows if r.get("framing_matched_auc") is not None]
    families = [r["auc"] for r in held.values() if r.get("pseudo_fake_family")]
    sources = [r["held_out_fpr"] for r in held.values() if r["held_out"] == "real"]
    aucs = [r["auc"] for r in held.values()]
    base = rows.get(IN_DISTRIBUTION, {}).get("auc")
    robust = {k: r["auc"] for k, r in plain.items() if k.startswith(f"{IN_DISTRIBUTION} /")}
    laundered = {r["laundered_of"]: r for r in rows.values() if "laundered_of" in r}
    drops = [rows[k]["auc"] - r["auc"] for k, r in laundered.items() if k in rows]
    margins = [r["auc"] - _strongest_baseline(r) for r in laundered.values() if _strongest_baseline(r) is not None]

    def mean(values):
        return float(np.mean(values)) if values else None

    return {
        "held_out_mean_auc": mean(aucs),
        "held_out_min_auc": float(np.min(aucs)) if aucs else None,
        "real_generator_mean_auc": mean(generators),  # what matters: generators that are not ours
        "real_generator_min_auc": float(np.min(generators)) if generators else None,
        # the same on framing-matched pairs (rows with enough of them): where the face sits cannot help
        "real_generator_mean_framing_matched_auc": mean(matched),
        "pseudo_family_mean_auc": mean(families),
        "photo_source_max_flagged": float(np.max(sources)) if sources else None,  # at the rows' threshold
        "in_distribution_auc": base,
        "half_size_drop": float(base - robust[f"{IN_DISTRIBUTION} / half-size"]) if base is not None and f"{IN_DISTRIBUTION} / half-size" in robust else None,
        "worst_robustness_drop": float(base - min(robust.values())) if robust and base is not None else None,
        "min_margin_over_baseline": min((r["auc"] - _strongest_baseline(r) for r in held.values() if _strongest_baseline(r) is not None), default=None),
        "worst_laundered_drop": float(max(drops)) if drops else None,  # unlaundered AUC - laundered AUC, worst row
        "min_laundered_margin_over_baseline": float(min(margins)) if margins else None,
    }


def _strongest_baseline(row: dict) -> float | None:
    """The row's stronger baseline: all cues, or the framing cues alone. On a laundered row the
    cues are fitted on the plain files, where size and format decide; they then miss what the
    framing alone still reads after laundering."""
    values = [row[k] for k in ("baseline_auc", "framing_baseline_auc") if row.get(k) is not None]
    return max(values) if values else None


def format_table(report: dict) -> str:
    c = report["config"]
    at = (f"a threshold with {c['target_fpr']:.1%} false positives on each fold's validation split" if c.get("target_fpr")
          else "each fold's balanced-accuracy threshold (validation split)")
    lines = [
        f"{c['architecture']} at {c['size']} px ({c['fit']}, training canvas {c['train_canvas']}), {c['epochs']} epochs x "
        f"{c['epoch_size']} images, augment {c['augment']}, pairs {c.get('pairs', False)}, scale jitter {c.get('scale_jitter')}, framing jitter {c.get('framing_jitter', False)}, launder training {c.get('launder_training')}, pseudo-fake share {c.get('pseudo_share', 'per-decoder')}",
        f"rates at {at}",
        "",
        "| row | images | AUC | AP | accuracy | TPR @ 1% FPR | rate at threshold | shortcut baseline AUC | framing alone | "
        "framing-matched AUC [95%] (framing alone; pairs) | train min |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["rows"].items():
        rate = ""
        if r.get("held_out") == "real":
            rate = f"{r['held_out_fpr']:.1%} flagged"
        elif r.get("held_out") == "fake":
            rate = f"{r['held_out_tpr']:.1%} caught"
        elif "held_out_fpr" in r:  # both classes: real photos flagged, fakes caught
            rate = f"{r['held_out_fpr']:.1%} flagged, {r['held_out_tpr']:.1%} caught"
        base = f"{r['baseline_auc']:.3f}" if r.get("baseline_auc") is not None else ""
        framed = f"{r['framing_baseline_auc']:.3f}" if r.get("framing_baseline_auc") is not None else ""
        matched = ""
        if r.get("framing_matched_auc") is not None:
            lo, hi = r["framing_matched_auc_95"]
            matched = f"{r['framing_matched_auc']:.3f} [{lo:.2f}-{hi:.2f}] ({r['framing_matched_baseline_auc']:.3f}; {r['framing_matched_pairs']})"
        elif "framing_matched_pairs" in r:
            matched = f"n/a ({r['framing_matched_pairs']} pairs)"
        minutes = f"{r['train_seconds'] / 60:.1f}" if r.get("train_seconds") else ""
        label = f"held out: {name}" if r.get("held_out") and "laundered_of" not in r else name
        if r.get("pseudo_fake_family") and "laundered_of" not in r:
            label += " (pseudo-fake family)"
        lines.append(f"| {label} | {r['images']} | {r['auc']:.3f} | {r['average_precision']:.3f} | {r['accuracy']:.3f} | "
                     f"{r['tpr_at_1pct_fpr']:.3f} | {rate} | {base} | {framed} | {matched} | {minutes} |")
    s = report.get("summary", {})
    if s:
        def fmt(v):
            return "n/a" if v is None else f"{v:.3f}"
        lines += ["", f"real generators held out: mean AUC {fmt(s.get('real_generator_mean_auc'))}, min {fmt(s.get('real_generator_min_auc'))}, "
                      f"framing-matched mean {fmt(s.get('real_generator_mean_framing_matched_auc'))}; "
                      f"pseudo-fake families held out: mean {fmt(s.get('pseudo_family_mean_auc'))}; photo sources held out: at most "
                      f"{fmt(s.get('photo_source_max_flagged'))} flagged; half-size drop {fmt(s.get('half_size_drop'))}; "
                      f"worst laundered drop {fmt(s.get('worst_laundered_drop'))}; smallest laundered margin over the stronger baseline "
                      f"{fmt(s.get('min_laundered_margin_over_baseline'))}"]
    if s.get("held_out_mean_auc") is not None:
        lines += ["", f"held-out mean AUC {s['held_out_mean_auc']:.3f}, min {s['held_out_min_auc']:.3f}; "
                      f"worst robustness drop {s['worst_robustness_drop'] if s['worst_robustness_drop'] is None else round(s['worst_robustness_drop'], 3)}; "
                      f"smallest margin over the stronger baseline {s['min_margin_over_baseline'] if s['min_margin_over_baseline'] is None else round(s['min_margin_over_baseline'], 3)}"]
    return "\n".join(lines)


# ---- folds ---------------------------------------------------------------------------------------

def _fold_config(config, folder: Path):
    from dfx.trainer.train import TrainConfig

    return TrainConfig(
        data=tuple(config.data), out=str(folder), size=config.size, fit=config.fit, val_fraction=config.val_fraction,
        seed=config.seed, epochs=config.epochs, batch_size=config.batch_size, learning_rate=config.learning_rate,
        warmup_epochs=1.0, patience=config.epochs, augment=config.augment, architecture=config.architecture,
        train_canvas=config.train_canvas, balance=True, epoch_size=config.epoch_size, overwrite=True, progress=config.progress,
        pairs=config.pairs, pseudo_share=config.pseudo_share, scale_jitter=config.scale_jitter, framing_jitter=config.framing_jitter,
        launder_training=config.launder_training,
        faces=config.faces,
    )


def _train_fold(config, key: str, folder: Path, fold_train, fold_val, train_x, copies, train_s, eval_x, path_index, log):
    from dfx.bundle import Bundle
    from dfx.trainer.data import Arrays, with_copies
    from dfx.trainer.train import fit_arrays

    train_config = _fold_config(config, folder)
    if (folder / "manifest.json").exists():
        try:
            bundle = Bundle.open(folder)
            if bundle.manifest.get("protocol_key") == key:
                log(f"{folder.name}: reusing the finished fold")
                return bundle
        except DfxError:
            pass
    log(f"{folder.name}: training on {len(fold_train)} images ({', '.join(sorted({s.group for s in fold_train}))})")
    train_index = {s.path: i for i, s in enumerate(train_s)}
    ti = [train_index[s.path] for s in fold_train]
    x, photo = train_x.select(ti)
    windows = [fold_train[i] for i in photo]  # a photo's sample once per face
    y = np.array([s.label for s in windows], np.int64)
    train_arrays = Arrays(x, y, windows, [])
    for decoded, variant in copies:  # each image again: rescaled (scale jitter), laundered or reframed
        cx, cphoto = decoded.select(ti)
        copied = [fold_train[i] for i in cphoto]
        train_arrays = with_copies(train_arrays, Arrays(cx, np.array([s.label for s in copied], np.int64), copied, []), variant)
    vx, vphoto = eval_x.select([path_index[s.path] for s in fold_val])
    val_windows = [fold_val[i] for i in vphoto]
    val_arrays = Arrays(vx, np.array([s.label for s in val_windows], np.int64), val_windows, [])
    bundle = Bundle.create(folder, input_size=(config.size, config.size), fit=config.fit, architecture=config.architecture, overwrite=True)
    bundle = fit_arrays(train_config, bundle, train_arrays, val_arrays)
    bundle.manifest["protocol_key"] = key
    bundle.manifest["protocol_fold"] = folder.name
    bundle.save()
    return bundle


def _load_model(bundle):
    import keras

    from dfx.trainer.vit import custom_layers

    return keras.saving.load_model(str(bundle.verify("model.keras")), compile=False, custom_objects=custom_layers())


def _photo_scores(model, decoded: "_Decoded", index, chosen) -> tuple[np.ndarray, np.ndarray]:
    """(labels, logits) of `chosen` (photos; `index`: path -> position in `decoded`), each photo
    scored by its most-fake window (dfx.photo_data.photo_logits); NaN: no face found."""
    from dfx.photo_data import photo_logits
    from dfx.trainer.data import predict_logits

    x, photo = decoded.select([index[s.path] for s in chosen])
    return np.array([s.label for s in chosen]), photo_logits(predict_logits(model, x), photo, len(chosen))


def _threshold_at_fpr(labels: np.ndarray, scores: np.ndarray, target_fpr: float) -> float:
    """The logit threshold with `target_fpr` false positives on these photos (the fold's validation split)."""
    scored = ~np.isnan(scores)
    return metrics.threshold_at_fpr(labels[scored], scores[scored], target_fpr)


def _score(model, decoded: "_Decoded", index, chosen, threshold) -> dict:
    """The row of `chosen` at `threshold` (see _photo_scores)."""
    return _row(*_photo_scores(model, decoded, index, chosen), threshold)


def _row(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """A row's metrics at `threshold`; photos without a face (NaN) are counted, not scored."""
    scored = ~np.isnan(scores)
    y = labels[scored]
    row = metrics.summarize(y, scores[scored], threshold)
    out = {k: row[k] for k in ("images", "auc", "average_precision", "accuracy", "tpr_at_1pct_fpr", "specificity", "recall")}
    out["held_out_fpr"] = 1.0 - row["specificity"]
    out["held_out_tpr"] = row["recall"]
    if not scored.all():
        out["no_face"] = int((~scored).sum())  # photos of the row in which no face was found (not scored)
    return out


# ---- pixels ----------------------------------------------------------------------------------------

@dataclass
class _Decoded:
    """Decoded windows of a list of photos: `x[k]` belongs to photo `photo[k]` (ascending); one
    window per image scored whole, one per face of a whole photo, none for a photo with no face."""

    x: np.ndarray  # uint8 (K, H, W, 3)
    photo: np.ndarray  # int64 (K,)
    no_face: list[str]
    searched: int  # photos the face finder looked at

    def select(self, photos) -> tuple[np.ndarray, list[int]]:
        """(the windows of `photos` (indices), in that order; each window's position in `photos`)."""
        starts = np.searchsorted(self.photo, photos, "left")
        ends = np.searchsorted(self.photo, photos, "right")
        rows = [np.arange(a, b) for a, b in zip(starts, ends)]
        at = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        return self.x[at], [i for i, r in enumerate(rows) for _ in range(len(r))]


class _Cache:
    """Decoded pixels, saved once per (size, fit, canvas, faces) so reruns and folds skip decoding."""

    def __init__(self, folder: Path, config: ProtocolConfig):
        from dfx.photo_data import face_policy

        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.faces = face_policy(config.faces, size=config.size)  # one finder for every decode, made only if a photo needs it
        # face crops decode alike under off and auto; the suffix keeps whole-photo windows apart
        self.suffix = "" if config.faces == "off" else f"-faces-{config.faces}"

    def arrays(self, role: str, samples) -> _Decoded:
        from dfx.photo_data import load_faces

        c = self.config
        side = (c.train_canvas or c.size) if role == "train" else c.size
        return self._cached(f"{role}-{c.fit}-{side}", samples,
                            lambda: load_faces(samples, side, c.fit, self.faces, desc=f"decode {role}", progress=c.progress))

    def perturbed(self, name: str, samples) -> _Decoded:
        from functools import partial

        from dfx.trainer.alterations import FRAME_TIGHTEST

        key = f"val-{name}" + (f"-{FRAME_TIGHTEST}" if name == FACE_CROP else "")  # the cut's size is part of it
        return self.altered(key, samples, partial(perturb, name))

    def rescaled(self, samples) -> _Decoded:
        """The training images rescaled by [scale_jitter, 1) (TrainConfig.scale_jitter), at the canvas."""
        from dfx.trainer.data import rescaled_copies

        c = self.config
        side = c.train_canvas or c.size
        return self._cached(f"train-rescaled-{c.scale_jitter}-s{c.seed}-{c.fit}-{side}", samples,
                            lambda: rescaled_copies(samples, side, c.fit, c.scale_jitter, c.seed, faces=self.faces, progress=c.progress))

    def reframed(self, samples) -> _Decoded:
        """The training images cut to a random square around the face (TrainConfig.framing_jitter), at the canvas."""
        from dfx.trainer.alterations import FRAME_TIGHTEST
        from dfx.trainer.data import framing_finder, reframed_copies

        c = self.config
        side = c.train_canvas or c.size
        return self._cached(f"train-reframed-{FRAME_TIGHTEST}-s{c.seed}-{c.fit}-{side}", samples,
                            lambda: reframed_copies(samples, side, c.fit, c.seed, framing_finder(), faces=self.faces, progress=c.progress))

    def laundered_train(self, samples) -> _Decoded:
        """The training images laundered (TrainConfig.launder_training), at the canvas."""
        from dfx.trainer.data import laundered_copies

        c = self.config
        side = c.train_canvas or c.size
        return self._cached(f"train-laundered-s{c.seed}-{c.fit}-{side}", samples,
                            lambda: laundered_copies(samples, side, c.fit, c.seed, faces=self.faces, progress=c.progress))

    def altered(self, key: str, samples, alter) -> _Decoded:
        """`samples` altered at native resolution (alter(path, image=None) -> PIL image or bytes), at the input size."""
        from dfx.photo_data import load_faces

        c = self.config
        return self._cached(f"{key}-{c.fit}-{c.size}", samples,
                            lambda: load_faces(samples, c.size, c.fit, self.faces, alter=alter, desc=key, progress=c.progress))

    def _cached(self, key: str, samples, decode) -> _Decoded:
        key += self.suffix
        path = self.folder / f"{key}.npy"
        paths_file = self.folder / f"{key}.json"
        faces_file = self.folder / f"{key}.faces.json"  # absent in caches of face crops written before whole photos
        paths = [s.path for s in samples]
        if path.exists() and paths_file.exists() and json.loads(paths_file.read_text()) == paths:
            x = np.load(path)
            if faces_file.exists():
                f = json.loads(faces_file.read_text())
                return _Decoded(x, np.array(f["photo"], np.int64), f["no_face"], f["searched"])
            if len(x) == len(paths):
                return _Decoded(x, np.arange(len(paths), dtype=np.int64), [], 0)
        found = decode()
        if found.errors:
            raise DfxError(f"{len(found.errors)} image(s) could not be decoded, e.g. {found.errors[0][0]}: {found.errors[0][1]}",
                           hint="remove them from the data")
        # Whole or not at all, and replaced rather than rewritten: a cache hard-linked from another
        # run (cp -al) stays that run's.
        write_atomic(path, lambda f: np.save(f, found.x))
        faces = {"photo": found.photo.tolist(), "no_face": found.no_face, "searched": found.searched}
        write_atomic(faces_file, json.dumps(faces))
        write_atomic(paths_file, json.dumps(paths))
        return _Decoded(found.x, found.photo, found.no_face, found.searched)


def perturb(name: str, path: str, image=None):
    """The native-resolution image at `path` after one robustness alteration (a PIL image).
    `image`: pixels to alter instead of the file's (a face's crop from it, dfx.photo_data)."""
    import io

    from PIL import ImageFilter, ImageOps

    from dfx.images import to_rgb

    image = to_rgb(path if image is None else image)
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
    if name == FACE_CROP:
        from dfx.trainer.alterations import reframed
        from dfx.trainer.data import framing_finder

        return reframed(path, framing_finder(), image=image, tightest=True)
    if name == "rotate-10":
        return image.rotate(10, resample=2)  # bilinear, same canvas
    if name == LAUNDERED:
        from dfx.trainer.alterations import launder

        return to_rgb(launder(path, image=image))
    raise ValueError(f"unknown perturbation {name!r}")


# ---- the shortcut baseline ---------------------------------------------------------------------------

FEATURES = ("width", "height", "jpeg", "png", "other_format", "q_luma", "q_chroma", "mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b")
FRAMING = ("face_width", "face_height", "face_x", "face_y", "face_found")  # framing_cues, from the face finder


def cheap_cues(source) -> list[float]:
    """The cues a model should not need: size, format, JPEG quantisation, colour statistics.
    `source`: a path or encoded bytes."""
    import io

    from PIL import Image

    from dfx.images import open_formats

    with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source, formats=open_formats()) as image:
        fmt = image.format or ""
        tables = getattr(image, "quantization", None) or {}
        w, h = image.size
        q_luma = float(np.mean(tables[0])) if 0 in tables else 0.0
        q_chroma = float(np.mean(tables[1])) if 1 in tables else 0.0
        small = image.convert("RGB")
        small.thumbnail((64, 64))
        px = np.asarray(small, np.float64).reshape(-1, 3)
    return [w, h, fmt == "JPEG", fmt == "PNG", fmt not in ("JPEG", "PNG"), q_luma, q_chroma, *px.mean(0), *px.std(0)]


def _shortcut_features(samples, cache: Path, alter: Callable | None = None, name: str = "cues") -> np.ndarray:
    """The cheap cues of every sample (of its altered file when `alter` is given), cached."""
    return _cached_features(samples, cache, name, lambda p: cheap_cues(alter(p) if alter is not None else p))


def framing_cues(source, finder) -> list[float]:
    """Where the largest face sits in the image (FRAMING): its box's width and height over the
    image's short side and its centre over the image's width and height, or -1s when `finder`
    (dfx.faces.FaceFinder) finds none. Each source crops its faces its own way (docs/pseudo-fakes.md,
    "Framing"): these five numbers alone separate the shared folders' real and fake faces."""
    from dfx.faces import draft_scale, largest_face
    from dfx.photos import decode_photo

    photo = decode_photo(source, finder_scale=draft_scale(finder.config.min_face, finder.config.window_min))
    box = largest_face(finder.find(photo.small, photo.scale))
    if box is None:
        return [-1.0, -1.0, -1.0, -1.0, 0.0]
    side = min(photo.width, photo.height)
    return [box.width / side, box.height / side, (box.x0 + box.x1) / 2 / photo.width, (box.y0 + box.y1) / 2 / photo.height, 1.0]


def _framing_features(samples, cache: Path, finder, alter: Callable | None = None, name: str = "framing") -> np.ndarray:
    """framing_cues of every sample (of its altered file when `alter` is given), cached."""
    return _cached_features(samples, cache, name, lambda p: framing_cues(alter(p) if alter is not None else p, finder))


def _cached_features(samples, cache: Path, name: str, one: Callable) -> np.ndarray:
    """`one(path)` of every sample, on two threads with a progress bar; cached under `name`."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    path = cache / f"{name}.npy"
    paths_file = cache / f"{name}.json"
    paths = [s.path for s in samples]
    if path.exists() and paths_file.exists() and json.loads(paths_file.read_text()) == paths:
        return np.load(path)
    with ThreadPoolExecutor(max_workers=2) as pool:
        x = np.array(list(tqdm(pool.map(one, paths), total=len(paths), desc=name, unit="img", disable=None)), np.float64)
    write_atomic(path, lambda f: np.save(f, x))
    write_atomic(paths_file, json.dumps(paths))
    return x


def _framing_finder_or_none(log: Callable[[str], None]):
    """The face finder of the framing cues and the face-crop row (trainer.data.framing_finder),
    or None, said in the log, where none can be made: the baseline then reads the other cues and
    the face-crop row is left out."""
    from dfx.trainer.data import framing_finder

    try:
        return framing_finder()
    except DfxError as exc:
        log(f"no framing cues in the shortcut baseline and no {FACE_CROP} row: {exc}")
        return None


def _baseline(features, eval_features, path_index, train, val, evaluated) -> float:
    """AUC of the shortcut model fitted on the fold's training groups (`features`), scored on
    `evaluated` as seen in `eval_features` (the same files, or their laundered copies)."""
    clf = _fit_baseline(features, path_index, train, val)
    scores = clf.predict_proba(eval_features[[path_index[s.path] for s in evaluated]])[:, 1]
    return float(metrics.auc([s.label for s in evaluated], scores))


def _fit_baseline(features, path_index, train, val):
    """The shortcut model (scikit-learn's gradient-boosted trees) fitted on the fold's training
    groups' `features`; its predict_proba(...)[:, 1] is P(fake)."""
    from dfx.errors import require

    require("sklearn", "train", "the shortcut baseline")
    from sklearn.ensemble import HistGradientBoostingClassifier

    fit_on = list(train) + list(val)  # the cues need no early stopping: all the fold's training groups
    x = features[[path_index[s.path] for s in fit_on]]
    y = np.array([s.label for s in fit_on])
    return HistGradientBoostingClassifier(max_iter=200, random_state=0, class_weight="balanced").fit(x, y)


# Framing-matched AUC: each fake is paired with the nearest unpaired real image whose largest
# face has the same width, height and centre within FRAMING_CALIPER of the image's side (and
# faceless with faceless). On the pairs, where the face sits cannot tell the classes apart; the
# framing baseline scored on them says how well that holds (near 0.5). Coarser matching (bins of
# width x centre height) left the framing baseline at 0.94-0.98 inside the bins.
FRAMING_CALIPER = 0.02
MIN_MATCHED_PAIRS = 30  # fewer pairs: no AUC worth reporting, only the count


def framing_matched_pairs(labels, cues, caliper: float = FRAMING_CALIPER, seed: int = 0) -> np.ndarray:
    """(P, 2) indices (fake, real) of framing-matched pairs, each image in at most one pair:
    fakes in a seeded random order, each taking the nearest unpaired real (largest difference
    of the four framing_cues) within `caliper`."""
    labels = np.asarray(labels)
    cues = np.asarray(cues, np.float64).reshape(-1, len(FRAMING))
    found = cues[:, FRAMING.index("face_found")] > 0
    reals = np.flatnonzero(labels == 0)
    free = np.ones(len(labels), bool)
    pairs = []
    for fake in np.random.default_rng(seed).permutation(np.flatnonzero(labels == 1)):
        candidates = reals[free[reals] & (found[reals] == found[fake])]
        if not candidates.size:
            continue
        distance = np.abs(cues[candidates, :4] - cues[fake, :4]).max(1) if found[fake] else np.zeros(candidates.size)
        nearest = int(np.argmin(distance))
        if distance[nearest] <= caliper:
            free[candidates[nearest]] = False
            pairs.append((fake, candidates[nearest]))
    return np.array(pairs, np.int64).reshape(-1, 2)


def _framing_matched(labels, logits, framing_scores, cues) -> dict:
    """The row's AUC on framing-matched pairs (framing_matched_pairs), the framing baseline's AUC
    on the same pairs (what framing is left: near 0.5 when the matching holds), and the number
    of pairs. Photos without a scored face (NaN) are left out, as in the row."""
    scored = np.flatnonzero(~np.isnan(logits))
    pairs = scored[framing_matched_pairs(labels[scored], cues[scored])]
    if len(pairs) < MIN_MATCHED_PAIRS:
        return {"framing_matched_auc": None, "framing_matched_baseline_auc": None, "framing_matched_pairs": len(pairs)}
    # A few hundred pairs at most: their 95% interval (pairs resampled, seeded) says how far to trust it.
    rng = np.random.default_rng(0)
    resampled = [pairs[rng.integers(0, len(pairs), len(pairs))].ravel() for _ in range(200)]
    interval = np.percentile([metrics.auc(labels[q], logits[q]) for q in resampled], [2.5, 97.5])
    return {"framing_matched_auc": float(metrics.auc(labels[pairs.ravel()], logits[pairs.ravel()])),
            "framing_matched_auc_95": [round(float(v), 4) for v in interval],
            "framing_matched_baseline_auc": float(metrics.auc(labels[pairs.ravel()], framing_scores[pairs.ravel()])),
            "framing_matched_pairs": len(pairs)}


# ---- bookkeeping ----------------------------------------------------------------------------------------

def _jsonable(config: ProtocolConfig) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()}


def _config_key(config: ProtocolConfig, faces_used: bool = True) -> str:
    """What makes two runs' folds interchangeable (not `groups`, `out` or `progress`). `faces`
    counts only where the finder looked at a photo (`faces_used`): on face crops auto decodes
    exactly as off, so folds of runs made before whole photos are reused."""
    d = _jsonable(config)
    for k in ("groups", "out", "progress", "baseline", "launder", "faces", "target_fpr"):
        d.pop(k)
    if d.get("launder_training") is None:  # runs from before these options reuse their folds
        d.pop("launder_training", None)
    if d.get("pseudo_share") == "per-decoder":
        d.pop("pseudo_share", None)
    if not d.get("framing_jitter"):
        d.pop("framing_jitter", None)
    if faces_used:
        d["faces"] = config.faces
    d["data"] = [str(Path(p).resolve()) for p in d["data"]]
    d["recipe"] = RECIPE_VERSION
    return json.dumps(d, sort_keys=True)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(type(value))
