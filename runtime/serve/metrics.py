"""Prometheus metrics of one service, in their own registry (two apps in one process, as in
tests or Ray replicas, never collide). Names follow Triton's for the same things where there is
one: nv_inference_queue_duration_us -> dfx_queue_duration_seconds, nv_inference_compute_infer
_duration_us -> dfx_compute_duration_seconds; Prometheus' convention of base units (seconds) wins
over Triton's microseconds."""

from __future__ import annotations

from typing import Callable

from dfx.errors import require

# Latency buckets from 1 ms to 30 s: a CPU batch of 32 at 256 px takes ~0.3 s.
SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256)
# The outcome label of each HTTP status a client can get from us.
OUTCOMES = {200: "ok", 400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
            405: "method_not_allowed", 413: "too_large", 415: "unsupported_media_type", 422: "bad_request",
            500: "error", 503: "unavailable", 504: "deadline"}


def outcome_of(status: int) -> str:
    return OUTCOMES.get(status, "ok" if status < 400 else "error")


class ServeMetrics:
    """The service's counters, histograms and info metrics; also the batcher's Observer."""

    def __init__(self) -> None:
        prom = require("prometheus_client", "serve", "dfx serve's /metrics")
        self._prom = prom
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.requests = prom.Counter("dfx_requests", "HTTP requests answered, by endpoint, outcome and status code",
                                     ["endpoint", "outcome", "code"], registry=r)
        self.request_duration = prom.Histogram("dfx_request_duration_seconds", "Time from request to response, by endpoint",
                                               ["endpoint"], buckets=SECONDS, registry=r)
        self.images = prom.Counter("dfx_images", "Images answered: scored; error (did not decode, or inference failed); "
                                   "expired (their request's deadline passed before compute)", ["outcome"], registry=r)
        self.decode_duration = prom.Histogram("dfx_decode_duration_seconds", "Decode + fit time per image (dfx.images)",
                                              buckets=SECONDS, registry=r)
        self.queue_duration = prom.Histogram("dfx_queue_duration_seconds", "Time a decoded image waited for its batch "
                                             "(Triton: nv_inference_queue_duration_us)", buckets=SECONDS, registry=r)
        self.compute_duration = prom.Histogram("dfx_compute_duration_seconds", "Runner time per batch "
                                               "(Triton: nv_inference_compute_infer_duration_us)", buckets=SECONDS, registry=r)
        self.batch_size = prom.Histogram("dfx_batch_size", "Images per runner call (dynamic batching across requests)",
                                         buckets=BATCH_SIZES, registry=r)
        self.admitted = prom.Gauge("dfx_queue_images", "Images admitted and not yet answered (the bound gives 503)", registry=r)
        self.ready = prom.Gauge("dfx_ready", "1 when the service takes requests (loaded, not draining)", registry=r)
        self.model = prom.Info("dfx_model", "The model being served", registry=r)
        self.reloads = prom.Counter("dfx_model_reloads", "Model reloads by outcome (a failed one keeps the old model)",
                                    ["outcome"], registry=r)
        self.reload_failed = prom.Gauge("dfx_model_reload_failed", "1 when the last reload failed (the old model serves)", registry=r)
        self.reload_error = prom.Info("dfx_model_reload_error", "The last failed reload's error, '' after a success", registry=r)
        for outcome in ("scored", "error", "expired"):
            self.images.labels(outcome)  # present at 0, so rates work from the first scrape
        for outcome in ("ok", "failed"):
            self.reloads.labels(outcome)
        self.reload_error.info({"error": ""})

    # ---- the batcher's Observer ----------------------------------------------------------------------
    def on_decode(self, seconds: float, ok: bool) -> None:
        self.decode_duration.observe(seconds)
        if not ok:
            self.images.labels("error").inc()

    def on_batch(self, size: int, queue_seconds: list[float], compute_seconds: float, ok: bool) -> None:
        self.batch_size.observe(size)
        self.compute_duration.observe(compute_seconds)
        for wait in queue_seconds:
            self.queue_duration.observe(wait)
        self.images.labels("scored" if ok else "error").inc(size)

    def on_expired(self, images: int) -> None:
        self.images.labels("expired").inc(images)

    # ---- the service ------------------------------------------------------------------------------
    def track_admitted(self, read: Callable[[], float]) -> None:
        self.admitted.set_function(read)

    def set_model(self, name: str, info: dict[str, object]) -> None:
        self.model.info({"name": name, **{k: str(v) for k, v in info.items()}})

    def reloaded(self, error: str | None) -> None:
        self.reloads.labels("failed" if error else "ok").inc()
        self.reload_failed.set(1 if error else 0)
        self.reload_error.info({"error": (error or "")[:300]})

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, outcome_of(status), str(status)).inc()
        self.request_duration.labels(endpoint).observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """(the text format, its content type) for GET /metrics."""
        return self._prom.generate_latest(self.registry), self._prom.CONTENT_TYPE_LATEST
