"""A backbone's per-block CLS tokens from each form, for parity's block agreement (dfx.parity).

A clip_vit form is judged on its tokens as well as its logits: the Keras tower gives the
reference, and each ONNX file gives its own through a *tap*, a copy of the file whose graph
also outputs the tokens tensor (export/graph.py). The tap runs on ONNX Runtime CPU, as the
ONNX forms' parity does; the served files are never changed. Tokens are taken on at most
TOKEN_IMAGES of the parity images (spread evenly over them): a mean cosine is steady long
before that, and the real tower costs ~0.1-0.4 s an image on 2 vCPUs.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

TOKEN_IMAGES = 256


def pick(count: int, limit: int = TOKEN_IMAGES) -> np.ndarray:
    """Indices of at most `limit` of `count` images, spread evenly (all of them when fewer)."""
    if count <= limit:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, limit).round().astype(int))


def has_tokens(onnx_path: str | os.PathLike) -> bool:
    import onnx

    from dfx.export.graph import tokens_tensor

    return tokens_tensor(onnx.load(os.fspath(onnx_path), load_external_data=False)) is not None


def keras_tokens(model: Any, images: np.ndarray, batch_size: int = 32) -> np.ndarray | None:
    """The Keras tower's tokens (N, blocks, width) for uint8 NHWC `images`, or None when the
    model has no sub-model ending in a `cls_tokens` layer (the CNNs)."""
    from dfx.export.graph import TOKENS_LAYER

    tower = next((layer for layer in getattr(model, "layers", [])
                  if getattr(layer, "layers", None) and layer.layers[-1].name == TOKENS_LAYER), None)
    if tower is None:
        return None
    out = [np.asarray(tower.predict_on_batch(images[i:i + batch_size].astype(np.float32)))
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out).astype(np.float32) if out else None


class Tap:
    """An ONNX file run on ONNX Runtime CPU with its tokens exposed: `run(images)` ->
    (logits (N,), tokens (N, blocks, width) float32). Use as a context manager."""

    def __init__(self, onnx_path_or_model: Any, threads: int | None = None):
        self.source = onnx_path_or_model
        self.threads = threads
        self._session: Any = None

    def __enter__(self) -> "Tap":
        import onnx
        import onnxruntime as ort

        from dfx.export.graph import TOKENS_OUTPUT, with_tokens_output

        model = self.source
        if isinstance(model, (str, os.PathLike)):
            model = onnx.load(os.fspath(model))
        tapped = with_tokens_output(model)
        if tapped is None:
            raise ValueError("this graph has no cls_tokens layer to tap")
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        self._session = ort.InferenceSession(tapped.SerializeToString(), options, providers=["CPUExecutionProvider"])
        inputs = self._session.get_inputs()
        self._input = inputs[0].name
        self._dtype = np.float16 if inputs[0].type == "tensor(float16)" else np.float32
        self._outputs = [self._session.get_outputs()[0].name, TOKENS_OUTPUT]
        return self

    def __exit__(self, *exc: Any) -> None:
        self._session = None

    def run(self, images: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        logits, tokens = [], []
        for start in range(0, len(images), batch_size):
            out = self._session.run(self._outputs, {self._input: images[start:start + batch_size].astype(self._dtype)})
            logits.append(np.asarray(out[0], np.float32).reshape(-1))
            tokens.append(np.asarray(out[1], np.float32))
        return np.concatenate(logits), np.concatenate(tokens)
