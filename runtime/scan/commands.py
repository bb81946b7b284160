"""`dfx scan`: score files and folders with a bundle, one row per input, streamed to a file."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from dfx.errors import DfxError
from dfx.runtime.scan.rows import ScanHook

SCAN_DESCRIPTION = """\
Score images with a bundle's model and stream one row per input to --out (.jsonl or .csv,
flushed row by row): path, logit, probability, decision (fake/real/no_face), backend, precision,
model_sha256, error, faces, face_boxes (whole photos: see --faces); then the C2PA provenance read from the same bytes (c2pa:
none/valid/trusted/invalid, c2pa_failures, claim_generator, ai_declared, provenance_error; null
without the c2pa extra or with --no-provenance) and the combined verdict (ai-declared, conflict,
invalid-manifest, fake, real; the policy is in docs/c2pa.md).

Inputs: files named on the command line are always scanned (a bad one gets an error row).
Inside folders (walked recursively, in sorted order) a file is scanned when it has an image
suffix (.jpg .jpeg .png .webp .bmp .tif .tiff .gif .heic .heif .avif) or, whatever its name, when
its first bytes are a JPEG, PNG, WebP, BMP, TIFF, GIF, HEIF or AVIF signature (uploads stored
under bare hash names; HEIC needs pi-heif, in the faces extra);
--extensions restricts folders to the suffixes given. Other files are skipped and counted in
the summary, so a stray README or .DS_Store never becomes an error row. Empty, truncated,
non-image and oversized files become rows with their error; the scan goes on.
"""

SCAN_EPILOG = """\
The chosen backend and why are printed to stderr first. On a terminal a progress bar shows
images/s; when stderr is not a terminal there is no bar and the final summary is one JSON line
(images, scored, fake, real, no_face, errors, seconds, images_per_s, out, skipped_done,
skipped_non_image). --quiet prints nothing but errors.

