"""The training loop: seed CNN, Adam, binary cross-entropy from logits, batch 128, early stopping
on validation AUC that restores the best weights, a checkpoint of the best epoch, class
weights, and a guard against the seed's collapse.

Why the guard (the seed's collapse): the seed CNN has no normalisation layers, ReLU
activations and a global-average-pooled head. Measured on ../shared/data/faces, at 128 px
(resize, Adam 1e-3, batch 32) it reached validation AUC 0.997 in 6 minutes, but at 256 px
(centre crop, same settings) it sat at AUC 0.5 with a constant output for 8 epochs. The first
large Adam steps push every ReLU of a layer below zero ("dying ReLUs"); from then on the
pooled features are all zero, the logit is the bias alone, no gradient reaches the
convolutions and the network never recovers. With all-positive [0, 1] inputs every weight of a
first-layer filter gets a gradient of the same sign, which makes that push easy. So:

1. the model rescales its input to [-1, 1] (dfx.trainer.models.seed_cnn, centre=True): the
   layers are the seed's, only the rescaling constant differs;
2. the learning rate (the seed's 1e-3 at its peak) warms up linearly from zero over the first
   epochs, then decays (cosine), so the first steps are small;
3. each gradient's global norm is clipped (1.0), so one bad batch cannot take a huge step;
4. the validation logits are checked after each of the first `guard_epochs` epochs and, when
   they are (nearly) constant, diverged or not finite (a dead network), training restarts from
   a fresh initialisation with a new seed and a lower learning rate, up to `max_restarts` times.

Every attempt is recorded in the manifest and in the history, so a restart is never silent.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dfx import datasets, metrics
from dfx.bundle import Bundle, tool_versions
from dfx.errors import DfxError, require
from dfx.images import FIT_POLICIES
from dfx.photo_data import face_policy
from dfx.trainer.models import DEFAULT_CNN
from dfx.trainer.probe import DEFAULT_BACKBONE
from dfx.trainer.vit import DEFAULT_HEAD

MODEL_FILE = "model.keras"
FROZEN_BACKBONE = ("clip_vit",)  # architectures trained as a head on a frozen tower's cached tokens (dfx.trainer.probe)
HISTORY_JSON = "history.json"
HISTORY_PNG = "history.png"
LAUNDER_TRAINING = (None, "copy", "all")  # TrainConfig.launder_training

# A live network's logits differ between images; a dead one returns its bias for every image
# (spread 0, or float noise around it) and a nearly dead one (most ReLUs dead) a spread far
# below a live network's. Measured on the synthetic set: a spread of 0.1-0.2 after the first
# epoch, growing to ~5 when trained; so below 1e-3 the output is as good as constant.
COLLAPSE_STD = 1e-3
# A trained detector's logits stay within tens; beyond this the weights have blown up.
DIVERGED_LOGIT = 1e4


@dataclass(frozen=True)
class TrainConfig:
    data: str | tuple[str, ...]  # one labelled folder or labels file, or several pooled (see dfx.datasets.discover)
    out: str  # the bundle folder to write
    size: int = 96  # input height = width; small enough for 2-core training, above every source's minimum side
    # resize (the default): the whole face resized to the window, which held out
    # generators far better than a native-resolution crop (docs/pseudo-fakes.md); crop keeps
    # native-resolution traces, for data whose generators and cameras the training set covers.
    fit: str = "resize"
    real: tuple[str, ...] | None = None  # folder names that hold real images (seed layout)
    fake: tuple[str, ...] | None = None  # folder names that hold fake images (seed layout)
    val_fraction: float = 0.2  # held out, stratified by label and generator
    seed: int = 0  # split, initialisation, shuffling and augmentation all follow it
    epochs: int = 30  # an upper bound: early stopping usually ends sooner
    batch_size: int = 128  # the seed's batch size
    learning_rate: float = 1e-3  # peak Adam rate after warm-up (the seed's rate; safe with centred inputs)
    warmup_epochs: float = 2.0  # linear warm-up from 0, so the first steps cannot kill the ReLUs
    clipnorm: float = 1.0  # global gradient-norm clip: no single batch takes a huge step
    patience: int = 6  # epochs without a better val AUC before stopping (best weights restored)
    augment: str = "generalize"  # none | seed | robust | generalize (see dfx.trainer.augment)
    target_fpr: float | None = None  # None: threshold at best balanced accuracy; else at this FPR
    guard_epochs: int = 2  # epochs after which a constant output counts as a dead start
    max_restarts: int = 3  # fresh starts allowed after a dead start
    restart_lr_factor: float = 0.3  # each restart multiplies the learning rate by this
    architecture: str = DEFAULT_CNN  # see dfx.trainer.models.ARCHITECTURES; the CLI's default is DEFAULT_ARCHITECTURE
    # Training images are stored at this side (native-resolution centre crop) and each step takes
    # a random `size` window of them; None: stored at `size`, no random window.
    train_canvas: int | None = 128
    # Each epoch draws images so that each class is half and each generator / photo source an
    # equal share of its class (dfx.trainer.data.group_shares); False: plain shuffled epochs
    # with class weights (the seed's recipe).
    balance: bool = True
    epoch_size: int | None = None  # images per balanced epoch; None: the training split's size
    # Pseudo-fakes (dfx data reconstruct) drawn with their real photo in the same batch, so the
    # loss compares the two sides of each pair (needs balance).
    pairs: bool = False
    # How the pseudo-fake decoders share the fake half: "per-decoder" (one group share each, like
    # a generator) or "one-generator" (together one generator's share). dfx.trainer.data.group_shares
    pseudo_share: str = "per-decoder"
    # Scale jitter: every training image is also stored resized by a random factor in
    # [scale_jitter, 1) (per image, seeded; applied at native resolution before the pixel path,
    # like a re-shared upload), and the balanced draws pick either copy. None: off.
    scale_jitter: float | None = None
    # Framing jitter: every training image is also stored cut to a random square around its face,
    # from the face finder's box to the whole short side (per image, seeded; trainer.alterations
    # .reframed), so that how a source frames its faces stops telling real from fake.
    framing_jitter: bool = False
    # Laundering in training (trainer.alterations.launder: long side to 256-512 px, JPEG q70-90,
    # both classes): "copy" adds a laundered copy of every training image, "all" trains on the
    # laundered images only, so no source's size, format or compression is left to learn. None: off.
    launder_training: str | None = None
    # Whole photos (dfx.photo_data): off scores every image whole; auto finds faces in images over
    # 1024 px (face-crop folders decode exactly as with off); all searches every image. Each face
    # takes its photo's label; the mode is recorded so export's calibration decodes alike.
    faces: str = "auto"
    # Frozen-backbone architectures (clip_vit): which tower (dfx.trainer.probe.BACKBONES) and
    # which head on its blocks' CLS tokens (dfx.trainer.vit.HEADS; `head_blocks` for "blocks").
    backbone: str = DEFAULT_BACKBONE
    head: str = DEFAULT_HEAD
    head_blocks: tuple[int, ...] | None = None
    overwrite: bool = False  # replace an existing bundle at `out`
    progress: bool = True  # progress bars (hidden anyway when not on a terminal)
    workers: int | None = None  # decode threads (default 4)


class TrainingError(DfxError):
    """Training could not produce a usable model."""


def collapse_reason(logits: np.ndarray) -> str | None:
    """Why these validation logits look like a dead network, or None when they look alive."""
    logits = np.asarray(logits, dtype=np.float64)
    if not np.all(np.isfinite(logits)):
        return "the model outputs NaN or infinity"
    peak = float(np.abs(logits).max(initial=0.0))
    if peak > DIVERGED_LOGIT:
        return f"the model's outputs diverged (|logit| up to {peak:.3g})"
    spread = float(logits.std())
    if spread < COLLAPSE_STD:
        return f"the model gives (nearly) the same output for every image (logit {logits.mean():.4g}, spread {spread:.2g})"
    return None


def check_target_fpr(rate: float | None) -> None:
    """--target-fpr (dfx train, dfx protocol, dfx threshold): None, or a rate strictly between 0 and 1."""
    if rate is not None and not 0 < rate < 1:
        raise DfxError("--target-fpr must be between 0 and 1 (for example 0.01)")


def choose_threshold(labels: np.ndarray, logits: np.ndarray, target_fpr: float | None = None) -> dict:
    """The manifest's threshold record, chosen on validation scores: best balanced accuracy, or
    the lowest logit threshold that keeps the false-positive rate on real images <= target_fpr."""
    if target_fpr is None:
        return {"logit": metrics.threshold_balanced_accuracy(labels, logits), "method": "balanced_accuracy", "split": "val"}
    return {"logit": metrics.threshold_at_fpr(labels, logits, target_fpr), "method": "target_fpr", "target_fpr": target_fpr, "split": "val"}


def calibrate(labels: np.ndarray, logits: np.ndarray) -> dict:
    """Platt scaling fitted on the validation logits, so a result's `probability` means a
    probability; with the expected calibration error before and after (10 bins)."""
    scale, offset = metrics.fit_platt(labels, logits)
    raw = 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))
    fitted = 1.0 / (1.0 + np.exp(-(scale * np.asarray(logits, np.float64) + offset)))
    return {
        "method": "platt", "scale": scale, "offset": offset, "split": "val",
        "ece_sigmoid": metrics.expected_calibration_error(labels, raw),
        "ece": metrics.expected_calibration_error(labels, fitted),
        "nll_sigmoid": bce_from_logits(labels, logits),  # what the fit minimises, before and after
        "nll": bce_from_logits(labels, scale * np.asarray(logits, np.float64) + offset),
    }


def bce_from_logits(labels: np.ndarray, logits: np.ndarray) -> float:
    """Mean binary cross-entropy, computed stably from logits."""
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.float64)
    return float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))


def train(config: TrainConfig) -> Bundle:
    """Train on `config.data`, write a bundle to `config.out`, return it (opened and verified)."""
    require("tensorflow", "train", "dfx train")
    from dfx.trainer import data as data_mod

    check_config(config)
    started = time.time()
    size = (config.size, config.size)
    real = list(config.real) if config.real else None
    fake = list(config.fake) if config.fake else None
    samples = datasets.discover(config.data, real, fake)
    train_samples, val_samples = datasets.split(samples, config.val_fraction, config.seed)
    bundle = Bundle.create(config.out, input_size=size, fit=config.fit, architecture=config.architecture, overwrite=config.overwrite)
    canvas = (config.train_canvas, config.train_canvas) if config.train_canvas else size
    # Split by photo above, decoded face by face here: a photo's faces always share a split.
    faces = face_policy(config.faces, size=config.size)
    if config.launder_training == "all":
        train_arrays = data_mod.Arrays.of(data_mod.laundered_copies(train_samples, canvas[0], config.fit, config.seed, faces=faces,
                                                                    workers=config.workers, progress=config.progress))
    else:
        train_arrays = data_mod.load_arrays(train_samples, canvas, config.fit, faces=faces, workers=config.workers,
                                            progress=config.progress, desc="decode train")
    if config.launder_training == "copy":
        train_arrays = data_mod.with_laundered(train_arrays, canvas, config.fit, config.seed, faces=faces,
                                               workers=config.workers, progress=config.progress)
    if config.scale_jitter is not None:
        train_arrays = data_mod.with_rescaled(train_arrays, canvas, config.fit, config.scale_jitter, config.seed,
                                              faces=faces, workers=config.workers, progress=config.progress)
    if config.framing_jitter:
        train_arrays = data_mod.with_reframed(train_arrays, canvas, config.fit, config.seed, data_mod.framing_finder(),
                                              faces=faces, workers=config.workers, progress=config.progress)
    val_arrays = data_mod.load_arrays(val_samples, size, config.fit, faces=faces, workers=config.workers,
                                      progress=config.progress, desc="decode val")
    return fit_arrays(config, bundle, train_arrays, val_arrays, started=started)


def check_config(config: TrainConfig) -> None:
    from dfx.trainer import augment as augment_mod
    from dfx.trainer.data import PSEUDO_SHARES
    from dfx.trainer.models import ARCHITECTURES

    if config.fit not in FIT_POLICIES:
        raise DfxError(f"--fit must be resize or crop, not {config.fit!r}")
    face_policy(config.faces)  # refuses an unknown --faces
    if config.augment not in augment_mod.AUGMENT_MODES:
        raise DfxError(f"--augment must be one of {', '.join(augment_mod.AUGMENT_MODES)}")
    if config.architecture not in ARCHITECTURES:
        raise DfxError(f"--architecture must be one of {', '.join(ARCHITECTURES)}, not {config.architecture!r}")
    if config.architecture in FROZEN_BACKBONE:
        _check_frozen(config)
    check_target_fpr(config.target_fpr)
    if config.train_canvas is not None and config.train_canvas < config.size:
        raise DfxError(f"--train-canvas ({config.train_canvas}) must be at least --size ({config.size})")
    if config.pairs and not config.balance:
        raise DfxError("--pairs draws pairs into balanced epochs; it cannot be combined with --no-balance")
    if config.scale_jitter is not None and not 0 < config.scale_jitter < 1:
        raise DfxError(f"--scale-jitter must be between 0 and 1 (e.g. 0.5), not {config.scale_jitter}")
    if config.pseudo_share not in PSEUDO_SHARES:
        raise DfxError(f"--pseudo-share must be one of {', '.join(PSEUDO_SHARES)}, not {config.pseudo_share!r}")
    if config.launder_training not in LAUNDER_TRAINING:
        raise DfxError(f"--launder-training must be {' or '.join(filter(None, LAUNDER_TRAINING))}, not {config.launder_training!r}")
    if config.launder_training == "all" and (config.scale_jitter is not None or config.framing_jitter):
        option = "--scale-jitter" if config.scale_jitter is not None else "--framing-jitter"
        raise DfxError(f"--launder-training all trains on laundered images only; {option} would add copies of the originals",
                       hint=f"use --launder-training copy with {option}, or drop one")
    if config.architecture == "npr_cnn" and config.size % 2:
        raise DfxError(f"npr_cnn needs an even --size, not {config.size}")


# The CNN loop's settings, which a head fitted on cached tokens does not use (flag -> field).
CNN_LOOP_FLAGS = {"--epochs": "epochs", "--batch-size": "batch_size", "--lr": "learning_rate",
                  "--warmup-epochs": "warmup_epochs", "--patience": "patience"}


def _check_frozen(config: TrainConfig) -> None:
    """What a head on a frozen tower's cached tokens cannot do, refused rather than ignored."""
    from dfx.trainer.probe import BACKBONES
    from dfx.trainer.vit import HEADS

    if config.backbone not in BACKBONES:
        raise DfxError(f"--backbone must be one of {', '.join(BACKBONES)}, not {config.backbone!r}")
    if config.head not in HEADS:
        raise DfxError(f"--head must be one of {', '.join(HEADS)}, not {config.head!r}")
    depth = BACKBONES[config.backbone].layers
    if config.head_blocks is not None and (config.head != "blocks" or not all(0 <= b < depth for b in config.head_blocks)):
        raise DfxError(f"--head-blocks goes with --head blocks and names blocks 0-{depth - 1}")
    if config.train_canvas is not None and config.train_canvas != config.size:
        raise DfxError(f"{config.architecture} trains on cached tokens of whole windows: no random windows (--train-canvas)")
    if config.augment != "none":
        raise DfxError(f"{config.architecture} trains on cached tokens, so augmentation comes as cached copies, not --augment {config.augment}",
                       hint="use --augment none with --launder-training copy, --scale-jitter or --framing-jitter")
    if config.pairs:
        raise DfxError(f"--pairs draws batches of images; {config.architecture} fits its head on all tokens at once")
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    changed = [flag for flag, field in CNN_LOOP_FLAGS.items() if getattr(config, field) != defaults[field]]
    if changed:
        raise DfxError(f"{', '.join(changed)} set(s) the CNN training loop; {config.architecture}'s head has its own fixed "
                       "schedule (trainer/probe.py HeadConfig: full-batch Adam, 60 epochs)",
                       hint="drop them, or train a CNN (--architecture seed_cnn)")


