"""The ASGI app: `create_app(config)` returns a FastAPI app for uvicorn (or Ray Serve's ingress).

    POST /v1/screen                     images as the raw body (image/*, application/octet-stream)
                                        or multipart files -> {"model": ..., "results": [row, ...]}
    GET  /v2, /v2/health/live, /v2/health/ready
    GET  /v2/models/{name}[/versions/1], .../ready
    POST /v2/models/{name}[/versions/1]/infer     Open Inference Protocol (oip.py)
    POST /v1/admin/reload               reload the bundle (needs the bearer token)
    GET  /metrics                       Prometheus text format

Answers a gateway understands: 401 without the token (when one is set), 413 for a body over
max_body_bytes or more than max_images images, 415 for a content type we do not read, 503 +
Retry-After while loading, draining or when the queue is full, 504 past the deadline. Errors are
JSON `{"error": "..."}`, the shape Triton and tritonclient use. Health probes and /metrics need
no token, so orchestrators and scrapers work unchanged.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

from dfx.errors import require
from dfx.runtime.scan.model import LoadedModel
from dfx.runtime.scan.results import Result
from dfx.runtime.serve import oip
from dfx.runtime.serve.batcher import DeadlineExceeded, NotReady, QueueFull
from dfx.runtime.serve.config import ServeConfig
from dfx.runtime.serve.service import ReloadError, Service

# This module is the HTTP layer: importing it needs the `serve` extra (with an install hint).
fastapi = require("fastapi", "serve", "dfx serve")
from fastapi import Request  # noqa: E402  (FastAPI resolves handler annotations in module globals)


access_log = logging.getLogger("dfx.serve.access")
OPEN_PATHS = ("/v2/health/live", "/v2/health/ready", "/metrics")  # no token: probes and scrapers
RAW_TYPES = ("application/octet-stream",)  # plus image/*: one image as the whole body
OIP_TYPES = ("application/json", "application/octet-stream")  # tritonclient sends none at all


class HttpError(Exception):
    """An answer other than 200, raised anywhere in a handler."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def endpoint_of(path: str) -> str:
    """A bounded label for metrics and logs (never the raw path: model names are arbitrary)."""
    if path == "/v1/screen":
        return "screen"
    if path.startswith("/v2/models/"):
        return "infer" if path.endswith("/infer") else "model_ready" if path.endswith("/ready") else "model_metadata"
    return {"/v2": "server_metadata", "/v2/health/live": "live", "/v2/health/ready": "ready", "/metrics": "metrics",
            "/v1/admin/reload": "reload"}.get(path, "other")


