"""The leave-one-source-out protocol for a head on a frozen backbone (clip_vit), on cached tokens.

The same questions as dfx.trainer.protocol, asked of a head that trains in seconds:

- in-distribution: train on every group's training split, score the validation split; and the
  same validation images laundered (long side 256-512 px, JPEG q70-90) and at half size;
- held out: for every generator and photo source G, train on the other groups, score all of G
  against the other class's validation images, and the same images laundered;
- few-shot: for every held-out generator, k of its images (k in `shots`, a seeded draw) join the
  training set; G's other images are scored as before. This is what `dfx adapt` does for a
  moderation team that meets a new generator.

Every row's rates are given at the threshold the bundle would get: its rule (`target_fpr` on the
fold's validation reals, or the balanced-accuracy threshold) on the fold's own validation split,
which never holds G. Beside each row the shortcut baseline (width, height, format, JPEG tables,
colour statistics; dfx.trainer.protocol) fitted on the same split.

Tokens come from the feature cache, so the first run costs one tower pass per window (and per
laundered and half-size copy); a rerun, with other heads or shots, takes minutes.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from dfx import datasets, metrics
from dfx.atomic import write_atomic
from dfx.errors import DfxError
from dfx.trainer.probe import DEFAULT_BACKBONE
from dfx.trainer.vit import DEFAULT_HEAD

IN_DISTRIBUTION = "in-distribution"
VIEWS = ("laundered", "half-size")  # the altered copies the in-distribution row is scored on; held-out rows: laundered


@dataclass(frozen=True)
class ProbeProtocolConfig:
    data: tuple[str, ...]  # labelled roots pooled (real/<source>, fake/<generator>)
    out: str  # folder for protocol.json and protocol.md
    backbone: str = DEFAULT_BACKBONE  # dfx.trainer.probe.BACKBONES
    head: str = DEFAULT_HEAD  # dfx.trainer.vit.HEADS
    head_blocks: tuple[int, ...] | None = None  # the blocks head's tokens
    fit: str = "resize"  # pixel policy
    faces: str = "auto"  # whole photos (dfx.photo_data)
    seed: int = 0  # split, head and few-shot draws
    val_fraction: float = 0.2
    target_fpr: float | None = None  # the threshold rule: None balanced accuracy, else this FPR on the fold's validation reals
    shots: tuple[int, ...] = (5, 20)  # few-shot rows per held-out generator
    baseline: bool = True  # the shortcut baseline beside each row
    views: bool = True  # score the laundered and half-size copies too (dfx protocol --no-launder: off)
    # Train on a copy of every training image cut to a random square around its face too
    # (dfx train --framing-jitter): how a source frames its faces stops telling real from fake.
    framing_jitter: bool = False
    progress: bool = True


def run(config: ProbeProtocolConfig, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> dict:
    from dfx.photo_data import face_policy, load_faces, photo_logits
    from dfx.trainer.alterations import launder
    from dfx.trainer.probe import Backbone, HeadConfig, fit_head, head_logits
    from dfx.trainer.protocol import (_fit_baseline, _framing_features, _framing_finder_or_none, _framing_matched, _row,
                                      _shortcut_features, holdable_units, perturb)

    started = time.time()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    samples = datasets.discover(list(config.data))
    train_s, val_s = datasets.split(samples, config.val_fraction, config.seed)
    units = holdable_units(samples)
    net = Backbone(config.backbone)
    policy = face_policy(config.faces, size=net.spec.image)
    path_index = {s.path: i for i, s in enumerate(samples)}

    def tokens_of(alter, desc, chosen):
        """(tokens of every window of `chosen`, each window's index in `samples`)."""
        found = load_faces(chosen, net.spec.image, config.fit, policy, alter=alter, desc=f"decode {desc}", progress=config.progress)
        if found.errors:
            raise DfxError(f"{len(found.errors)} image(s) could not be decoded, e.g. {found.errors[0][0]}: {found.errors[0][1]}",
                           hint="remove them from the data")
        photo = np.array([path_index[chosen[i].path] for i in found.photo], np.int64)
        return net.features(found.x, progress=config.progress, desc=f"features {desc}"), photo

    # every image plain and laundered (every row is scored on both); half size for the in-distribution row
    views = {"plain": tokens_of(None, "plain", samples)}
    if config.views:
        views.update(laundered=tokens_of(partial(launder, seed=config.seed), "laundered", samples),
                     **{"half-size": tokens_of(partial(perturb, "half-size"), "half-size", val_s)})
    (out / "cache").mkdir(exist_ok=True)
    copies = None  # (tokens, photo) of the reframed training copies
    if config.framing_jitter:
        from dfx.trainer.data import framing_finder, reframed_copies

        found = reframed_copies(train_s, net.spec.image, config.fit, config.seed, framing_finder(), faces=policy, progress=config.progress)
        copies = (net.features(found.x, progress=config.progress, desc="features reframed"),
                  np.array([path_index[train_s[i].path] for i in found.photo], np.int64))
    cues = _shortcut_features(samples, out / "cache") if config.baseline else None
    # where the face sits (the face finder): beside the cues in the baseline, and each row's AUC on
    # framing-matched pairs, as in dfx.trainer.protocol
    framer = _framing_finder_or_none(log) if config.baseline else None
    framing = _framing_features(samples, out / "cache", framer) if framer is not None else None
    if framing is not None:
        cues = np.hstack([cues, framing])
    head_config = HeadConfig(kind=config.head, blocks=config.head_blocks, seed=config.seed)

    def windows(view, chosen):
        tokens, photo = views[view]
        wanted = np.isin(photo, [path_index[s.path] for s in chosen])
        return tokens[wanted], photo[wanted]

    def fit(train):
        x, photo = windows("plain", train)
        if copies is not None:
            wanted = np.isin(copies[1], [path_index[s.path] for s in train])
            x, photo = np.concatenate([x, copies[0][wanted]]), np.concatenate([photo, copies[1][wanted]])
        labels = np.array([samples[p].label for p in photo])
        return fit_head(x, labels, [samples[p].group for p in photo], head_config)

    def scores(head, view, chosen):
        """(labels, photo logits) of `chosen`, each photo by its most-fake window."""
        x, photo = windows(view, chosen)
        at = {path_index[s.path]: i for i, s in enumerate(chosen)}
        return np.array([s.label for s in chosen]), photo_logits(head_logits(head, x), np.array([at[p] for p in photo]), len(chosen))

    def threshold(head, val):
        labels, logits = scores(head, "plain", val)
        if config.target_fpr is None:
            return metrics.threshold_balanced_accuracy(labels, logits)
        return metrics.threshold_at_fpr(labels, logits, config.target_fpr)

    rows: dict[str, dict] = {}

    def add_rows(name, head, evaluated, t, fold_train, fold_val, extra, views=VIEWS):
        at = [path_index[s.path] for s in evaluated]
        for view in ("plain",) + (views if config.views else ()):
            labels, logits = scores(head, view, evaluated)
            row = _row(labels, logits, t) | extra
            if cues is not None and view == "plain":
                cue_model = _fit_baseline(cues, path_index, fold_train, fold_val)
                row["baseline_auc"] = float(metrics.auc(labels, cue_model.predict_proba(cues[at])[:, 1]))
            if framing is not None and view == "plain":
                framed = _fit_baseline(framing, path_index, fold_train, fold_val).predict_proba(framing[at])[:, 1]
                row |= {"framing_baseline_auc": float(metrics.auc(labels, framed))} | _framing_matched(labels, logits, framed, framing[at])
            rows[name if view == "plain" else f"{name} / {view}"] = row | ({"view_of": name} if view != "plain" else {})

    # in distribution
    t0 = time.time()
    head = fit(train_s)
    t = threshold(head, val_s)
    add_rows(IN_DISTRIBUTION, head, val_s, t, train_s, val_s, {"fit_seconds": round(time.time() - t0, 1)})
    log(f"{IN_DISTRIBUTION}: AUC {rows[IN_DISTRIBUTION]['auc']:.4f}")
    rng = np.random.default_rng(config.seed)
    for name, (label, held) in units.items():
        fold_train = [s for s in train_s if s.group not in held]
        fold_val = [s for s in val_s if s.group not in held]
        others = [s for s in val_s if s.label != label and s.group not in held]
        members = [s for s in samples if s.group in held]
        t0 = time.time()
        head = fit(fold_train)
        t = threshold(head, fold_val)
        add_rows(name, head, members + others, t, fold_train, fold_val,
                 {"held_out": datasets.LABELS[label], "shots": 0, "fit_seconds": round(time.time() - t0, 1)}, views=("laundered",))
        log(f"{name} held out: AUC {rows[name]['auc']:.4f}, flagged/caught {rows[name]['held_out_fpr']:.3f}/{rows[name]['held_out_tpr']:.3f}")
        if label != 1:
            continue
        order = rng.permutation(len(members))
        for k in config.shots:
            if k >= len(members):
                continue
            shot = [members[i] for i in order[:k]]
            rest = [members[i] for i in order[k:]]
            head = fit(fold_train + shot)
            t = threshold(head, fold_val)
            row_name = f"{name} / {k}-shot"
            rows[row_name] = _row(*scores(head, "plain", rest + others), t) | {"held_out": "fake", "shots": k, "shot_of": name}
            log(f"{row_name}: AUC {rows[row_name]['auc']:.4f}")
    report = {"protocol": "probe-1", "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()},
              "backbone": net.record(), "data": datasets.summary(samples), "rows": rows, "seconds": round(time.time() - started, 1)}
    report["summary"] = summarize(rows)
    write_atomic(out / "protocol.json", json.dumps(report, indent=2, default=_json_default))
    write_atomic(out / "protocol.md", format_table(report) + "\n")
    return report


def summarize(rows: dict) -> dict:
    held = {k: r for k, r in rows.items() if r.get("held_out") and "view_of" not in r and not r.get("shots")}
    gens = [r["auc"] for r in held.values() if r["held_out"] == "fake"]
    reals = [r for r in held.values() if r["held_out"] == "real"]
    out = {"held_out_generator_auc_mean": float(np.mean(gens)) if gens else None,
           "held_out_generator_auc_min": float(np.min(gens)) if gens else None,
           "held_out_source_flagged_max": max((r["held_out_fpr"] for r in reals), default=None),
           "in_distribution_auc": rows.get(IN_DISTRIBUTION, {}).get("auc")}
    for k in sorted({r["shots"] for r in rows.values() if r.get("shots")}):
        aucs = [r["auc"] for r in rows.values() if r.get("shots") == k]
        out[f"{k}_shot_auc_min"] = float(np.min(aucs))
    views = [abs(r["auc"] - rows[r["view_of"]]["auc"]) for r in rows.values() if "view_of" in r]
    out["worst_view_auc_gap"] = float(max(views)) if views else None
    return out


def format_table(report: dict) -> str:
    lines = [f"backbone {report['backbone']['name']}, head {report['config']['head']}"
             + (f" blocks {report['config']['head_blocks']}" if report['config'].get('head_blocks') else "")
             + f", threshold {'target FPR ' + str(report['config']['target_fpr']) if report['config']['target_fpr'] else 'balanced accuracy'}"
             + f" ({report['seconds']:.0f} s)", "",
             "| row | images | AUC | flagged (real) | caught (fake) | shortcut baseline AUC | framing-matched AUC |", "|---|---|---|---|---|---|---|"]
    for name, r in report["rows"].items():
        held = r.get("held_out")
        flagged = f"{r['held_out_fpr']:.3f}" if held != "fake" else ""
        caught = f"{r['held_out_tpr']:.3f}" if held != "real" else ""
        baseline = f"{r['baseline_auc']:.3f}" if "baseline_auc" in r else ""
        matched = f"{r['framing_matched_auc']:.3f} ({r['framing_matched_pairs']} pairs)" if r.get("framing_matched_auc") is not None else ""
        lines.append(f"| {name} | {r['images']} | {r['auc']:.4f} | {flagged} | {caught} | {baseline} | {matched} |")
    s = report["summary"]
    lines += ["", "summary: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in s.items())]
    return "\n".join(lines)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(type(value))