def fit_arrays(config: TrainConfig, bundle: Bundle, train_arrays, val_arrays, *, started: float | None = None) -> Bundle:
    """Train on decoded arrays (training images at the canvas size, validation at the input
    size) and finish `bundle`. `dfx train` and the leave-one-out protocol both come here."""
    import keras

    from dfx.trainer import augment as augment_mod
    from dfx.trainer import data as data_mod
    from dfx.trainer import models

    started = time.time() if started is None else started
    if config.architecture in FROZEN_BACKBONE:
        from dfx.trainer.probe import fit_probe

        _report_skipped(config, train_arrays, val_arrays)
        return fit_probe(config, bundle, train_arrays, val_arrays, started=started)
    size = (config.size, config.size)
    _report_skipped(config, train_arrays, val_arrays)
    for name, arrays in (("training", train_arrays), ("validation", val_arrays)):
        if set(arrays.y.tolist()) != {0, 1}:
            raise TrainingError(f"the {name} split needs real and fake images that decode", hint="add images or lower --val-fraction")

    epoch_size = config.epoch_size or len(train_arrays.y)
    steps_per_epoch = max(1, math.ceil(epoch_size / config.batch_size))
    canvas = tuple(train_arrays.x.shape[1:3])
    augment = augment_mod.make_augment(config.augment, size, canvas)
    checkpoint = bundle.root / MODEL_FILE
    attempts: list[dict] = []
    learning_rate = config.learning_rate
    Monitor = _make_monitor_class()
    monitor = None
    interrupted = False
    pairs_together = None
    for attempt in range(config.max_restarts + 1):
        seed = config.seed + 1000 * attempt
        keras.utils.set_random_seed(seed)
        model = models.build(config.architecture, size, seed=seed)
        schedule = _schedule(learning_rate, config.warmup_epochs, config.epochs, steps_per_epoch)
        model.compile(
            optimizer=keras.optimizers.Adam(schedule, clipnorm=config.clipnorm),
            loss=keras.losses.BinaryCrossentropy(from_logits=True),
        )
        monitor = Monitor(val_arrays, config, checkpoint, attempt)
        record = {"attempt": attempt, "seed": seed, "learning_rate": learning_rate, "collapsed": False, "epochs": monitor.epochs}
        attempts.append(record)
        print(f"attempt {attempt + 1}: {config.architecture}, seed {seed}, peak learning rate {learning_rate:.3g}, "
              f"{len(train_arrays.y)} train / {len(val_arrays.y)} val images at {config.size} px ({config.fit})", file=sys.stderr)
        if config.balance:
            indices = data_mod.balanced_indices(train_arrays.samples, config.epochs, steps_per_epoch * config.batch_size, seed,
                                                 config.pseudo_share)
            if config.pairs:
                indices = data_mod.paired_indices(train_arrays.samples, indices, config.batch_size, train_arrays.variant)
                pairs_together = data_mod.pair_share(train_arrays.samples, indices, config.batch_size, train_arrays.variant)
            dataset = data_mod.balanced_dataset(train_arrays, indices, config.batch_size, augment)
        else:
            dataset = data_mod.train_dataset(train_arrays, config.batch_size, augment, seed)
        try:
            model.fit(dataset, epochs=config.epochs, steps_per_epoch=steps_per_epoch if config.balance else None,
                      callbacks=[monitor], shuffle=False, verbose=_verbosity(config.progress))
        except KeyboardInterrupt:
            if monitor.best_weights is None:
                raise
            # Ctrl-C ends training, not the run: the bundle is written from the best epoch so far.
            interrupted = True
            print(f"\ninterrupted: writing the bundle from the best epoch so far ({monitor.best_epoch})", file=sys.stderr)
            break
        if monitor.collapse is None:
            break
        record["collapsed"] = True
        record["reason"] = monitor.collapse
        learning_rate *= config.restart_lr_factor
        print(f"dead start detected after epoch {monitor.epochs[-1]['epoch']}: {monitor.collapse}; "
              f"restarting with a new seed and learning rate {learning_rate:.3g}", file=sys.stderr)
    assert monitor is not None
    if monitor.collapse is not None or monitor.best_weights is None:
        raise TrainingError(
            f"training collapsed in all {len(attempts)} attempts ({monitor.collapse})",
            hint="lower --lr, raise --warmup-epochs, or check that the data holds both classes",
        )
    model.set_weights(monitor.best_weights)  # restore the best epoch (early stopping)
    _save_model(model, checkpoint)

    return write_bundle(
        bundle, model, config, train_arrays, val_arrays, attempts,
        best_epoch=monitor.best_epoch, best_auc=monitor.best_auc, interrupted=interrupted, seconds=time.time() - started,
        pairs_together=pairs_together,
    )


