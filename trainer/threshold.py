"""`dfx threshold`: move a bundle's operating point so that a chosen share of *real* photos (a
moderation team's own users' photos, say) is flagged, without retraining and without a single fake.

The threshold `dfx train` writes is chosen on its validation split. On cameras it never saw, the
same threshold can flag far more real photos (the protocol's held-out photo sources: 13-63%,
docs/pseudo-fakes.md), and every one of those is a user wrongly accused. Scoring a few hundred
of a team's own real photos gives the threshold that flags at most the rate it can afford there.
What that costs in caught fakes is reported when DATA also holds fakes.

Photos are scored as `dfx eval` scores them (the runner `dfx scan` would pick, whole photos by
their most-fake face). The new record replaces `manifest["threshold"]` (the old one kept under
"previous"), which removes a signature (`--sign-key` signs the new one), and the chosen runner's parity with the
Keras logits is checked again at the new threshold on the bundle's parity sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dfx import datasets, metrics
from dfx.bundle import Bundle
from dfx.errors import DfxError


@dataclass(frozen=True)
class ThresholdConfig:
    bundle: str
    data: tuple[str, ...]  # labelled roots or labels files (their real images count), or plain folders of real photos
    target_fpr: float  # the share of DATA's real photos that may be flagged
    backend: str = "auto"
    precision: str | None = None
    batch_size: int = 32
    workers: int | None = None
    progress: bool = True
    faces: str = "auto"
    dry_run: bool = False  # report only; the manifest is left as it is
    sign_key: str | None = None  # PEM private key: sign the new manifest (a save drops the old signature)


def real_photos(data: tuple[str, ...]) -> list[datasets.Sample]:
    """The samples of DATA: a labelled root (real/, fake/, or the seed's known source folders)
    or labels file as `dfx eval` reads it; any other folder is real photos, every image under it
    (grouped by the folder's name)."""
    from dfx.images import walk_images

    samples: list[datasets.Sample] = []
    for root in data:
        path = Path(root)
        if not path.exists():
            raise DfxError(f"{root} does not exist")
        if datasets.has_labels(path):
            samples += datasets.discover_any(str(path))
        else:
            images, _ = walk_images([path])
            samples += [datasets.Sample(str(Path(p).resolve()), 0, path.name) for p in images]
    return sorted(set(samples), key=lambda s: s.path)


def set_threshold(config: ThresholdConfig) -> dict:
    """Score DATA, choose the threshold, write it (unless dry_run); returns the report."""
    from dfx.photo_data import face_policy
    from dfx.runtime.scan.parity_check import SAMPLE_ROLE, check
    from dfx.runtime.scan.select import choose_runner
    from dfx.trainer.evaluate import flagged_per_group, score
    from dfx.trainer.train import check_target_fpr

    check_target_fpr(config.target_fpr)
    bundle = Bundle.open(config.bundle)
    key = None
    if config.sign_key and not config.dry_run:  # a bad key fails here, before anything is written
        from dfx.signing import load_private_key

        key = load_private_key(config.sign_key)
    samples = real_photos(config.data)
    if not any(s.label == 0 for s in samples):
        raise DfxError("DATA holds no real photo", hint="pass folders of real photos, or a labelled root with real/<source>/")
    runner, choice = choose_runner(bundle, config.backend, config.precision)
    faces = face_policy(config.faces, bundle, size=bundle.input_size)
    logits, kept, errors, no_face = score(bundle, samples, runner, batch_size=config.batch_size, workers=config.workers,
                                          progress=config.progress, faces=faces)
    labels = np.array([s.label for s in kept], np.int64)
    real = logits[labels == 0]
    needed = math.ceil(1 / config.target_fpr)
    if len(real) < needed:
        raise DfxError(f"{len(real)} real photo(s) were scored; a rate of {config.target_fpr:g} needs at least {needed} "
                       "to be told from zero", hint="add real photos, or raise --target-fpr")
    old = dict(bundle.manifest["threshold"])
    new_logit = metrics.threshold_for_flag_rate(real, config.target_fpr)
    report = {
        "bundle": str(bundle.root.resolve()),
        "backend": runner.backend, "model_precision": runner.precision, "runner_reason": choice.reason,
        "real_images": int(len(real)), "fake_images": int(np.sum(labels == 1)),
        "errors": {"count": len(errors), "first": [{"path": p, "reason": r} for p, r in errors[:5]]},
        "no_face": {"count": len(no_face), "first": no_face[:5]},
        "target_fpr": config.target_fpr,
        "old": _rates(old["logit"], logits, labels), "new": _rates(new_logit, logits, labels),
        "old_threshold": old,
        "per_group": flagged_per_group(real, [s for s in kept if s.label == 0], new_logit, "false_positive_rate"),
        "written": False,
    }
    if config.dry_run:
        return report
    old.pop("previous", None)  # one step of history: the record this one replaced
    bundle.manifest["threshold"] = {
        "logit": new_logit, "method": "target_fpr", "target_fpr": config.target_fpr, "split": "real photos",
        "data": [str(Path(d).resolve()) for d in config.data], "images": int(len(real)),
        "flagged": report["new"]["real_flagged"], "backend": f"{runner.backend}-{runner.precision}", "previous": old,
    }
    bundle.save()  # drops a signature: the manifest it signed is gone
    report["written"] = True
    report["signed_by"] = bundle.sign(key) if key is not None else None
    report["parity"] = check(bundle, runner) if bundle.files_with_role(SAMPLE_ROLE) else None
    return report


def _rates(threshold: float, logits: np.ndarray, labels: np.ndarray) -> dict:
    real, fake = logits[labels == 0], logits[labels == 1]
    flagged = int(np.sum(real >= threshold))
    out = {"logit": float(threshold), "real_flagged": flagged, "false_positive_rate": flagged / len(real),
           "interval_95": list(metrics.wilson_interval(flagged, len(real)))}
    if len(fake):
        caught = int(np.sum(fake >= threshold))
        out.update(fakes_caught=caught, detection_rate=caught / len(fake))
    return out


def format_report(report: dict) -> str:
    def line(name: str, r: dict) -> str:
        text = (f"{name}: logit {r['logit']:.4g}  flags {r['real_flagged']} of {report['real_images']} real photos "
                f"({r['false_positive_rate']:.1%}, 95% {r['interval_95'][0]:.1%}-{r['interval_95'][1]:.1%})")
        if "fakes_caught" in r:
            text += f"  catches {r['fakes_caught']} of {report['fake_images']} fakes ({r['detection_rate']:.1%})"
        return text

    lines = [f"{report['backend']} {report['model_precision']} ({report['runner_reason']})",
             line(f"old threshold ({report['old_threshold'].get('method')})", report["old"]),
             line(f"new threshold (at most {report['target_fpr']:.1%} of these real photos)", report["new"])]
    lines += [f"  {g}: {r['flagged']} of {r['images']} flagged ({r['false_positive_rate']:.1%})" for g, r in report["per_group"].items()]
    if report["errors"]["count"]:
        lines.append(f"{report['errors']['count']} image(s) could not be decoded, e.g. {report['errors']['first'][0]['path']}")
    if report["no_face"]["count"]:
        lines.append(f"{report['no_face']['count']} photo(s) with no face found, not scored")
    if not report["written"]:
        lines.append("dry run: the bundle is unchanged")
    else:
        signed = (f"signed with key {report['signed_by']}" if report.get("signed_by")
                  else "a signature is removed: pass --sign-key to sign the new manifest")
        lines.append(f"written to {report['bundle']}/manifest.json (the old record is kept under threshold.previous; {signed})")
        parity = report.get("parity")
        if parity is not None:
            state = "passes" if parity["passed"] else "FAILS: " + "; ".join(parity["failures"])
            lines.append(f"parity of {parity['form']} at the new threshold on {parity['images']} images: {state}")
    return "\n".join(lines)
