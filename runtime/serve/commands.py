"""`dfx serve`: registered by dfx.cli; fastapi and uvicorn are imported only when it runs."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from dfx.errors import DfxError

SERVE_DESCRIPTION = """\
Serve a bundle's model over HTTP for moderation pipelines, on one model with dynamic batching
across requests (concurrent single-image callers share runner batches).

Endpoints:
  POST /v1/screen                 one image as the body (image/*, application/octet-stream) or
                                  several as multipart files; JSON with one `dfx scan` row each
  POST /v2/models/NAME/infer      Open Inference Protocol (KServe V2): input `images` BYTES [N]
                                  (encoded files) or `pixels` UINT8 [N,H,W,3]; outputs logits,
                                  probability, decision, error; JSON or the binary extension
  GET  /v2, /v2/health/live, /v2/health/ready, /v2/models/NAME[/ready]
  POST /v1/admin/reload           reload the bundle (bearer token required)
  GET  /metrics                   Prometheus: requests by outcome, images, queue/compute/batch
                                  histograms, the model's sha256 and backend
"""

SERVE_EPILOG = """\
Limits: a body over --max-body-mb or more than --max-images images gets 413; a content type not
listed above 415; a full queue (--max-queue images admitted, or more work queued than the
runner can finish within --timeout) 503 with Retry-After; no answer within --timeout 504. An
image that does not decode gets its own error row; the others are scored.

Operations: binds 127.0.0.1 unless --host says otherwise. Not ready while the model loads or
while draining. SIGTERM (or Ctrl-C) drains: no new requests, in-flight ones finish (up to
--drain-timeout), exit 0. SIGHUP reloads the bundle folder; if the new model fails to load, the
old one keeps serving and the error is logged and shown in /metrics. With --token-file or
--token-env every endpoint but the health probes and /metrics needs `Authorization: Bearer TOKEN`.
TLS: --ssl-certfile and --ssl-keyfile. One JSON access-log line per request on stderr.

Needs the `serve` extra: pip install 'dfx[serve]' (plus `cpu` or `gpu` for the runtime).
"""


def register(sub: argparse._SubParsersAction) -> None:
    from dfx.runtime.scan.flags import add_backend_flags, add_faces_flags
    from dfx.runtime.serve.batcher import BatchConfig
    from dfx.runtime.serve.config import DEFAULT_MODEL_NAME, ServeConfig

    b, s = BatchConfig.__dataclass_fields__, ServeConfig.__dataclass_fields__  # defaults come from the configs
    p = sub.add_parser("serve", help="serve a bundle over HTTP (/v1/screen and the Open Inference Protocol)",
                       description=SERVE_DESCRIPTION, epilog=SERVE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", metavar="BUNDLE", help="bundle folder (ideally `dfx export`ed)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one, announced on stderr)")
    p.add_argument("--model-name", default=DEFAULT_MODEL_NAME, metavar="NAME", help="the OIP model name (default %(default)s)")
    add_backend_flags(p, public_key="trusted public key: refuse a bundle that is unsigned or not signed by it, at start and on "
                      "every reload (default: $DFX_PUBLIC_KEY; without one any bundle loads and the log says whether it is signed)")
    p.add_argument("--threshold", type=float, metavar="LOGIT", help="decision threshold on the logit (default: the bundle's)")
    p.add_argument("--max-batch", type=int, default=b["max_batch_size"].default, metavar="N", help="images per runner call (default %(default)s)")
    p.add_argument("--max-delay-us", type=int, default=b["max_queue_delay_us"].default, metavar="US",
                   help="how long a batch waits for more images after its first (default %(default)s µs)")
    p.add_argument("--max-queue", type=int, default=b["max_queue_images"].default, metavar="N",
                   help="images admitted at once; more get 503 + Retry-After (default %(default)s)")
    p.add_argument("--timeout", type=float, default=b["timeout_s"].default, metavar="S",
                   help="per-request deadline; later gets 504 (default %(default)g s)")
    p.add_argument("--workers", type=int, metavar="N", help="decoder threads (default: one per core, 2..8)")
    p.add_argument("--max-images", type=int, default=s["max_images"].default, metavar="N", help="images per request (default %(default)s)")
    p.add_argument("--max-body-mb", type=float, default=ServeConfig.max_body_bytes / 2**20, metavar="MB",
                   help="request body limit (default %(default)g MiB)")
    p.add_argument("--drain-timeout", type=float, default=s["drain_timeout_s"].default, metavar="S",
                   help="on SIGTERM, time for in-flight requests (default %(default)g s)")
    auth = p.add_mutually_exclusive_group()
    auth.add_argument("--token-file", metavar="FILE", help="require `Authorization: Bearer TOKEN`, TOKEN read from FILE")
    auth.add_argument("--token-env", metavar="VAR", help="require the bearer token held in environment variable VAR")
    p.add_argument("--ssl-certfile", metavar="PEM", help="serve HTTPS with this certificate (with --ssl-keyfile)")
    p.add_argument("--ssl-keyfile", metavar="PEM", help="the certificate's private key")
    add_faces_flags(p)
    p.add_argument("--no-provenance", action="store_true", help="do not read C2PA manifests (the provenance columns stay empty)")
    p.add_argument("--trust-anchors", metavar="PEM", help="C2PA trust anchors: manifests they vouch for read as 'trusted'")
    p.add_argument("--max-connections", type=int, default=1024, metavar="N",
                   help="connections + requests at once; beyond it uvicorn answers 503 (default %(default)s)")
    p.add_argument("--no-access-log", action="store_true", help="no per-request log line")
    p.add_argument("--malloc-arenas", type=int, default=2, metavar="N",
                   help="glibc malloc arenas (default %(default)s: keeps RSS flat under many threads; 0: glibc's default; "
                   "$MALLOC_ARENA_MAX wins when set)")
    p.set_defaults(handler=serve_command)


def read_token(token_file: str | None, token_env: str | None) -> str | None:
    """The bearer token from a file (first line, whitespace stripped) or an environment variable."""
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as handle:
                token = handle.readline().strip()
        except OSError as exc:
            raise DfxError(f"cannot read the token file {token_file}: {exc.strerror or exc}") from None
        if not token:
            raise DfxError(f"the token file {token_file} is empty")
        return token
    if token_env:
        token = os.environ.get(token_env, "").strip()
        if not token:
            raise DfxError(f"the environment variable {token_env} is unset or empty", hint=f"export {token_env}=... before dfx serve")
        return token
    return None


def serve_command(args: argparse.Namespace) -> int:
    from dfx.errors import require

    require("fastapi", "serve", "dfx serve")
    require("uvicorn", "serve", "dfx serve")
    require("prometheus_client", "serve", "dfx serve")
    from dfx.bundle import Bundle
    from dfx.runtime.scan.select import plan
    from dfx.runtime.serve.batcher import BatchConfig
    from dfx.runtime.serve.config import ServeConfig
    from dfx.runtime.serve.server import Listen, limit_malloc_arenas, serve

    limit_malloc_arenas(args.malloc_arenas)  # first: before any thread has an arena of its own
    from dfx.signing import trusted_key_from_env

    public_key = args.public_key or trusted_key_from_env()
    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        raise DfxError("TLS needs both --ssl-certfile and --ssl-keyfile")
    try:
        batch = BatchConfig(max_batch_size=args.max_batch, max_queue_delay_us=args.max_delay_us, max_queue_images=args.max_queue,
                            timeout_s=args.timeout, decode_workers=args.workers)
    except ValueError as exc:
        raise DfxError(str(exc)) from None
    config = ServeConfig(
        bundle=args.bundle, backend=args.backend, precision=args.precision, threads=args.threads, threshold=args.threshold,
        model_name=args.model_name, batch=batch, max_body_bytes=int(args.max_body_mb * 2**20), max_images=args.max_images,
        token=read_token(args.token_file, args.token_env), drain_timeout_s=args.drain_timeout, public_key=public_key,
        provenance=not args.no_provenance, trust_anchors=args.trust_anchors, faces=args.faces, no_face=args.no_face, min_face=args.min_face,
    )
    # Fail fast, before binding a port, on what can be checked cheaply: the manifest, the hashes
    # and the backend choice. Activation runs after the server is up (readiness says when).
    bundle = Bundle.open(args.bundle, public_key=public_key)
    choice, why = plan(bundle, args.backend, args.precision)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    print(f"dfx serve: {args.bundle}: backend {choice.backend} {why}", file=sys.stderr, flush=True)
    print(f"dfx serve: {bundle.signature_line}", file=sys.stderr, flush=True)
    return serve(config, Listen(host=args.host, port=args.port, ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile,
                                 access_log=not args.no_access_log, max_connections=args.max_connections))
