"""Model architectures.

Every model takes float32 NHWC RGB in 0..255 (the rescaling is inside the model, so runners
feed raw pixels) and returns one logit per image: shape (N, 1), positive = fake.

- ``seed_cnn``: the seed project's CNN, kept exactly (only the rescaling constant differs).
- ``npr_cnn``: a neighbouring-pixel-residual front end (Tan et al., CVPR 2024) feeding a small
  residual CNN. Built from standard layers only (a fixed depthwise conv, nearest up-sampling,
  a subtraction), so it exports to ONNX, calibrates to INT8 and runs in every runner.
- ``patch_cnn`` / ``patch_cnn_rf18``: the seed CNN cut short, one logit per 38 / 18 px patch,
  averaged over the image.
"""

from __future__ import annotations

from functools import partial

from dfx.errors import require

# `dfx train` and `dfx protocol` default: CLIP ViT-B/16, frozen, a logistic head on its last block (the protocol in
# docs/generalization.md; seed_cnn until 2026-12-06). TrainConfig / ProtocolConfig default to DEFAULT_CNN:
# their other defaults (96 px, 128 px canvas, generalize augmentation) are the CNN recipe's.
DEFAULT_ARCHITECTURE = "clip_vit"
DEFAULT_CNN = "seed_cnn"  # at 96 px resize it beat npr_cnn on three protocol seeds (docs/pseudo-fakes.md)
INPUT_NAME = "images"
# Batch-norm running statistics follow the last ~10 steps (Keras' default 0.99 follows ~100):
# short CPU runs take a few hundred steps, and with 0.99 the statistics used at validation
# still lagged the training ones, which showed as a validation loss twice the training loss.
BN_MOMENTUM = 0.9


def seed_cnn(size: int | tuple[int, int] = 256, dropout: float = 0.5, seed: int | None = None, centre: bool = True):
    """The seed project's CNN: 5 blocks of Conv3x3(same)+ReLU+MaxPool at 32..512 filters,
    global average pooling, dropout 0.5, Dense(1) logit.

    `centre` (default) rescales pixels to [-1, 1] instead of the seed's [0, 1]. With inputs that
    are all positive, every weight of a first-layer filter gets a gradient of the same sign, so
    the first Adam steps push whole filters negative and their ReLUs die: the seed's collapse
    to a constant output at 256 px. Zero-centred inputs remove that bias (measured on the
    synthetic set at 64 px: loss leaves ln 2 after 2 epochs instead of 6). The layers are the
    seed's exactly; only the constant inside the Rescaling layer differs.
    """
    require("tensorflow", "train", "building the Keras model")
    import keras
    from keras import layers

    height, width = (size, size) if isinstance(size, int) else size
    init = keras.initializers.GlorotUniform(seed=seed)
    inputs = keras.Input((height, width, 3), dtype="float32", name=INPUT_NAME)
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(inputs) if centre else layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    for i, filters in enumerate((32, 64, 128, 256, 512)):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", kernel_initializer=init, name=f"conv{i + 1}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, seed=seed, name="dropout")(x)
    logits = layers.Dense(1, kernel_initializer=init, name="logit")(x)
    return keras.Model(inputs, logits, name="seed_cnn")


