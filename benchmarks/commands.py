"""Subcommands of this part (registered by dfx.cli): `dfx bench`."""

from __future__ import annotations

import argparse
import sys

from dfx.errors import DfxError

def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"batch sizes must be integers >= 1, got {text!r}")
    return values


def register(sub: argparse._SubParsersAction) -> None:
    from dfx.benchmarks.harness import BACKENDS, BenchConfig

    d = BenchConfig.__dataclass_fields__  # defaults shown in --help come from the config
    p = sub.add_parser(
        "bench",
        help="measure images/s and latency of every backend against the Keras model",
        description="Time every backend this machine can run on the bundle (Keras model.predict as the reference, "
        "ONNX Runtime FP32/INT8, OpenVINO FP32/INT8; on GPU hosts ONNX Runtime CUDA and TensorRT FP16/INT8) in one "
        "process, interleaved so ratios are fair, after a warm-up. Prints a table, the machine and software, the "
        "graph's work per image and the fraction of the machine's attainable rate each backend reaches.",
    )
    p.add_argument("bundle", metavar="BUNDLE", help="bundle folder (exported with `dfx export` for the ONNX rows)")
    p.add_argument("--backends", metavar="LIST", help=f"comma-separated subset to run (default: all this machine can): {', '.join(BACKENDS)}")
    batch_sizes = d["batch_sizes"].default
    p.add_argument("--batch-sizes", type=_int_list, default=batch_sizes, metavar="LIST",
                   help=f"images per inference call (default {','.join(map(str, batch_sizes))})")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--duration", type=float, default=d["duration"].default, metavar="S",
                        help="timed seconds per backend and batch size (default %(default)g)")
    budget.add_argument("--iters", type=int, metavar="N", help="timed batches per backend and batch size, instead of --duration")
    p.add_argument("--warmup", type=int, default=d["warmup"].default, metavar="N",
                   help="untimed batches per backend and batch size first (default %(default)s)")
    p.add_argument("--rounds", type=int, default=d["rounds"].default, metavar="N",
                   help="slices each row is cut into, taken in turn by all backends (default %(default)s)")
    p.add_argument("--images", metavar="DIR", help="also time decode + inference through the `dfx scan` pipeline on these files, and dfx scan's peak memory")
    p.add_argument("--no-provenance", action="store_true", help="with --images: skip the e2e+c2pa rows (C2PA manifests read, as dfx scan does)")
    p.add_argument("--e2e-batch-size", type=int, default=d["e2e_batch_size"].default, metavar="N",
                   help="batch size of the end-to-end rows (default %(default)s)")
    from dfx.runtime.scan.flags import add_faces_flags

    add_faces_flags(p.add_argument_group("whole photos in the --images rows (as dfx scan)"))
    p.add_argument("--against", metavar="BUNDLE", help="also time a second bundle on the same backends, interleaved in the same slices, "
                   "and give each row its ratio to it (e.g. against the 256 px seed CNN: benchmarks/scripts/seed_bundle.py)")
    p.add_argument("--threads", type=int, metavar="N", help="inference threads for CPU backends (default: physical cores)")
    p.add_argument("--no-peer", action="store_true", help="skip the summary's peer: OpenVINO's own benchmark_app on the file the "
                   "auto form runs (~1 min: batch 1 and the e2e batch, before and after the rows)")
    p.add_argument("--no-roofline", action="store_true", help="skip the graph/machine limits (saves ~8 s of microbenchmarks, run before and after the rows)")
    p.add_argument("--json", metavar="FILE", help="write rows, machine, software and limits to FILE as JSON")
    p.add_argument("--plot", metavar="FILE", help="write a PNG bar chart of images/s (needs matplotlib)")
    p.set_defaults(handler=bench_command)


def bench_command(args: argparse.Namespace) -> int:
    from dfx.benchmarks import harness, report

    # --iters and --duration are checked by harness.run, for library callers too.
    if args.rounds < 1 or args.warmup < 0 or args.e2e_batch_size < 1:
        raise DfxError("--rounds and --e2e-batch-size must be >= 1, --warmup >= 0")
    config = harness.BenchConfig(
        backends=harness.normalize(args.backends.split(",")) if args.backends else None,
        batch_sizes=args.batch_sizes,
        duration=args.duration,
        iters=args.iters,
        warmup=args.warmup,
        rounds=args.rounds,
        images=args.images,
        e2e_batch_size=args.e2e_batch_size,
        roofline=not args.no_roofline,
        threads=args.threads,
        provenance=not args.no_provenance,
        faces=args.faces,
        no_face=args.no_face,
        min_face=args.min_face,
        against=args.against,
        peer=not args.no_peer,
    )
    result = harness.run(args.bundle, config, log=lambda s: print(s, file=sys.stderr, flush=True))
    print(report.text(result))
    if args.json:
        report.write_json(result, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        report.plot(result, args.plot)
        print(f"wrote {args.plot}")
    return 1 if all(r.get("error") for r in result["rows"]) else 0
