"""The lean runtime: Runners, backend choice, the scan pipeline and the Detector API.

Never imports tensorflow. Its install is numpy + Pillow + onnxruntime (+ tensorrt and a CUDA
binding on GPU hosts); every framework is imported inside the Runner that uses it.
"""
