"""The tiny brightness bundle of the fuzz harnesses, for the hardening and signing tests."""

from dfx.benchmarks.fuzz.tiny_bundle import SIZE, make_onnx_bundle  # noqa: F401
