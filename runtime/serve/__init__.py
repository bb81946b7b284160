"""`dfx serve`: the detector as an HTTP service for moderation pipelines.

    clients ─► uvicorn ─► FastAPI app (app.py): /v1/screen, Open Inference Protocol /v2 (oip.py)
                              │ auth, limits, access log, /metrics (metrics.py)
                              ▼
                         Service (service.py): the model slot, readiness, reload, drain
                              ▼
                         DynamicBatcher (batcher.py): decode pool ─► queue ─► one Runner

Importing this package is light (no fastapi, uvicorn or onnxruntime): `dfx --help` registers the
command from `commands.py`, and the heavy modules load only when a server starts. The batcher
and the service work without HTTP; `app.create_app` is the ASGI app factory (for uvicorn, or for
Ray Serve's `@serve.ingress`).
"""
