"""Side experiment: is ONNX Runtime CPU faster on uint8 (u8s8) than on the bundle's signed int8
(s8s8, what TensorRT needs) Q/DQ file, and is OpenVINO (when installed)? Quantizes the bundle's model.onnx with uint8 activations
(MinMax on a few images, same float layers as the export keeps: first conv and the logit layer),
then times both files interleaved on ORT CPU. A measurement for a design decision, not a product
path: the u8 file it writes is scratch.

    python benchmarks/scripts/int8_u8_vs_s8.py BUNDLE IMAGES_DIR [--batch 32] [--seconds 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from dfx.bundle import Bundle
    from dfx.images import iter_image_files, load_image

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("images")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()

    bundle = Bundle.open(args.bundle)
    files = iter_image_files([args.images])[::10][:64]
    x = np.stack([load_image(f, bundle.input_size, bundle.fit) for f in files]).astype(np.float32)
    scratch = Path(tempfile.mkdtemp())
    quant_pre_process(str(bundle.file("model.onnx")), str(scratch / "pre.onnx"))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.at = 0

        def get_next(self):
            if self.at >= len(x):
                return None
            self.at += 8
            return {"images": x[self.at - 8 : self.at]}

    graph = onnx.load(scratch / "pre.onnx").graph
    convs = [n.name for n in graph.node if n.op_type == "Conv"]
    dense = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm")]
    u8 = scratch / "u8.onnx"
    quantize_static(str(scratch / "pre.onnx"), str(u8), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    nodes_to_exclude=convs[:1] + dense, extra_options={"WeightSymmetric": True})

    from dfx.runtime.openvino import OpenVinoRunner, available
    from dfx.runtime.ort import OrtRunner

    def rate(runner) -> float:
        """images/s of the dfx runner (what `dfx scan` runs) on one batch, for --seconds."""
        batch = x[: args.batch].astype(np.uint8)
        with runner:
            runner.infer(batch)
            start, done = time.perf_counter(), 0
            while time.perf_counter() - start < args.seconds:
                runner.infer(batch)
                done += len(batch)
            return done / (time.perf_counter() - start)

    files_ = {"fp32": str(bundle.file("model.onnx")), "int8 s8s8 (bundle)": str(bundle.file("model.int8.onnx")), "int8 u8s8 (scratch)": str(u8)}
    for round_ in range(2):  # interleaved twice
        for name, path in files_.items():
            precision = "fp32" if name == "fp32" else "int8"
            print(f"round {round_ + 1}  ORT {name:<22} {rate(OrtRunner(path, precision=precision)):7.1f} images/s  (batch {args.batch})", flush=True)
            if available() and name != "fp32":
                print(f"round {round_ + 1}  OV  {name:<22} {rate(OpenVinoRunner(path, precision=precision)):7.1f} images/s  (batch {args.batch})", flush=True)


if __name__ == "__main__":
    main()
