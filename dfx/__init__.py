"""dfx: screen face images for GAN-made deepfakes.

Importing dfx is light: numpy and the standard library only. Frameworks (tensorflow,
onnxruntime, tensorrt, CUDA bindings) are imported inside the functions that need them.
"""

__version__ = "0.1.0"

from dfx.errors import DfxError, MissingExtraError  # noqa: E402

__all__ = ["DfxError", "MissingExtraError", "__version__"]