def npr_cnn(size: int | tuple[int, int] = 96, widths: tuple[int, ...] = (16, 32, 64, 128), dropout: float = 0.3, seed: int | None = None):
    """Neighbouring-pixel residual (NPR) + a small residual CNN.

    NPR = x - up2(down2(x)): each pixel minus the top-left pixel of its 2x2 cell. Generators
    up-sample (nearest, transposed conv, bilinear), which ties neighbouring pixels together;
    the residual keeps exactly that local correlation and discards the content (faces, colour,
    lighting), which is what lets a detector trained on a few generators carry over to others
    (Tan et al., "Rethinking the Up-Sampling Operations in CNN-based Generative Network for
    Generalizable Deepfake Detection", CVPR 2024). down2 is a fixed, non-trainable 2x2
    depthwise conv with stride 2 that picks the top-left pixel; up2 is nearest up-sampling.

    The body: a stem conv, then one residual block (two 3x3 convs + BN, 1x1 projection) per
    width, each halving the resolution; global average pooling, dropout, one logit. Batch
    normalisation folds into the convolutions at export. Input sides must be even.
    """
    require("tensorflow", "train", "building the Keras model")
    import keras
    import numpy as np
    from keras import layers

    height, width = (size, size) if isinstance(size, int) else size
    if height % 2 or width % 2:
        raise ValueError(f"npr_cnn needs even input sides, not {height}x{width}")
    init = keras.initializers.HeNormal(seed=seed)
    pick = np.zeros((2, 2, 3, 1), np.float32)
    pick[0, 0] = 1.0  # the top-left pixel of each 2x2 cell, per channel
    inputs = keras.Input((height, width, 3), dtype="float32", name=INPUT_NAME)
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(inputs)
    down = layers.DepthwiseConv2D(2, strides=2, use_bias=False, trainable=False,
                                  depthwise_initializer=keras.initializers.Constant(pick), name="npr_down")(x)
    up = layers.UpSampling2D(2, interpolation="nearest", name="npr_up")(down)
    x = layers.Subtract(name="npr")([x, up])
    x = layers.Conv2D(widths[0], 3, padding="same", use_bias=False, kernel_initializer=init, name="stem")(x)
    x = layers.ReLU(name="stem_relu")(layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x))
    for i, filters in enumerate(widths):
        name = f"block{i + 1}"
        shortcut = layers.Conv2D(filters, 1, strides=2, use_bias=False, kernel_initializer=init, name=f"{name}_proj")(x)
        shortcut = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_proj_bn")(shortcut)
        y = layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False, kernel_initializer=init, name=f"{name}_conv1")(x)
        y = layers.ReLU(name=f"{name}_relu1")(layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn1")(y))
        y = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer=init, name=f"{name}_conv2")(y)
        y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn2")(y)
        x = layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([shortcut, y]))
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, seed=seed, name="dropout")(x)
    logits = layers.Dense(1, kernel_initializer=keras.initializers.GlorotUniform(seed=seed), name="logit")(x)
    return keras.Model(inputs, logits, name="npr_cnn")


def patch_cnn(size: int | tuple[int, int] = 96, pooled_blocks: int = 3, dropout: float = 0.3, seed: int | None = None):
    """The seed CNN cut short into a patch classifier: its first `pooled_blocks` blocks
    (Conv3x3+ReLU+MaxPool at 32, 64, 128), one more Conv3x3+ReLU without pooling, then a 1x1 conv
    that gives every position its own logit, averaged over the image. Each logit sees only a
    patch (38 px with 3 pooled blocks, 18 px with 2), not the whole face: Chai et al. ("What
    makes fake images detectable?", ECCV 2020) found that classifiers with a truncated receptive
    field carry over to unseen generators better, reading local artefacts, not global content."""
    require("tensorflow", "train", "building the Keras model")
    import keras
    from keras import layers

    height, width = (size, size) if isinstance(size, int) else size
    init = keras.initializers.GlorotUniform(seed=seed)
    inputs = keras.Input((height, width, 3), dtype="float32", name=INPUT_NAME)
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(inputs)
    widths = (32, 64, 128, 256)[: pooled_blocks + 1]
    for i, filters in enumerate(widths):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", kernel_initializer=init, name=f"conv{i + 1}")(x)
        if i < pooled_blocks:
            x = layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
    x = layers.Dropout(dropout, seed=seed, name="dropout")(x)
    patch_logits = layers.Conv2D(1, 1, kernel_initializer=init, name="patch_logit")(x)
    logits = layers.GlobalAveragePooling2D(name="mean_logit")(patch_logits)
    return keras.Model(inputs, logits, name="patch_cnn")


# The architectures `--architecture` accepts: name -> builder(size, seed=...).
BUILDERS = {"seed_cnn": seed_cnn, "npr_cnn": npr_cnn, "patch_cnn": patch_cnn, "patch_cnn_rf18": partial(patch_cnn, pooled_blocks=2)}
# clip_vit (dfx.trainer.vit) is not built here: its tower is pretrained and frozen, and only its head
# is trained, on cached tokens (dfx.trainer.probe).
ARCHITECTURES = tuple(BUILDERS) + ("clip_vit",)


def build(architecture: str, size: int | tuple[int, int], seed: int | None = None):
    if architecture == "clip_vit":
        raise ValueError("clip_vit is a frozen tower plus a head trained on its tokens: dfx.trainer.probe builds it")
    if architecture not in BUILDERS:
        raise ValueError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    return BUILDERS[architecture](size, seed=seed)
