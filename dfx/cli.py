"""The `dfx` command. Each part registers its subcommands from a light `commands` module;
heavy frameworks are imported inside the handlers, so `dfx --help` starts fast and works
without tensorflow, tensorrt or pycuda."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from dfx import __version__
from dfx.errors import DfxError

# (module, its registration function). Order is the order in `dfx --help`.
COMMAND_MODULES = (
    "dfx.trainer.commands",  # data synth, train, eval
    "dfx.export.commands",  # export
    "dfx.runtime.scan.commands",  # scan
    "dfx.runtime.provenance.commands",  # c2pa sign, c2pa read; the provenance flags of scan
    "dfx.runtime.ray.commands",  # the Ray flags of scan (--engine ray)
    "dfx.runtime.serve.commands",  # serve
    "dfx.benchmarks.commands",  # bench
    "dfx.report",  # report
    "dfx.faces_commands",  # faces export, faces find
    "dfx.demo",  # demo
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dfx",
        description="Screen face images for GAN-made deepfakes: train a Keras CNN, export it to "
        "ONNX, FP16 and calibrated INT8 (and TensorRT engines on GPU hosts), and scan images fast.",
        epilog="Start with `dfx demo` (no downloads). `dfx COMMAND --help` explains each command.",
    )
    parser.add_argument("--version", action="version", version=f"dfx {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # TensorFlow's C++ start-up chatter (CPU feature notes) is noise on a command line.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except DfxError as exc:
        print(f"dfx {args.command}: error: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"  hint: {exc.hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dfx {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
