"""Evaluate a bundle on labelled data: the seed's metrics (accuracy, precision, recall, F1,
specificity, AUC-ROC) plus average precision, EER, TPR at 1 % FPR and the confusion matrix,
overall and per generator/source.

Inference goes through the Runner dfx.runtime.scan.select.choose_runner picks (as `dfx scan` does),
fed by dfx.images.load_image: the same pixels as serving. Whole photos (--faces, dfx.photo_data)
are scored face by face; a photo's score is its most-fake face's logit, as in a scan row, and a
photo in which no face is found is counted, not scored.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dfx import datasets, metrics
from dfx.bundle import Bundle
from dfx.errors import DfxError
from dfx.photo_data import FacePolicy, face_policy, load_faces, photo_logits

SPLITS = ("all", "val")


@dataclass(frozen=True)
class EvalConfig:
    bundle: str  # the bundle folder
    data: str | None = None  # labelled folder or labels file; None: the bundle's training data
    split: str = "all"  # all: every image; val: the bundle's validation split of `data`
    backend: str = "auto"  # runner choice, as in `dfx scan` (auto, trt, ort-cuda, ort-cpu, openvino, keras)
    precision: str | None = None  # fp32 | fp16 | int8; None lets the backend choose
    real: tuple[str, ...] | None = None  # folder names holding real images (seed layout)
    fake: tuple[str, ...] | None = None  # folder names holding fake images (seed layout)
    batch_size: int = 32  # images per runner call
    workers: int | None = None  # decode threads (default 4)
    progress: bool = True  # progress bar on a terminal
    faces: str = "auto"  # whole photos: off | auto | all (dfx.photo_data); the bundle's own face finder when it has one


def select_samples(bundle: Bundle, config: EvalConfig) -> list[datasets.Sample]:
    """The images to score. --split val rebuilds the training split (same fraction and seed)."""
    record = bundle.manifest.get("data", {})
    if config.data is None:
        if not record.get("root"):
            raise DfxError("no DATA given and the bundle records no training data", hint="pass DATA")
        root, real, fake = record["root"], record.get("real"), record.get("fake")
    else:
        root = config.data
        real = list(config.real) if config.real else None
        fake = list(config.fake) if config.fake else None
        same_root = record.get("root") and Path(root).resolve() == Path(record["root"]).resolve()
        if same_root and real is None and fake is None:
            real, fake = record.get("real"), record.get("fake")
    samples = datasets.discover_any(root, real, fake)
    if config.split == "val":
        _, samples = datasets.split(samples, record.get("val_fraction", 0.2), record.get("seed", 0))
    elif config.split != "all":
        raise DfxError(f"--split must be one of {', '.join(SPLITS)}, not {config.split!r}")
    return samples


def score(bundle: Bundle, samples: list[datasets.Sample], runner, *, batch_size: int = 32, workers: int | None = None,
          progress: bool = True, faces: FacePolicy | None = None):
    """(logits of the photos that were scored, their samples, [(path, reason)] for those that could
    not be decoded, [paths] of photos with no face). A photo's logit is its most-fake window's
    (dfx.photo_data.photo_logits); with `faces` None or off every image is one window."""
    from tqdm import tqdm

    size, fit = bundle.input_size, bundle.fit
    logits: list[np.ndarray] = []
    kept: list[datasets.Sample] = []
    errors: list[tuple[str, str]] = []
    no_face: list[str] = []
    bar = tqdm(total=len(samples), desc="eval", unit="img", disable=None if progress else True)
    with runner:
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            found = load_faces(chunk, size, fit, faces, workers=workers, progress=False)
            errors += found.errors
            no_face += found.no_face
            if len(found.x):
                window_logits = np.concatenate([runner.infer(found.x[i : i + batch_size]) for i in range(0, len(found.x), batch_size)])
                per_photo = photo_logits(window_logits, found.photo, len(chunk))
                scored = np.flatnonzero(~np.isnan(per_photo))
                logits.append(per_photo[scored].astype(np.float32))
                kept += [chunk[i] for i in scored]
            bar.update(len(chunk))
    bar.close()
    return (np.concatenate(logits) if logits else np.zeros((0,), np.float32)), kept, errors, no_face


def evaluate(config: EvalConfig) -> dict:
    """The report: overall metrics at the bundle's threshold, per_generator, errors, and the
    ROC curve points (under "roc") for plotting."""
    bundle = Bundle.open(config.bundle)
    samples = select_samples(bundle, config)
    from dfx.runtime.scan.select import choose_runner

    faces = face_policy(config.faces, bundle, size=bundle.input_size)  # the finder is made only if a photo needs it
    runner, choice = choose_runner(bundle, config.backend, config.precision)
    reason = choice.reason
    logits, kept, errors, no_face = score(bundle, samples, runner, batch_size=config.batch_size, workers=config.workers,
                                          progress=config.progress, faces=faces)
    if errors:
        print(f"{len(errors)} image(s) could not be decoded, e.g. {errors[0][0]}: {errors[0][1]}", file=sys.stderr)
    if no_face:
        print(f"{len(no_face)} photo(s) with no face found, not scored, e.g. {no_face[0]}", file=sys.stderr)
    labels = np.array([s.label for s in kept], np.int64)
    if not len(labels):
        raise DfxError("no image of DATA could be decoded" + (" or had a face" if no_face else ""), hint="check DATA, --split and --faces")
    threshold = bundle.threshold
    face_record = {"mode": config.faces, "no_face": {"count": len(no_face), "first": no_face[:5]}}
    if set(labels.tolist()) != {0, 1}:
        return {**one_class_report(bundle, config, kept, labels, logits, errors, runner, reason), "faces": face_record}
    report = metrics.summarize(labels, logits, threshold)
    fpr, tpr, _ = metrics.roc_curve(labels, logits)
    report.update(
        {
            "per_generator": metrics.per_group(labels, logits, [s.group for s in kept], threshold),
            # calibration of `probability` (the bundle's Platt fit): 0 = probabilities match frequencies
            "ece": metrics.expected_calibration_error(labels, [bundle.probability(float(z)) for z in logits]),
            "threshold_method": bundle.manifest["threshold"].get("method"),
            "split": config.split,
            "data": str(Path(config.data).resolve()) if config.data else bundle.manifest.get("data", {}).get("root"),
            "bundle": str(bundle.root.resolve()),
            "backend": getattr(runner, "backend", "?"),
            "model_precision": getattr(runner, "precision", "?"),  # fp32/fp16/int8; "precision" is the metric
            "runner_reason": reason,
            "errors": {"count": len(errors), "first": [{"path": p, "reason": r} for p, r in errors[:5]]},
            "faces": face_record,  # photos scored by their most-fake face; no_face: photos not scored
            "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()},
        }
    )
    return report


def one_class_report(bundle: Bundle, config: EvalConfig, kept, labels, logits, errors, runner, reason: str) -> dict:
    """Real photos only ("how many of our users' photos would be flagged?") or fakes only: the
    rate at the bundle's threshold with a 95% Wilson interval. AUC, AP and EER rank fakes against
    reals, so with one class they are undefined and reported as such, not as a number."""
    label = int(labels[0])
    flagged = int(np.sum(logits >= bundle.threshold))
    low, high = metrics.wilson_interval(flagged, len(labels))
    name = "false_positive_rate" if label == 0 else "detection_rate"
    probabilities = np.array([bundle.probability(float(z)) for z in logits])
    return {
        "one_class": "real" if label == 0 else "fake",
        "images": len(labels),
        "flagged_fake": flagged,
        name: flagged / len(labels),
        "interval_95": [low, high],
        "mean_probability": float(probabilities.mean()),
        "undefined": "AUC, average precision and EER need both classes (they rank fakes above reals)",
        "per_group": flagged_per_group(logits, kept, bundle.threshold, name),
        "threshold": bundle.threshold,
        "split": config.split,
        "data": str(Path(config.data).resolve()) if config.data else bundle.manifest.get("data", {}).get("root"),
        "bundle": str(bundle.root.resolve()),
        "backend": runner.backend,
        "model_precision": runner.precision,
        "runner_reason": reason,
        "errors": {"count": len(errors), "first": [{"path": p, "reason": r} for p, r in errors[:5]]},
    }


def flagged_per_group(logits: np.ndarray, samples, threshold: float, rate_name: str) -> dict:
    """{group: images, flagged (logit >= threshold), the rate under `rate_name`, its 95% Wilson
    interval} for one class's scored samples (`logits[i]` belongs to `samples[i]`)."""
    out = {}
    for group in sorted({s.group for s in samples}):
        members = np.array([s.group == group for s in samples])
        n, k = int(members.sum()), int(np.sum(logits[members] >= threshold))
        out[group] = {"images": n, "flagged": k, rate_name: k / n, "interval_95": metrics.wilson_interval(k, n)}
    return out


