"""Training-time augmentations (tf.data map functions). Never applied to validation,
evaluation, calibration or serving: those see dfx.images pixels unchanged.

``seed`` (the seed project's set): horizontal flip, grayscale, channel shuffle, noise
"impurities" and rotation. Rotation is by multiples of 90 degrees: it is lossless, whereas a
small-angle rotation resamples every pixel and blurs away the periodic upsampling traces that
the detector is meant to find.

``robust`` adds the alterations the seed's challenge tested against: JPEG re-compression,
Gaussian blur, rescaling (down and back up) and cropping (a random crop resized back).

``generalize`` (the default) is built for generators and cameras never seen in training
(Wang et al., CVPR 2020, and camera-pipeline variation): on top of ``seed``'s flip it applies,
to real and fake images alike, JPEG re-compression, blur, down-and-up rescaling, colour jitter
(brightness, contrast, saturation), sensor noise, sharpening and a small-angle rotation, each
with a modest probability, so that none of these becomes a cue for either class.

With a training canvas larger than the input (`canvas`), every mode starts with a random
crop at native resolution: the model sees many windows of each image, and serving's centre
crop is one of them.

``colour`` is ``generalize`` with colour randomised on most images (probability 0.8 instead of
0.3) and a per-channel gain (white balance, 0.85-1.15 per channel) added: the shared folders
separate real from fake by per-channel colour mean and spread alone (AUC 0.98,
docs/pseudo-fakes.md), a cue a CNN can read as easily as that baseline.

``none`` turns augmentation off (but still takes the random crop from a larger canvas).
"""

from __future__ import annotations

from typing import Callable

AUGMENT_MODES = ("none", "seed", "robust", "generalize", "colour")

# Probabilities per image. Flip is free; the colour and noise alterations are kept rarer so
# that most training images still carry the generator's own colour and noise statistics.
P_FLIP = 0.5
P_GRAYSCALE = 0.05
P_CHANNEL_SHUFFLE = 0.05
P_NOISE = 0.1
P_ROTATE = 0.25
P_JPEG = 0.3
P_BLUR = 0.2
P_RESCALE = 0.2
P_CROP = 0.2
# generalize: each alteration on a minority of images, so most keep their own statistics.
G_JPEG = 0.3
G_BLUR = 0.15
G_RESCALE = 0.15
G_COLOUR = 0.3
G_NOISE = 0.1
G_SHARPEN = 0.1
G_ROTATE = 0.15
C_COLOUR = 0.8  # colour: the share of images whose colour is randomised


def make_augment(mode: str, size: tuple[int, int], canvas: tuple[int, int] | None = None) -> Callable | None:
    """A function (uint8 image (Hc, Wc, 3) tensor -> float32 (H, W, 3) tensor in 0..255) for
    tf.data.Dataset.map, or None for mode "none" without a canvas. Random ops draw from TF's
    global seed, which train() sets with keras.utils.set_random_seed, so runs repeat.
    `canvas` (>= size) is the size of the stored training images; a random window of `size` is
    taken from it first."""
    if mode not in AUGMENT_MODES:
        raise ValueError(f"augment must be one of {AUGMENT_MODES}, not {mode!r}")
    height, width = size
    cropping = canvas is not None and tuple(canvas) != tuple(size)
    if mode == "none" and not cropping:
        return None
    import tensorflow as tf

    def window(image):
        return tf.image.random_crop(image, (height, width, 3)) if cropping else image

    if mode == "none":
        return lambda image: tf.cast(window(image), tf.float32)
    if mode in ("generalize", "colour"):
        return _generalize(window, height, width, colour=mode == "colour")
    robust = mode == "robust"

    def chance(p: float):
        return tf.random.uniform([]) < p

    def augment(image):
        image = window(image)
        if robust:  # JPEG works on uint8; do it before the float ops
            quality = tf.random.uniform([], 50, 96, dtype=tf.int32)
            image = tf.cond(chance(P_JPEG), lambda: tf.image.adjust_jpeg_quality(image, quality), lambda: image)
            image = tf.ensure_shape(image, (height, width, 3))
        x = tf.cast(image, tf.float32)
        x = tf.cond(chance(P_FLIP), lambda: tf.image.flip_left_right(x), lambda: x)
        x = tf.cond(chance(P_GRAYSCALE), lambda: tf.tile(tf.image.rgb_to_grayscale(x), [1, 1, 3]), lambda: x)
        x = tf.cond(chance(P_CHANNEL_SHUFFLE), lambda: tf.gather(x, tf.random.shuffle(tf.range(3)), axis=2), lambda: x)
        x = tf.cond(chance(P_NOISE), lambda: _impurities(x), lambda: x)
        if height == width:  # rot90 of a non-square image changes its shape
            k = tf.random.uniform([], 1, 4, dtype=tf.int32)
            x = tf.cond(chance(P_ROTATE), lambda: tf.image.rot90(x, k), lambda: x)
        if robust:
            x = tf.cond(chance(P_BLUR), lambda: _gaussian_blur(x), lambda: x)
            x = tf.cond(chance(P_RESCALE), lambda: _rescale(x, height, width), lambda: x)
            x = tf.cond(chance(P_CROP), lambda: _crop(x, height, width), lambda: x)
        return tf.ensure_shape(tf.clip_by_value(x, 0.0, 255.0), (height, width, 3))

    return augment


