"""Runners: one contract (`with runner: logits = runner.infer(batch)`), one module per backend.

base (the contract and its errors), ort (ONNX Runtime CPU/CUDA), openvino, trt (TensorRT
engines), keras (the reference), cuda (the CUDA calls TrtRunner makes, and the GPU probe).
Every framework is imported inside the runner that uses it.
"""
