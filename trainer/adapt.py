"""`dfx adapt`: a new bundle version that knows a new generator from a handful of its images.

A moderation team meets a generator the detector misses. It gives a few of its images (and,
optionally, its own users' real photos); the head of a frozen-backbone bundle (clip_vit) is
refitted on the bundle's training tokens (from the feature cache, by the keys the bundle
recorded) plus the new ones, each new group an equal share of its class, so five images weigh
as much as a whole generator. The threshold is set again by the bundle's rule on its validation
split, the model is saved whole (tower + new head), the manifest records what was added, and
`dfx export` writes and vouches the fp32 ONNX. The head takes seconds; the export a minute or two
for ViT-B/16 (tf2onnx and the parity run of the whole tower).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dfx import metrics
from dfx.bundle import Bundle, tool_versions
from dfx.errors import DfxError


@dataclass(frozen=True)
class AdaptConfig:
    bundle: str  # a clip_vit bundle (dfx train --architecture clip_vit)
    fakes: tuple[str, ...]  # images or folders of the new generator
    out: str  # the new bundle's folder
    real: tuple[str, ...] = ()  # images or folders of the team's own real photos (optional)
    group: str = "adapted"  # the new generator's group name in the manifest and the head's balance
    target_fpr: float | None = None  # None: the bundle's own threshold rule
    export: bool = True  # write and vouch model.onnx (dfx export) after the head
    overwrite: bool = False
    progress: bool = True


def adapt(config: AdaptConfig) -> Bundle:
    from dfx.images import iter_image_files
    from dfx.photo_data import face_policy, load_faces
    from dfx.trainer import probe
    from dfx.trainer.train import MODEL_FILE, _save_model, calibrate, check_target_fpr, choose_threshold

    started = time.time()
    check_target_fpr(config.target_fpr)
    old = Bundle.open(config.bundle)
    record = old.manifest.get("backbone")
    if not record or old.file(probe.TRAINING_INDEX) is None:
        raise DfxError(f"{config.bundle} is a {old.manifest.get('architecture')} bundle; dfx adapt refits the head of a frozen-backbone "
                       "bundle (dfx train --architecture clip_vit)", hint="retrain with the new images added to the data instead")
    out = Path(config.out)
    if out.resolve() == old.root.resolve():
        raise DfxError("--out must be a new folder: the adapted bundle is a new version beside the old one")
    fakes = iter_image_files(list(config.fakes))
    reals = iter_image_files(list(config.real)) if config.real else []
    if not fakes:
        raise DfxError(f"no images found in {', '.join(config.fakes)}")
    net = probe.Backbone(record["name"])
    if net.tower_id != record["tower_id"]:
        raise DfxError(f"this bundle's tower ({record['tower_id'][:12]}) is not the installed {record['name']} ({net.tower_id[:12]})")
    index = np.load(old.verify(probe.TRAINING_INDEX))
    inp = old.manifest["input"]
    faces = face_policy((old.manifest.get("data", {}).get("faces") or {}).get("mode", "off"), size=inp["height"])
    train_tokens, val_tokens = _cached(net, (index["train_keys"], index["val_keys"]), old, faces, config.progress)

    added, new_tokens, new_labels, new_groups, new_keys = [], [], [], [], []
    for paths, label, group in ((fakes, 1, config.group), (reals, 0, f"{config.group}-real")):
        if not paths:
            continue
        found = load_faces(paths, (inp["height"], inp["width"]), inp["fit"], faces, desc=f"decode {group}", progress=config.progress)
        for path, reason in found.errors:
            print(f"skipped {path}: {reason}", file=sys.stderr)
        if len(found.x):
            new_tokens.append(net.features(found.x, progress=config.progress, desc=f"features {group}"))
            new_labels += [label] * len(found.x)
            new_groups += [group] * len(found.x)
            new_keys += [net.cache.key(w) for w in found.x]
        used = sorted({found.samples[i] for i in found.photo})
        added.append({"group": group, "label": "fake" if label else "real", "images": len(used), "windows": int(len(found.x)),
                      "skipped": len(found.errors) + len(found.no_face), "files": used[:50]})
    if not new_tokens:
        raise DfxError("none of the given images could be used (unreadable, or no face found)")

    tokens = np.concatenate([train_tokens] + new_tokens)
    labels = np.concatenate([index["train_labels"], np.array(new_labels, np.int64)])
    groups = [str(g) for g in index["train_groups"]] + new_groups
    h = record["head"]
    head_config = probe.HeadConfig(kind=h["kind"], blocks=tuple(h["blocks"]) or None, l2=h["l2"], epochs=h["epochs"],
                                   batch_size=h["batch_size"], learning_rate=h["learning_rate"], seed=h["seed"])
    fitted = time.time()
    head = probe.fit_head(tokens, labels, groups, head_config)
    head_seconds = time.time() - fitted
    val_labels = index["val_labels"]
    val_logits = probe.head_logits(head, val_tokens)
    rule = config.target_fpr if config.target_fpr is not None else old.manifest["threshold"].get("target_fpr")
    threshold = choose_threshold(val_labels, val_logits, rule)
    val_metrics = metrics.summarize(val_labels, val_logits, threshold["logit"])
    threshold["val_fpr"], threshold["val_tpr"] = 1.0 - val_metrics["specificity"], val_metrics["recall"]
    new_logits = probe.head_logits(head, np.concatenate(new_tokens))
    caught = float(np.mean(new_logits[np.array(new_labels) == 1] >= threshold["logit"]))

    from dfx.trainer import vit

    bundle = Bundle.create(out, input_size=(inp["height"], inp["width"]), fit=inp["fit"], architecture=old.manifest["architecture"],
                           overwrite=config.overwrite)
    for name in list(bundle.manifest["files"]):
        bundle.remove_file(name)
    _save_model(vit.detector(net.tower(), head), bundle.root / MODEL_FILE)
    np.savez(bundle.root / probe.TRAINING_INDEX, train_keys=np.concatenate([index["train_keys"], np.array(new_keys, "S64")]), train_labels=labels,
             train_groups=np.array(groups), val_keys=index["val_keys"], val_labels=val_labels, val_groups=index["val_groups"])
    m = bundle.manifest
    for key in ("data", "training", "backbone"):
        if key in old.manifest:
            m[key] = json.loads(json.dumps(old.manifest[key]))
    m["backbone"]["head"] = {**m["backbone"]["head"], "seconds": round(head_seconds, 2)}
    m["threshold"] = threshold
    m["metrics"] = {"val": val_metrics, "adapted_images_caught_in_sample": caught}
    m["calibration"] = calibrate(val_labels, val_logits)
    m["adapted"] = (old.manifest.get("adapted") or []) + [{
        "from": str(old.root), "from_model_sha256": old.manifest["files"]["model.keras"]["sha256"], "added": added,
        "head_seconds": round(head_seconds, 2), "seconds": round(time.time() - started, 1),
        "threshold_before": old.manifest["threshold"]["logit"], "threshold_rule": rule or "balanced_accuracy",
    }]
    tools = tool_versions("tensorflow", "keras", "numpy", "pillow")
    bundle.add_file(MODEL_FILE, role="keras", tools=tools)
    bundle.add_file(probe.TRAINING_INDEX, role="head-training-index")
    bundle.save()
    if config.export:
        from dfx.export.pipeline import ExportConfig, export_bundle

        export_bundle(bundle.root, ExportConfig())
    return Bundle.open(bundle.root)


def _cached(net, key_sets, bundle: Bundle, faces, progress: bool) -> list[np.ndarray]:
    """The tokens of the bundle's training and validation windows, by key, from the feature cache.
    Where the cache lost some (another machine, a trimmed cache), the training data is decoded
    again from the manifest's record and the tower fills them in: same pixels, same keys."""
    from dfx import datasets
    from dfx.photo_data import load_faces

    def lookup():
        return [[net.cache.get(k.decode()) for k in keys] for keys in key_sets]

    found = lookup()
    missing = sum(t is None for tokens in found for t in tokens)
    if missing:
        print(f"{missing} of the bundle's training windows are not in the feature cache ({net.cache.folder}); "
              "decoding its training data again", file=sys.stderr)
        try:
            train, val = datasets.splits_from_record(bundle.manifest["data"])
        except DfxError as exc:
            raise DfxError(f"{missing} windows {bundle.root} was trained on are neither in the feature cache nor decodable here: {exc}",
                           hint="run dfx adapt where the bundle was trained, or set DFX_FEATURE_CACHE to that cache") from exc
        inp = bundle.manifest["input"]
        windows = load_faces(train + val, (inp["height"], inp["width"]), inp["fit"], faces, desc="decode training data", progress=progress)
        net.features(windows.x, progress=progress, desc="features training data")
        found = lookup()
        missing = sum(t is None for tokens in found for t in tokens)
        if missing:
            raise DfxError(f"{missing} windows {bundle.root} was trained on differ from its training data as it is now",
                           hint="the data changed since training: retrain with dfx train")
    return [np.stack(tokens) for tokens in found]
