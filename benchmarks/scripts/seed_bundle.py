"""A 256 px seed-CNN bundle with untrained (seeded random) weights, exported by `dfx export`.

Speed does not depend on the weights, so this bundle stands in for a trained one when only
throughput is measured (its scores mean nothing). Usage:

    python benchmarks/scripts/seed_bundle.py OUT_DIR [--size 256] [--data ../shared/data/faces]

It writes model.keras, then runs dfx.export.pipeline.export_bundle (fp32 ONNX, calibrated INT8
Q/DQ on the data folder's training split), exactly the files a trained bundle carries.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="bundle folder to create (replaced if it holds a bundle)")
    parser.add_argument("--size", type=int, default=256, help="input size in pixels (default 256, the seed project's)")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[3] / "shared" / "data" / "faces"),
                        help="labelled real/ fake/ tree used for INT8 calibration and the parity report")
    parser.add_argument("--calib-count", type=int, default=64, help="calibration images (default 64: speed needs no more)")
    args = parser.parse_args()

    from dfx.bundle import Bundle, tool_versions
    from dfx.datasets import data_record
    from dfx.export.pipeline import ExportConfig, export_bundle
    from dfx.trainer.models import seed_cnn

    bundle = Bundle.create(args.out, input_size=(args.size, args.size), fit="resize", architecture="seed_cnn", overwrite=True)
    seed_cnn(args.size, seed=0).save(Path(args.out) / "model.keras")
    bundle.add_file("model.keras", role="keras", tools=tool_versions("tensorflow", "keras"))
    bundle.manifest["data"] = data_record(args.data, None, None, 0.2, 0)
    bundle.manifest["note"] = "untrained seed CNN (seeded random weights): for speed measurements only"
    bundle.save()
    report = export_bundle(args.out, ExportConfig(int8=True, calib_count=args.calib_count, calib_method="percentile", parity_count=64))
    print(f"{args.out}: exported; parity passed={report.get('passed')} (meaningless for random weights)")


if __name__ == "__main__":
    main()