def format_report(report: dict) -> str:
    """A human-readable table of the report."""
    if "one_class" in report:
        name = "false-positive rate (real photos flagged as fake)" if report["one_class"] == "real" else "detection rate (fakes caught)"
        key = "false_positive_rate" if report["one_class"] == "real" else "detection_rate"
        low, high = report["interval_95"]
        lines = [f"{report['images']} {report['one_class']} images only ({report['split']} split of {report['data']}), "
                 f"threshold {report['threshold']:.4g} (logit)",
                 f"{name}: {report[key]:.2%} ({report['flagged_fake']} of {report['images']}), 95% interval {low:.2%} .. {high:.2%}",
                 f"not reported: {report['undefined']}"]
        for group, r in report["per_group"].items():
            lines.append(f"  {group:<20}{r['images']:>6}  {r[key]:.2%}  ({r['interval_95'][0]:.2%} .. {r['interval_95'][1]:.2%})")
        if report["errors"]["count"]:
            lines.append(f"unreadable: {report['errors']['count']} image(s)")
        lines += _no_face_lines(report)
        return "\n".join(lines)
    lines = [
        f"{report['images']} images ({report['split']} split of {report['data']}), backend {report['backend']} {report['model_precision']}",
        f"threshold {report['threshold']:.4g} (logit, {report['threshold_method']})",
        "",
        f"{'group':<22}{'n':>6}{'acc':>8}{'prec':>8}{'recall':>8}{'f1':>8}{'spec':>8}{'auc':>8}{'ap':>8}{'eer':>8}{'tpr@1%':>8}",
    ]

    def row(name: str, r: dict, n: int) -> str:
        return (
            f"{name:<22}{n:>6}{r['accuracy']:>8.4f}{r['precision']:>8.4f}{r['recall']:>8.4f}{r['f1']:>8.4f}"
            f"{r['specificity']:>8.4f}{r['auc']:>8.4f}{r['average_precision']:>8.4f}{r['eer']:>8.4f}{r['tpr_at_1pct_fpr']:>8.4f}"
        )

    lines.append(row("all", report, report["images"]))
    for name, r in report["per_generator"].items():
        lines.append(row(f"{r['group_label']}/{name}", r, r["group_images"]) + f"   (group accuracy {r['group_accuracy']:.4f})")
    c = report["confusion"]
    lines += ["", f"confusion: tp {c['tp']}  fp {c['fp']}  tn {c['tn']}  fn {c['fn']}"]
    if report.get("ece") is not None:
        lines.append(f"expected calibration error of `probability`: {report['ece']:.4f}")
    if report["errors"]["count"]:
        lines.append(f"unreadable: {report['errors']['count']} image(s)")
        lines += [f"  {e['path']}: {e['reason']}" for e in report["errors"]["first"]]
    lines += _no_face_lines(report)
    return "\n".join(lines)


def _no_face_lines(report: dict) -> list[str]:
    count = ((report.get("faces") or {}).get("no_face") or {}).get("count", 0)
    if not count:
        return []
    return [f"no face found: {count} photo(s), not scored (--faces {report['faces']['mode']})"]


def plot_roc(report: dict, path: str | Path) -> None:
    """Write the ROC curve (with AUC and the operating point) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(report["roc"]["fpr"], report["roc"]["tpr"], label=f"ROC (AUC {report['auc']:.4f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.plot(1 - report["specificity"], report["recall"], "o", label=f"threshold {report['threshold']:.3g}")
    ax.set(xlabel="false-positive rate (real called fake)", ylabel="true-positive rate (fake caught)", title="dfx eval")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
