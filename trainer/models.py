"""Model architectures. The seed CNN is the default and is kept exactly.

Every model takes float32 NHWC RGB in 0..255 (the rescaling is inside the model, so runners
feed raw pixels) and returns one logit per image: shape (N, 1), positive = fake.
"""

from __future__ import annotations

from dfx.errors import require

ARCHITECTURES = ("seed_cnn",)
INPUT_NAME = "images"


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


def build(architecture: str, size: int | tuple[int, int], seed: int | None = None):
    if architecture == "seed_cnn":
        return seed_cnn(size, seed=seed)
    raise ValueError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
