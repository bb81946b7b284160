"""`dfx c2pa sign` and `dfx c2pa read`: sign the detector's finding into an image's C2PA
manifest, and show what an image's manifest says (the same reader `dfx scan` uses); and the
provenance flags of `dfx scan` (--no-provenance, --trust-anchors), which plug this room's row
hook into the scan."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from dfx.errors import DfxError

SIGN_DESCRIPTION = """\
Scan IMAGE with the bundle's model and write SIGNED: the same image (pixels untouched) with a
new C2PA manifest signed by --cert/--key. The manifest has the EDIT intent, the original (with
its own manifest, if any) as its parent ingredient, and an `org.dfx.detection` assertion holding
the decision, logit, probability, threshold, model sha256, backend, precision and dfx version.
The signed file is read back before this command returns, and its state is printed.

--cert is a PEM chain: the signing certificate first, then intermediates (not the root). c2pa
accepts a v3 end-entity certificate (not a CA) with keyUsage digitalSignature, extendedKeyUsage
emailProtection or documentSigning, an authority key identifier and an O= in the subject.
"""


def register(sub: argparse._SubParsersAction) -> None:
    from dfx.runtime.provenance.c2pa import ALGORITHMS
    from dfx.runtime.scan.flags import add_backend_flags

    group = sub.add_parser("c2pa", help="C2PA Content Credentials: sign the finding into an image, read a manifest",
                           description="C2PA Content Credentials (pip install 'dfx[c2pa]').")
    verbs = group.add_subparsers(dest="c2pa_command", metavar="VERB")
    group.set_defaults(handler=lambda args: (group.print_help(), 2)[1])

    p = verbs.add_parser("sign", help="scan an image and sign the finding into its C2PA manifest", description=SIGN_DESCRIPTION,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", metavar="IMAGE", help="a JPEG, PNG, WebP, TIFF or GIF file")
    p.add_argument("--bundle", required=True, metavar="BUNDLE", help="the bundle whose model makes the finding")
    p.add_argument("--cert", required=True, metavar="CHAIN.pem", help="PEM certificate chain, signing certificate first")
    p.add_argument("--key", required=True, metavar="KEY.pem", help="the signing certificate's PEM private key (unencrypted)")
    p.add_argument("--alg", default="es256", choices=ALGORITHMS, help="signature algorithm, matching the key (default es256)")
    p.add_argument("--tsa", metavar="URL", help="RFC 3161 timestamp authority to countersign with (network)")
    p.add_argument("--out", required=True, metavar="SIGNED", help="where the signed image goes")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--trust-anchors", metavar="PEM", help="trusted roots for the read-back (then `trusted` instead of `valid`)")
    add_backend_flags(p, threads=False, public_key=False)
    p.add_argument("--threshold", type=float, metavar="LOGIT", help="decision threshold on the logit (default: the bundle's)")
    p.set_defaults(handler=sign_command)

    r = verbs.add_parser("read", help="print what images' C2PA manifests say (one JSON line each)")
    r.add_argument("images", metavar="IMAGE", nargs="+")
    r.add_argument("--trust-anchors", metavar="PEM", help="PEM file of trusted root certificates")
    r.set_defaults(handler=read_command)

    scan = sub.choices.get("scan")
    if scan is not None:  # dfx.cli registers the scan first
        prov = scan.add_argument_group("C2PA provenance (pip install 'dfx[c2pa]'; see docs/c2pa.md)")
        prov.add_argument("--no-provenance", action="store_true", help="do not read C2PA manifests (the provenance columns stay empty)")
        prov.add_argument("--trust-anchors", metavar="PEM", help="PEM file of trusted root certificates: manifests signed under "
                          "them read `trusted` (without it at most `valid`)")
        scan.set_defaults(row_hook=scan_hook)


def scan_hook(args: argparse.Namespace, say: Any) -> Any:
    """The scan's row hook: C2PA columns when reading (said once when the c2pa extra is missing:
    not fatal), else null columns and the detector's decision as the verdict."""
    from dfx.runtime.provenance.hook import ProvenanceHook

    hook = ProvenanceHook.maybe(not getattr(args, "no_provenance", False), getattr(args, "trust_anchors", None))
    if not hook.reading and not getattr(args, "no_provenance", False):  # reading was asked for: the extra is missing
        say("dfx scan: C2PA provenance not read (pip install 'dfx[c2pa]' to read it)")
    return hook


def sign_command(args: argparse.Namespace) -> int:
    from dfx.errors import require
    from dfx.runtime.scan.detector import Detector
    from dfx.runtime.provenance.c2pa import ProvenanceReader, SigningIdentity, sign_image

    require("c2pa", "c2pa", "dfx c2pa sign")
    if os.path.abspath(args.out) == os.path.abspath(args.image):
        raise DfxError("--out must differ from IMAGE", hint="the original stays as it was; write the signed copy elsewhere")
    if os.path.exists(args.out) and not args.overwrite:
        raise DfxError(f"{args.out} already exists", hint="pass --overwrite to replace it")
    identity = SigningIdentity.from_files(args.cert, args.key, args.alg, args.tsa)
    reader = ProvenanceReader(args.trust_anchors)
    with Detector.load(args.bundle, args.backend, args.precision, threshold=args.threshold, provenance=False) as detector:
        signed, result = sign_image(detector, args.image, identity, args.out)
    back = reader.read(signed)
    print(json.dumps({"out": os.fspath(args.out), "decision": result.decision, "logit": result.logit, "c2pa": back.c2pa,
                      "c2pa_failures": list(back.failures), "backend": result.backend, "precision": result.precision}))
    if back.c2pa not in ("valid", "trusted"):
        print(f"dfx c2pa sign: warning: the signed file reads back {back.c2pa} ({'; '.join(back.failures) or back.error})", file=sys.stderr)
        return 1
    return 0


def read_command(args: argparse.Namespace) -> int:
    from dfx.images import ImageError, read_bytes
    from dfx.runtime.provenance.c2pa import ProvenanceReader, read_detection

    reader = ProvenanceReader(args.trust_anchors)
    failed = 0
    for image in args.images:
        try:
            data = read_bytes(image)
        except ImageError as exc:
            print(json.dumps({"path": image, "error": exc.reason}))
            failed += 1
            continue
        prov = reader.read(data)
        row = {"path": image, **prov.columns(), "source_types": list(prov.source_types)}
        if prov.c2pa not in (None, "none"):
            try:
                row["detection"] = read_detection(data, reader)
            except DfxError:
                row["detection"] = None
        print(json.dumps(row))
    return 1 if failed == len(args.images) else 0