def _report_skipped(config: TrainConfig, train_arrays, val_arrays) -> None:
    errors = train_arrays.errors + val_arrays.errors
    if errors:
        print(f"skipped {len(errors)} unreadable image(s), e.g. {errors[0][0]}: {errors[0][1]}", file=sys.stderr)
    no_face = train_arrays.no_face + val_arrays.no_face
    if no_face:
        print(f"skipped {len(no_face)} photo(s) in which no face was found (--faces {config.faces}), e.g. {no_face[0]}", file=sys.stderr)


def write_bundle(bundle: Bundle, model, config: TrainConfig, train_arrays, val_arrays, attempts: list[dict], *,
                 best_epoch: int | None, best_auc: float, interrupted: bool, seconds: float,
                 pairs_together: float | None = None, logits: np.ndarray | None = None) -> Bundle:
    """Finish a bundle from a trained model: threshold and metrics on the validation split,
    history JSON + plot, data record, training record, hashes. Expects model.keras saved.
    `logits`: the validation logits when already computed (a frozen backbone's head on cached tokens)."""
    from dfx.trainer import data as data_mod
    from dfx.trainer.history import save_history

    real = list(config.real) if config.real else None
    fake = list(config.fake) if config.fake else None
    errors = train_arrays.errors + val_arrays.errors
    logits = data_mod.predict_logits(model, val_arrays.x) if logits is None else logits
    y = val_arrays.y
    threshold = choose_threshold(y, logits, config.target_fpr)
    groups = [s.group for s in val_arrays.samples]
    val_metrics = metrics.summarize(y, logits, threshold["logit"])
    threshold["val_fpr"] = 1.0 - val_metrics["specificity"]
    threshold["val_tpr"] = val_metrics["recall"]

    history = {
        "best_epoch": best_epoch,
        "best_val_auc": best_auc,
        "attempts": attempts,
    }
    save_history(history, bundle.root / HISTORY_JSON, bundle.root / HISTORY_PNG)

    m = bundle.manifest
    m["threshold"] = threshold
    m["data"] = {
        **datasets.data_record(config.data, real, fake, config.val_fraction, config.seed),
        "train": datasets.summary(train_arrays.samples),
        "val": datasets.summary(val_arrays.samples),
        "unreadable": {"count": len(errors), "first": [{"path": p, "reason": r} for p, r in errors[:5]]},
        # how photos became windows; dfx export decodes calibration and parity images the same way
        "faces": {**face_policy(config.faces, size=config.size).record(), "train": _face_counts(train_arrays), "val": _face_counts(val_arrays)},
    }
    m["metrics"] = {"val": val_metrics, "per_generator": metrics.per_group(y, logits, groups, threshold["logit"])}
    m["calibration"] = calibrate(y, logits)
    m["training"] = {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()},
        "optimizer": "adam",
        "loss": "binary_crossentropy_from_logits",
        "class_weights": None if config.balance else {name: w for name, w in zip(("real", "fake"), data_mod.class_weights(train_arrays.y).values())},
        "balance": data_mod.group_shares(train_arrays.samples, config.pseudo_share) if config.balance else None,  # share of each epoch per group
        # how batches were drawn: "balanced" (equal shares per group), "balanced+pairs" (pseudo-fakes
        # beside their real photo), or "shuffled" (class weights)
        "sampling": ("balanced+pairs" if config.pairs else "balanced") if config.balance else "shuffled",
        "pseudo_share": config.pseudo_share,
        "paired_fakes": sum(1 for s in train_arrays.samples if s.source),  # training pseudo-fakes with a known photo
        "pairs_in_same_batch": pairs_together,  # share of drawn pseudo-fakes whose photo shared the batch
        "scale_jitter": config.scale_jitter,
        "framing_jitter": config.framing_jitter,
        "launder_training": config.launder_training,
        "attempts": [{k: v for k, v in a.items() if k != "epochs"} | {"epochs_run": len(a["epochs"])} for a in attempts],
        "best_epoch": best_epoch,
        "interrupted": interrupted,  # stopped with Ctrl-C before early stopping or the last epoch
        "seconds": round(seconds, 1),
    }
    tools = tool_versions("tensorflow", "keras", "numpy", "pillow")
    bundle.add_file(MODEL_FILE, role="keras", tools=tools)
    bundle.add_file(HISTORY_JSON, role="history")
    bundle.add_file(HISTORY_PNG, role="history", tools=tool_versions("matplotlib"))
    m["tools"] = tools
    bundle.save()
    return Bundle.open(bundle.root)


