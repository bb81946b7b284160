"""The Keras reference Runner: the original model, for parity checks and benchmarks only.

It imports tensorflow when activated (never at import), so the runtime stays free of it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dfx.errors import require
from dfx.runtime.runners.base import Runner, Source


class KerasRunner(Runner):
    backend = "keras"
    precision = "fp32"

    def __init__(self, source: Source, input_size: tuple[int, int] | None = None, batch_size: int = 32, name: str | None = None):
        super().__init__(source, input_size=input_size, name=name or "keras")
        self.batch_size = batch_size
        self._model: Any = None

    @property
    def model(self) -> Any:
        """The loaded keras.Model (while active): export converts this very object to ONNX."""
        if self._model is None:
            from dfx.runtime.runners.base import RunnerError

            raise RunnerError(f"{self.name} is not active")
        return self._model

    def _activate(self) -> None:
        require("tensorflow", "train", "the Keras reference runner")
        import keras

        from dfx.trainer.vit import custom_layers  # clip_vit's layers (numpy-only module until called)

        loaded = self._load_source()
        self._model = keras.saving.load_model(loaded, compile=False, custom_objects=custom_layers()) if isinstance(loaded, str) else loaded
        shape = self._model.input_shape
        if self.input_size is None and shape[1] and shape[2]:
            self.input_size = (int(shape[1]), int(shape[2]))

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        # predict_on_batch for small batches avoids predict()'s per-call tf.data overhead;
        # benchmarks compare against predict() explicitly, as users call it.
        x = batch.astype(np.float32)
        if len(x) <= self.batch_size:
            return np.asarray(self._model.predict_on_batch(x))
        return self._model.predict(x, batch_size=self.batch_size, verbose=0)

    def _deactivate(self) -> None:
        self._model = None
