"""Export: Keras -> ONNX fp32 -> fp16 / calibrated INT8 Q/DQ -> TensorRT engines, with parity.

Only the Keras -> ONNX step needs tensorflow; everything after it runs on ONNX files.
"""