def create_app(config: ServeConfig, *, model: LoadedModel | None = None, on_fatal: Callable[[str], None] | None = None) -> Any:
    """The FastAPI app serving `config.bundle` (or an already loaded `model`).

    The model loads in the background when the app starts (lifespan), so liveness answers at
    once and readiness once it is up; the service is `app.state.service`."""
    from starlette.responses import JSONResponse, Response

    from dfx import __version__

    service = Service(config, on_fatal=on_fatal)

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        service.start(model)
        try:
            yield
        finally:
            await asyncio.to_thread(service.close)

    app = fastapi.FastAPI(title="dfx serve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> Any:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(HttpError)
    async def _http_error(request: Any, exc: HttpError) -> Any:
        return error(exc.status, str(exc), exc.headers)

    @app.exception_handler(fastapi.exceptions.HTTPException)
    async def _starlette_error(request: Any, exc: Any) -> Any:  # 404/405 of unknown routes, in our shape
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    from starlette.exceptions import HTTPException as StarletteHTTPException

    app.add_exception_handler(StarletteHTTPException, _starlette_error)
    retry = {"Retry-After": str(config.retry_after_s)}

    # ---- shared steps -------------------------------------------------------------------------------
    async def read_body(request: Any) -> bytes:
        """The body, refused with 413 as soon as it is known to exceed max_body_bytes."""
        limit = config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                if int(declared) > limit:
                    raise HttpError(413, f"the body is {int(declared)} bytes; at most {limit}")
            except ValueError:
                raise HttpError(400, "Content-Length is not a number") from None
        body = bytearray()
        async for chunk in request.stream():  # chunked bodies have no Content-Length: count as they come
            body += chunk
            if len(body) > limit:
                raise HttpError(413, f"the body exceeds {limit} bytes")
        return bytes(body)

    async def score(request: Any, sources: list[Any], names: list[str], timeout_s: float | None = None) -> list[Result]:
        if not sources:
            raise HttpError(400, "the request has no images")
        if len(sources) > config.max_images:
            raise HttpError(413, f"{len(sources)} images in one request; at most {config.max_images}")
        request.scope["dfx.images"] = len(sources)
        # The deadline runs from the request's arrival: time spent reading its body counts.
        arrived = request.scope.get("dfx.arrived", time.monotonic())
        wait = min(timeout_s or config.batch.timeout_s, config.batch.timeout_s) - (time.monotonic() - arrived)
        if wait <= 0:
            raise HttpError(504, "the deadline passed while the request was being read")
        try:
            future = service.batcher.submit(sources, names, wait)
        except QueueFull as exc:
            after = max(config.retry_after_s, int(exc.retry_after_s + 0.999))  # whole seconds, rounded up
            raise HttpError(503, str(exc), {"Retry-After": str(after)}) from None
        except NotReady as exc:
            raise HttpError(503, str(exc), retry) from None
        try:
            # The worker fails the future at its deadline; this wait is the backstop, and
            # cancelling it (timeout, disconnect) tells the batcher to drop the images.
            return await asyncio.wait_for(asyncio.wrap_future(future), wait + 0.25)
        except (asyncio.TimeoutError, DeadlineExceeded):
            raise HttpError(504, f"no answer within the deadline ({min(timeout_s or config.batch.timeout_s, config.batch.timeout_s):g} s)") from None

    def content_type(request: Any) -> str:
        return request.headers.get("content-type", "").split(";")[0].strip().lower()

    def current_model() -> LoadedModel:
        loaded = service.model
        if loaded is None or not service.live:
            raise HttpError(503, "the model is not loaded yet" if service.live else f"the service is {service.state}", retry)
        return loaded

    def check_model(name: str, version: str | None) -> LoadedModel:
        if name != config.model_name:
            raise HttpError(404, f"unknown model {name!r}; this server serves {config.model_name!r}")
        if version not in (None, "", "1"):
            raise HttpError(404, f"model {name!r} has version 1 only, not {version!r}")
        return current_model()

    # ---- /v1/screen -------------------------------------------------------------------------------
    @app.post("/v1/screen")
    async def screen(request: Request) -> Any:
        kind = content_type(request)
        if kind == "multipart/form-data":
            sources, names = await multipart_images(request)
        elif kind.startswith("image/") or kind in RAW_TYPES:
            body = await read_body(request)
            if not body:
                raise HttpError(400, "the body is empty")
            sources, names = [body], [request.headers.get("x-filename") or f"<{len(body)} bytes>"]
        else:
            raise HttpError(415, f"content type {kind or '(none)'!r} is not read here; send image/*, "
                            "application/octet-stream (one image) or multipart/form-data (files)")
        results = await score(request, sources, names)
        loaded = service.model
        return JSONResponse({
            "model": {"name": config.model_name, **({"sha256": loaded.sha256, "backend": loaded.backend} if loaded else {})},
            "results": [r.to_dict() for r in results],  # the same columns as a `dfx scan` row
        })

    async def multipart_images(request: Any) -> tuple[list[bytes], list[str]]:
        from starlette.datastructures import UploadFile
        from starlette.formparsers import MultiPartException, MultiPartParser

        body = await read_body(request)

        async def replay() -> AsyncIterator[bytes]:
            yield body

        # The body is already in memory and bounded; files beyond max_images are counted, not
        # parsed endlessly (the parser stops at max_images + 1).
        parser = MultiPartParser(request.headers, replay(), max_files=config.max_images + 1, max_fields=100)  # type: ignore[arg-type]
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            status = 413 if "too many files" in str(exc).lower() else 400
            raise HttpError(status, f"multipart body: {exc}") from None
        try:
            files = [(key, value) for key, value in form.multi_items() if isinstance(value, UploadFile)]
            if len(files) > config.max_images:
                raise HttpError(413, f"{len(files)} images in one request; at most {config.max_images}")
            sources = [await value.read() for _, value in files]
            names = [value.filename or f"{key}[{i}]" for i, (key, value) in enumerate(files)]
        finally:
            await form.close()
        if not files:
            raise HttpError(400, "the multipart body has no files")
        return sources, names

    # ---- Open Inference Protocol ----------------------------------------------------------------------
    @app.get("/v2")
    async def server_metadata() -> Any:
        return JSONResponse(oip.server_metadata(__version__))

    @app.get("/v2/health/live")
    async def live() -> Any:
        return Response(status_code=200 if service.live else 503)

    @app.get("/v2/health/ready")
    async def ready() -> Any:
        # The spec says "4xx" for false; 503 is what load balancers and gateways read as
        # "not now", and tritonclient reads any non-200 as not ready.
        return Response(status_code=200 if service.ready else 503, headers=None if service.ready else retry)

    async def metadata(name: str, version: str | None = None) -> Any:
        loaded = check_model(name, version)
        return JSONResponse(oip.model_metadata(config.model_name, loaded.input_size, loaded.backend))

    async def model_ready(name: str, version: str | None = None) -> Any:
        if name != config.model_name or version not in (None, "", "1"):
            raise HttpError(404, f"unknown model {name!r}")
        return Response(status_code=200 if service.ready else 503, headers=None if service.ready else retry)

    async def infer(request: Request, name: str, version: str | None = None) -> Any:
        check_model(name, version)
        kind = content_type(request)
        if kind and kind not in OIP_TYPES:
            raise HttpError(415, f"content type {kind!r} is not an inference request; send application/json "
                            "(or the binary extension with Inference-Header-Content-Length)")
        body = await read_body(request)
        header_length = request.headers.get("inference-header-content-length")
        try:
            parsed = oip.parse_infer_request(body, int(header_length) if header_length is not None else None, config.max_images)
        except ValueError:
            raise HttpError(400, "Inference-Header-Content-Length is not a number") from None
        except oip.OipError as exc:
            raise HttpError(exc.status, str(exc)) from None
        results = await score(request, parsed.sources, parsed.names, parsed.timeout_s)
        payload, headers = oip.encode_infer_response(config.model_name, parsed, results)
        return Response(payload, headers=headers)

    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.add_api_route(prefix, metadata, methods=["GET"])
        app.add_api_route(prefix + "/ready", model_ready, methods=["GET"])
        app.add_api_route(prefix + "/infer", infer, methods=["POST"])

    # ---- operations -----------------------------------------------------------------------------------
    @app.post("/v1/admin/reload")
    async def reload(request: Request) -> Any:
        if config.token is None:
            raise HttpError(403, "the reload endpoint needs a bearer token: start dfx serve with --token-file or --token-env (or send SIGHUP)")
        body = await read_body(request)
        try:
            target = (json.loads(body) if body.strip() else {}).get("bundle")
        except (ValueError, AttributeError):
            raise HttpError(400, 'the body must be empty or JSON {"bundle": "PATH"}') from None
        try:
            loaded = await asyncio.to_thread(service.reload, target)
        except ReloadError as exc:
            raise HttpError(422, str(exc)) from None
        return JSONResponse({"model": {"name": config.model_name, **loaded.describe()}})

    @app.get("/metrics")
    async def metrics() -> Any:
        text, media_type = service.metrics.exposition()
        return Response(text, media_type=media_type)

    app.add_middleware(_Edge, service=service, token=config.token)
    return app


class _Edge:
    """Pure ASGI middleware around every HTTP request: bearer-token check, request id, the
    request counter and duration, and one structured (JSON) access-log line."""

    def __init__(self, app: Any, service: Service, token: str | None):
        self.app = app
        self.service = service
        self.token = token.encode() if token is not None else None

    def _authorized(self, scope: dict[str, Any]) -> bool:
        if self.token is None or scope["path"] in OPEN_PATHS:
            return True
        for key, value in scope.get("headers", ()):
            if key == b"authorization":
                scheme, _, given = value.partition(b" ")
                # Constant time: the comparison must not reveal how much of a guess was right.
                return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token)
        return False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.datastructures import MutableHeaders
        from starlette.responses import JSONResponse

        began = time.perf_counter()
        scope["dfx.arrived"] = time.monotonic()  # the request's deadline counts from here
        status = [500]  # what an exception that escapes the app becomes
        request_id = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"x-request-id"), None) or uuid.uuid4().hex[:16]

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                MutableHeaders(scope=message).append("x-request-id", request_id)
            await send(message)

        try:
            if self._authorized(scope):
                await self.app(scope, receive, send_with_id)
            else:
                deny = JSONResponse({"error": "missing or wrong bearer token"}, status_code=401, headers={"WWW-Authenticate": 'Bearer realm="dfx"'})
                await deny(scope, receive, send_with_id)  # type: ignore[arg-type]
        finally:
            seconds = time.perf_counter() - began
            endpoint = endpoint_of(scope["path"])
            self.service.metrics.request(endpoint, status[0], seconds)
            if access_log.isEnabledFor(logging.INFO):
                client = scope.get("client")
                access_log.info(json.dumps({
                    "ts": round(time.time(), 3), "request_id": request_id, "client": client[0] if client else None,
                    "method": scope["method"], "path": scope["path"], "endpoint": endpoint, "status": status[0],
                    "images": scope.get("dfx.images", 0), "ms": round(seconds * 1000, 2),
                }))
