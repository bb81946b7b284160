"""`dfx scan --engine ray`: the Ray flags of `dfx scan`, added to its parser when this room
registers, and the handler they lead to (every other scan stays `dfx scan`'s own)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

from dfx.errors import DfxError


def register(sub: argparse._SubParsersAction) -> None:
    scan = sub.choices.get("scan")
    if scan is None:  # dfx.cli registers the scan first
        return
    ray = scan.add_argument_group("scale-out on Ray (pip install 'dfx[ray]'; see docs/ray.md)")
    ray.add_argument("--engine", choices=("local", "ray"), default="local", help="local (default): this process; ray: Ray Data "
                     "on a cluster or this machine, --out is then a folder or bucket prefix of Parquet/JSONL shards, and PATH may "
                     "be a URI (s3://, gs://...), a glob or @FILE (a manifest, one path/URI per line)")
    ray.add_argument("--format", choices=("parquet", "jsonl"), default="parquet", help="--engine ray: shard format (default parquet)")
    ray.add_argument("--actors", type=int, metavar="N", help="--engine ray: inference actors (default: one per GPU, else the CPUs "
                     "left after one decode task, divided by --threads)")
    ray.add_argument("--ray-address", metavar="ADDR", help="--engine ray: the cluster to join (default: $RAY_ADDRESS, else a "
                     "local Ray instance on this machine)")
    scan.set_defaults(handler=_Dispatch(scan.get_default("handler")))


class _Dispatch:
    """`dfx scan`'s handler: --engine ray here, anything else to the local scan."""

    def __init__(self, local: Callable[[argparse.Namespace], int]):
        self.local = local

    def __call__(self, args: argparse.Namespace) -> int:
        return scan_command(args) if getattr(args, "engine", "local") == "ray" else self.local(args)


def scan_command(args: Any) -> int:
    """`dfx scan --engine ray`."""
    from dfx.runtime.ray.scan import RayScanConfig, scan
    from dfx.signing import trusted_key_from_env

    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    if args.batch is not None and args.batch < 1:
        raise DfxError(f"--batch must be >= 1, not {args.batch}")
    config = RayScanConfig(
        backend=args.backend, precision=args.precision, threshold=args.threshold, batch_size=args.batch,
        actors=args.actors, threads=args.threads, format=args.format, resume=args.resume, overwrite=args.overwrite,
        address=args.ray_address, progress=sys.stderr.isatty() and not args.quiet,
        provenance=not getattr(args, "no_provenance", False), trust_anchors=getattr(args, "trust_anchors", None),
        public_key=getattr(args, "public_key", None) or trusted_key_from_env(),
        faces=getattr(args, "faces", "auto"), no_face=getattr(args, "no_face", "no_face"), min_face=getattr(args, "min_face", None),
    )
    extensions = None
    if getattr(args, "extensions", None):
        from dfx.images import parse_extensions

        try:
            extensions = parse_extensions(args.extensions)
        except ValueError as exc:
            raise DfxError(f"--extensions: {exc}", hint="give suffixes such as --extensions jpg,png") from exc
    summary = scan(args.bundle, args.paths, args.out, config, extensions=extensions, say=say)
    if sys.stderr.isatty():
        say(f"dfx scan: {summary['images']} images: {summary['fake']} fake, {summary['real']} real, "
            f"{summary['errors']} errors; {summary['images_per_s']} images/s on ray ({summary['actors']} actors; "
            f"Ray start-up {summary['ray_startup_s']} s) -> {args.out}"
            + (f"; {summary['skipped_done']} already done" if summary["skipped_done"] else "")
            + (f"; {summary['skipped_non_image']} non-image files skipped" if summary["skipped_non_image"] else ""))
    else:
        say(json.dumps(summary))
    return 1 if summary["images"] and summary["errors"] == summary["images"] else 0
