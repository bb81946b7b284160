"""The backend flags every command that runs a bundle's model shares (`dfx scan`, `dfx serve`,
`dfx c2pa sign`, `dfx eval`), declared once so their names, choices and help never drift."""

from __future__ import annotations

import argparse

from dfx.runtime.scan.select import ALIASES, BACKENDS, PRECISIONS

BACKEND_HELP = ("auto (default): a matching TensorRT engine, else ONNX Runtime CUDA, else OpenVINO/ONNX Runtime CPU "
                "(INT8 where the bundle has it), else Keras; or force one")
PUBLIC_KEY_HELP = ("trusted public key: refuse a bundle that is unsigned or not signed by it (default: $DFX_PUBLIC_KEY; "
                   "without one any intact bundle loads and dfx says whether it is signed)")


def add_backend_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    threads: bool = True,
    public_key: bool | str = True,
    batch: str | None = None,
) -> None:
    """--backend, --precision and, as asked, --threads, --public-key (True, or its help text) and
    --batch (its help text; `--batch-size` is accepted as the same flag)."""
    parser.add_argument("--backend", default="auto", choices=list(BACKENDS) + sorted(ALIASES), help=BACKEND_HELP)
    parser.add_argument("--precision", choices=PRECISIONS, help="force a model precision (default: the fastest the backend runs)")
    if batch is not None:
        parser.add_argument("--batch", "--batch-size", dest="batch", type=int, metavar="N", help=batch)
    if threads:
        parser.add_argument("--threads", type=int, metavar="N", help="CPU backends: inference threads (default: physical cores)")
    if public_key:
        parser.add_argument("--public-key", metavar="PEM", help=public_key if isinstance(public_key, str) else PUBLIC_KEY_HELP)


def add_faces_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--faces and --no-face: how whole photos are screened (dfx.faces)."""
    parser.add_argument("--faces", choices=("off", "auto", "all"), default="auto",
                        help="find faces and screen each: auto (default) looks in images over 1024 px that are not "
                        "close-ups and scores smaller ones (face crops) whole; all looks in every image; off scores "
                        "every image whole. Needs the bundle's face finder (added by `dfx export`)")
    parser.add_argument("--no-face", dest="no_face", choices=("no_face", "score"), default="no_face",
                        help="a searched photo with no face: decision no_face (default, never `real`), or score it whole")
    parser.add_argument("--min-face", dest="min_face", type=int, metavar="PX",
                        help="smallest face to look for, in photo pixels (default: the face a crop of the model's window "
                        "holds, 58 px for a 96 px model: smaller faces cannot fill the window at native resolution). "
                        "The finder's cost grows as 1/min-face^2: on 12 MP photos 160 screens ~3x as many "
                        "photos a second as 58 (docs/whole-photos.md) and misses the faces under 160 px")