def _generalize(window, height: int, width: int, colour: bool = False) -> Callable:
    import tensorflow as tf

    def chance(p: float):
        return tf.random.uniform([]) < p

    def augment(image):
        image = window(image)
        quality = tf.random.uniform([], 60, 96, dtype=tf.int32)
        image = tf.cond(chance(G_JPEG), lambda: tf.image.adjust_jpeg_quality(image, quality), lambda: image)
        x = tf.cast(tf.ensure_shape(image, (height, width, 3)), tf.float32)
        x = tf.cond(chance(P_FLIP), lambda: tf.image.flip_left_right(x), lambda: x)
        if colour:
            x = tf.cond(chance(C_COLOUR), lambda: _white_balance(_colour(x)), lambda: x)
        else:
            x = tf.cond(chance(G_COLOUR), lambda: _colour(x), lambda: x)
        x = tf.cond(chance(P_GRAYSCALE), lambda: tf.tile(tf.image.rgb_to_grayscale(x), [1, 1, 3]), lambda: x)
        x = tf.cond(chance(G_BLUR), lambda: _gaussian_blur(x), lambda: x)
        x = tf.cond(chance(G_RESCALE), lambda: _rescale(x, height, width), lambda: x)
        x = tf.cond(chance(G_SHARPEN), lambda: _sharpen(x), lambda: x)
        x = tf.cond(chance(G_NOISE), lambda: _impurities(x), lambda: x)
        x = tf.cond(chance(G_ROTATE), lambda: _rotate(x, height, width), lambda: x)
        return tf.ensure_shape(tf.clip_by_value(x, 0.0, 255.0), (height, width, 3))

    return augment


def _colour(x):
    """Brightness +-10%, contrast 0.8..1.2, saturation 0.7..1.3: white balance and tone curves
    differ between cameras and editing pipelines."""
    import tensorflow as tf

    x = x + tf.random.uniform([], -25.0, 25.0)
    mean = tf.reduce_mean(x)
    x = (x - mean) * tf.random.uniform([], 0.8, 1.2) + mean
    grey = tf.image.rgb_to_grayscale(x)
    return grey + (x - grey) * tf.random.uniform([], 0.7, 1.3)


def _white_balance(x):
    """A per-channel gain of 0.85..1.15: another camera's white balance."""
    import tensorflow as tf

    return x * tf.random.uniform([3], 0.85, 1.15)


def _sharpen(x):
    """Unsharp mask (amount 0.3..1.0), as phone pipelines and editors apply."""
    import tensorflow as tf

    amount = tf.random.uniform([], 0.3, 1.0)
    return x + amount * (x - _gaussian_blur(x))


def _rotate(x, height: int, width: int):
    """A rotation of -10..10 degrees about the centre (bilinear, edges reflected)."""
    import math

    import tensorflow as tf

    angle = tf.random.uniform([], -10.0, 10.0) * (math.pi / 180)
    cos, sin = tf.cos(angle), tf.sin(angle)
    cy, cx = (height - 1) / 2, (width - 1) / 2
    # output (x, y) samples input (a0 x + a1 y + a2, b0 x + b1 y + b2)
    transform = tf.stack([cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=x[None], transforms=transform[None], output_shape=[height, width], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="REFLECT",
    )
    return out[0]


def _impurities(x):
    """Gaussian sensor noise plus sparse salt-and-pepper specks (the seed's "impurities")."""
    import tensorflow as tf

    sigma = tf.random.uniform([], 1.0, 6.0)
    x = x + tf.random.normal(tf.shape(x), stddev=sigma)
    specks = tf.random.uniform(tf.shape(x)[:2])
    x = tf.where((specks < 0.001)[:, :, None], 0.0, x)
    return tf.where((specks > 0.999)[:, :, None], 255.0, x)


def _gaussian_blur(x):
    """Separable Gaussian blur, sigma 0.3..1.5 px (radius 3)."""
    import tensorflow as tf

    sigma = tf.random.uniform([], 0.3, 1.5)
    taps = tf.range(-3.0, 4.0)
    kernel = tf.exp(-(taps**2) / (2 * sigma**2))
    kernel = kernel / tf.reduce_sum(kernel)
    channels = tf.transpose(x, [2, 0, 1])[:, :, :, None]  # (3, H, W, 1): blur channels alike
    channels = tf.pad(channels, [[0, 0], [3, 3], [3, 3], [0, 0]], mode="REFLECT")
    channels = tf.nn.conv2d(channels, tf.reshape(kernel, [7, 1, 1, 1]), 1, "VALID")
    channels = tf.nn.conv2d(channels, tf.reshape(kernel, [1, 7, 1, 1]), 1, "VALID")
    return tf.transpose(channels[:, :, :, 0], [1, 2, 0])


def _rescale(x, height: int, width: int):
    """Down-scale by 0.5..0.9 and back up (bilinear): a re-shared, resized photo."""
    import tensorflow as tf

    factor = tf.random.uniform([], 0.5, 0.9)
    small = tf.cast(tf.round(tf.cast([height, width], tf.float32) * factor), tf.int32)
    return tf.image.resize(tf.image.resize(x, small, antialias=True), (height, width))


def _crop(x, height: int, width: int):
    """A random crop of 70..95 % of each side, resized back to the input size."""
    import tensorflow as tf

    factor = tf.random.uniform([], 0.7, 0.95)
    crop_h = tf.cast(tf.round(height * factor), tf.int32)
    crop_w = tf.cast(tf.round(width * factor), tf.int32)
    patch = tf.image.random_crop(x, tf.stack([crop_h, crop_w, 3]))
    return tf.image.resize(patch, (height, width))