def _face_counts(arrays) -> dict:
    """Photos, windows (one per face, or per image scored whole), no-face photos of one split."""
    photos = {s.path for s in arrays.samples}
    return {"photos": len(photos), "windows": len(arrays.samples), "searched": arrays.searched,
            "no_face": {"count": len(arrays.no_face), "first": arrays.no_face[:5]}}


def _schedule(peak: float, warmup_epochs: float, epochs: int, steps_per_epoch: int):
    """Linear warm-up from ~0 to `peak`, then cosine decay to 10 % of it by the last epoch."""
    import keras

    warmup = max(1, int(round(warmup_epochs * steps_per_epoch)))
    total = max(epochs * steps_per_epoch, warmup + 1)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=peak * 1e-3, decay_steps=total - warmup, alpha=0.1, warmup_target=peak, warmup_steps=warmup
    )


def _verbosity(progress: bool) -> int:
    """Keras' own per-epoch progress bar on a terminal; one line per epoch in logs."""
    if not progress:
        return 0
    return 1 if sys.stdout.isatty() else 2


def _save_model(model, path: Path) -> None:
    """Save weights and architecture without optimizer state (smaller; loads with compile=False)."""
    import keras

    # Not clone_model: in Keras 3 the clone shares the compiled optimizer, which save() would
    # store (3x the file). A model rebuilt from its config was never compiled.
    clean = keras.Model.from_config(model.get_config())
    clean.set_weights(model.get_weights())
    clean.save(path)