Exit status: 0 when the scan finished (even with error rows); 1 when every input of this run
failed; 2 on a usage or bundle error; 130 when interrupted (rows written so far are kept: rerun
with --resume to finish).
"""


def register(sub: argparse._SubParsersAction) -> None:
    from dfx.runtime.scan.flags import add_backend_flags, add_faces_flags

    p = sub.add_parser(
        "scan",
        help="score images (files/folders) with a bundle; one row per input",
        description=SCAN_DESCRIPTION,
        epilog=SCAN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("bundle", metavar="BUNDLE", help="bundle folder (made by `dfx train`, ideally `dfx export`ed)")
    p.add_argument("paths", metavar="PATH", nargs="+", help="image files and/or folders to scan")
    p.add_argument("--out", required=True, metavar="FILE", help="where rows go: FILE.jsonl or FILE.csv")
    add_backend_flags(p, batch="images per inference batch (default 32; --engine ray: 32 per CPU actor, 64 per GPU actor)",
                      public_key="trusted public key: refuse a bundle that is unsigned or not signed by it (default: "
                      "$DFX_PUBLIC_KEY; without one the scan says whether the bundle is signed)")
    add_faces_flags(p)
    p.add_argument("--workers", type=int, metavar="N", help="decoder threads (default: one per core, 2..8)")
    p.add_argument("--threshold", type=float, metavar="LOGIT", help="decision threshold on the logit (default: the bundle's); logit >= it means fake")
    p.add_argument("--extensions", metavar="EXT[,EXT...]", help="inside folders scan only files with these suffixes "
                   "(e.g. jpg,png); default: image suffixes plus any file whose first bytes are an image")
    p.add_argument("--check-parity", action="store_true", help="before scanning, run the bundle's parity sample through the "
                   "chosen backend on this machine and refuse to start when it misses its tolerance against Keras (exit 2)")
    p.add_argument("--resume", action="store_true", help="skip inputs already in --out (from a killed scan) and append the rest")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out instead of refusing")
    p.add_argument("--quiet", action="store_true", help="no backend line, progress bar or summary")
    # The rooms around the scan (provenance, ray) add their own flags to this parser when they
    # register (dfx.cli imports them after this module): the scan knows none of them.
    p.set_defaults(handler=scan_command)


def scan_command(args: argparse.Namespace) -> int:
    from dfx.bundle import Bundle
    from dfx.images import IMAGE_SUFFIXES, parse_extensions, walk_images
    from dfx.runtime.scan.pipeline import face_options, iter_results
    from dfx.runtime.scan.results import ResultWriter, RowCounts, output_format, read_results
    from dfx.runtime.scan.select import choose_runner

    if args.batch is None:
        args.batch = 32
    if args.batch < 1:
        raise DfxError(f"--batch must be >= 1, not {args.batch}")
    output_format(args.out)
    if os.path.exists(args.out) and not (args.resume or args.overwrite):
        raise DfxError(f"{args.out} already exists", hint="pass --resume to finish that scan, or --overwrite to start over")
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))

    try:
        extensions = parse_extensions(getattr(args, "extensions", None))
    except ValueError as exc:
        raise DfxError(f"--extensions: {exc}", hint="give suffixes such as --extensions jpg,png") from exc
    from dfx.signing import trusted_key_from_env

    public_key = getattr(args, "public_key", None) or trusted_key_from_env()
    bundle = Bundle.open(args.bundle, public_key=public_key)
    walked, non_images = walk_images(args.paths, extensions)
    files = list(dict.fromkeys(walked))  # a file named twice is scanned once
    if not files:
        raise DfxError(f"no image files in {' '.join(args.paths)}", hint="dfx reads " + " ".join(IMAGE_SUFFIXES))
    earlier = read_results(args.out, repair=True) if args.resume else []  # repair: cut a half-written last row
    done = {r.path for r in earlier}
    todo = [f for f in files if f not in done]
    runner, choice = choose_runner(bundle, args.backend, args.precision, threads=args.threads)
    say(f"dfx scan: backend {choice.reason}")
    say(f"dfx scan: {bundle.signature_line}")
    faces, faces_line = face_options(bundle, getattr(args, "faces", "off"), getattr(args, "no_face", "no_face"),
                                     getattr(args, "min_face", None))
    say(f"dfx scan: {faces_line}")
    # A room's row hook (the provenance room's reads C2PA), set on this parser when it registered.
    hook: ScanHook | None = args.row_hook(args, say) if getattr(args, "row_hook", None) else None
    if done:
        say(f"dfx scan: resuming: {len(files) - len(todo)} of {len(files)} inputs already in {args.out}")
        models = {r.model_sha256 for r in earlier if r.model_sha256}
        if models and choice.sha256 not in models:
            say("dfx scan: warning: the earlier rows came from another model file (model_sha256 differs)")

    from tqdm import tqdm

    counts = RowCounts()
    threshold = bundle.threshold if args.threshold is None else args.threshold
    if getattr(args, "check_parity", False):
        from dfx.runtime.scan.parity_check import require_parity

        runner.activate()
        checked = require_parity(bundle, runner)
        say(f"dfx scan: parity on this machine: {checked['form']} agrees with Keras on {checked['agreement']:.1%} of "
            f"{checked['images']} images (max |logit difference| {checked['max_abs_diff']:.2g}) on {checked['cpu']}")
    with runner, ResultWriter(args.out, append=args.resume) as writer:
        began = time.perf_counter()
        with tqdm(total=len(todo), unit="img", disable=True if args.quiet else None, file=sys.stderr, dynamic_ncols=True) as bar:
            results = iter_results(
                todo,
                runner,
                size=bundle.input_size,
                fit=bundle.fit,
                threshold=threshold,
                batch_size=args.batch,
                workers=args.workers,
                model_sha256=choice.sha256,
                hook=hook,
                probability=bundle.probability,
                faces=faces,
            )
            for result in results:
                writer.write(result)
                counts.add(result.decision, result.error)
                if hook is not None:
                    hook.tally(result)
                bar.update(1)
                if counts["images"] % 64 == 0:
                    bar.set_postfix(fake=counts["fake"], errors=counts["errors"], refresh=False)
        seconds = time.perf_counter() - began
    summary = {
        **counts,
        "seconds": round(seconds, 3),
        "images_per_s": round(counts["images"] / seconds, 1) if seconds > 0 else 0.0,
        "out": os.fspath(args.out),
        "skipped_done": len(files) - len(todo),
        "skipped_non_image": len(non_images),
        "backend": runner.backend,
        "precision": runner.precision,
        **(hook.summary() if hook is not None else {}),
    }
    if sys.stderr.isatty():
        say(
            f"dfx scan: {counts['images']} images: {counts['fake']} fake, {counts['real']} real, "
            + (f"{counts['no_face']} without a face, " if counts["no_face"] else "")
            + f"{counts['errors']} errors; {summary['images_per_s']} images/s -> {args.out}"
            + (f"; {summary['skipped_done']} already done" if summary["skipped_done"] else "")
            + (f"; {summary['skipped_non_image']} non-image files skipped" if summary["skipped_non_image"] else "")
            + (hook.summary_line() if hook is not None else "")
        )
    else:
        say(json.dumps(summary))
    return 1 if counts["images"] and counts["errors"] == counts["images"] else 0

