"""The README's provenance rows: sign a few faces with a throwaway test PKI (made here, never
saved beside the repository), scan them with `dfx scan --trust-anchors`, print one Markdown
table row per file.

    python benchmarks/provenance_examples.py BUNDLE FACES_DIR OUT_DIR [--threshold LOGIT]

FACES_DIR is ../shared/data/faces (real/unsplash, fake/stylegan2). Made in OUT_DIR:
  ai-declared.jpg     a real photo whose manifest declares trainedAlgorithmicMedia
  camera-claim.jpg    a StyleGAN2 face whose trusted manifest declares digitalCapture
  tampered.jpg        a real photo signed as a capture, pixels changed after signing
  stylegan2.jpg       camera-claim.jpg's pixels with no manifest
  unsplash.jpg        a real photo with no manifest
Needs the `c2pa` extra and cryptography (the `test` extra).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' PKI helper


def main(argv: list[str] | None = None) -> int:
    from _c2pa_certs import created, make_pki, sign, tamper_jpeg_pixels

    from dfx.cli import main as dfx
    from dfx.runtime.scan.results import read_results

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("faces", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--threshold", help="passed to dfx scan")
    args = parser.parse_args(argv)

    real = sorted((args.faces / "real").rglob("*.jpg"))
    fake = sorted((args.faces / "fake").rglob("*.jpg"))
    args.out.mkdir(parents=True, exist_ok=True)
    pki = make_pki("dfx example signer")
    paths = pki.write(args.out / "pki")
    examples = {
        "ai-declared.jpg": sign(pki, real[0].read_bytes(), "image/jpeg", [created("trainedAlgorithmicMedia")], generator="example-generator"),
        "camera-claim.jpg": sign(pki, fake[0].read_bytes(), "image/jpeg", [created("digitalCapture")], generator="example-camera"),
        "tampered.jpg": tamper_jpeg_pixels(sign(pki, real[1].read_bytes(), "image/jpeg", [created("digitalCapture")], generator="example-camera")),
    }
    for name, data in examples.items():
        (args.out / name).write_bytes(data)
    shutil.copy(fake[0], args.out / "stylegan2.jpg")  # the camera claim's pixels, without its manifest
    shutil.copy(real[2], args.out / "unsplash.jpg")
    rows_file = args.out / "rows.jsonl"
    extra = ["--threshold", args.threshold] if args.threshold else []
    names = ["ai-declared.jpg", "camera-claim.jpg", "tampered.jpg", "stylegan2.jpg", "unsplash.jpg"]
    code = dfx(["scan", args.bundle, *(str(args.out / n) for n in names), "--out", str(rows_file), "--overwrite",
                "--trust-anchors", str(paths["root"]), "--quiet", *extra])
    columns = ("path", "decision", "logit", "c2pa", "ai_declared", "claim_generator", "c2pa_failures", "verdict")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in read_results(rows_file):
        values = row.to_dict()
        values["path"] = Path(row.path).name
        values["logit"] = f"{row.logit:.3f}" if row.logit is not None else None
        print("| " + " | ".join("-" if values[c] is None else f"`{values[c]}`" for c in columns) + " |")
    return code


if __name__ == "__main__":
    sys.exit(main())