def _make_monitor_class():
    import keras

    from dfx.trainer.data import predict_logits

    class Monitor(keras.callbacks.Callback):
        """Per epoch: validation AUC and loss on the exact pixels (not a streaming estimate),
        the dead-start guard, the best-AUC checkpoint, and early stopping with patience."""

        def __init__(self, val, config: TrainConfig, checkpoint: Path, attempt: int):
            super().__init__()
            self.val = val
            self.config = config
            self.checkpoint = checkpoint
            self.attempt = attempt
            self.epochs: list[dict] = []
            self.best_auc = -1.0
            self.best_loss = math.inf
            self.best_epoch: int | None = None
            self.best_weights = None
            self.collapse: str | None = None
            self._started = time.time()

        def on_epoch_begin(self, epoch, logs=None):
            self._started = time.time()

        def on_epoch_end(self, epoch, logs=None):
            # float64: a diverging float32 network's logits (~1e30) overflow when squared for std
            logits = np.asarray(predict_logits(self.model, self.val.x), np.float64)
            reason = collapse_reason(logits)
            finite = np.isfinite(logits).all()
            val_auc = metrics.auc(self.val.y, logits) if finite else 0.5
            val_loss = bce_from_logits(self.val.y, logits) if finite else math.inf
            lr = self.model.optimizer.learning_rate
            row = {
                "epoch": epoch + 1,
                "loss": float((logs or {}).get("loss", math.nan)),
                "val_loss": val_loss,
                "val_auc": float(val_auc),
                "val_logit_std": float(np.std(logits)) if finite else math.nan,
                "lr": float(np.asarray(lr)),
                "seconds": round(time.time() - self._started, 2),
            }
            self.epochs.append(row)
            print(f"  epoch {epoch + 1}: loss {row['loss']:.4f}  val_loss {val_loss:.4f}  val_auc {val_auc:.4f}  "
                  f"logit spread {row['val_logit_std']:.3g}", file=sys.stderr)
            if reason is not None and epoch + 1 <= self.config.guard_epochs:
                self.collapse = reason
                self.model.stop_training = True
                return
            improved = val_auc > self.best_auc + 1e-4 or (val_auc >= self.best_auc - 1e-4 and val_loss < self.best_loss - 1e-4)
            if improved and reason is None:
                self.best_auc, self.best_loss, self.best_epoch = float(val_auc), val_loss, epoch + 1
                self.best_weights = self.model.get_weights()
                _save_model(self.model, self.checkpoint)  # the best-AUC checkpoint
            elif (
                self.best_epoch is not None
                and epoch + 1 - self.best_epoch >= self.config.patience
                and epoch + 1 >= self.config.warmup_epochs + self.config.patience  # not while warming up
            ):
                print(f"  early stop: no better val AUC for {self.config.patience} epochs; best was epoch {self.best_epoch}", file=sys.stderr)
                self.model.stop_training = True

    return Monitor
