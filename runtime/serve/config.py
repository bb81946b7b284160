"""The service's settings: one frozen dataclass, shared by the CLI, the app factory and tests."""

from __future__ import annotations

from dataclasses import dataclass, field

from dfx.errors import DfxError
from dfx.runtime.serve.batcher import BatchConfig

DEFAULT_MODEL_NAME = "dfx"


class ServeConfigError(DfxError):
    """The settings contradict each other (e.g. a request may carry more images than fit the queue)."""


@dataclass(frozen=True)
class ServeConfig:
    bundle: str  # the bundle folder served (and re-read on reload)
    backend: str = "auto"  # as `dfx scan --backend`; `auto` takes the fastest runner this host has
    precision: str | None = None  # force fp32/fp16/int8; None: the backend's fastest
    threads: int | None = None  # CPU backends' inference threads; None: physical cores
    threshold: float | None = None  # decision threshold on the logit; None: the bundle's
    # A trusted public key (PEM file): a bundle unsigned or signed by another key is refused,
    # at start and on every reload. None: $DFX_PUBLIC_KEY if set, else any bundle loads.
    public_key: str | None = None
    model_name: str = DEFAULT_MODEL_NAME  # the OIP model name: /v2/models/{model_name}
    batch: BatchConfig = field(default_factory=BatchConfig)  # dynamic batching, queue bound, deadline
    max_body_bytes: int = 32 * 1024 * 1024  # larger request bodies get 413 before they are read whole
    max_images: int = 64  # images per request; more get 413 (a gateway should split them)
    # Bearer token for everything but health probes and /metrics; None: no auth. Kept out of
    # repr() so a logged config never shows it.
    token: str | None = field(default=None, repr=False)
    faces: str = "auto"  # whole photos, as `dfx scan --faces`: off | auto | all
    no_face: str = "no_face"  # a searched photo with no face: no_face | score (as `dfx scan --no-face`)
    min_face: int | None = None  # smallest face looked for, px (as `dfx scan --min-face`; None: from the model window)
    provenance: bool = True  # read C2PA manifests of encoded images, as dfx scan does (needs the c2pa extra)
    trust_anchors: str | None = None  # PEM of C2PA trust anchors ("trusted" vs "valid"); None: none
    drain_timeout_s: float = 30.0  # on SIGTERM, how long in-flight requests may take to finish
    retry_after_s: int = 1  # the Retry-After a 503 (queue full, loading, draining) suggests

    def __post_init__(self) -> None:
        if self.max_images < 1 or self.max_body_bytes < 1:
            raise ServeConfigError("max_images and max_body_bytes must be >= 1")
        if self.max_images > self.batch.max_queue_images:
            # A request that can never fit the queue would get 503 forever.
            raise ServeConfigError(
                f"max_images ({self.max_images}) exceeds the queue bound ({self.batch.max_queue_images})",
                hint="raise --max-queue or lower --max-images",
            )
        if self.token is not None and not self.token.strip():
            raise ServeConfigError("the bearer token is empty", hint="put the token in the file or variable, or drop --token-file/--token-env")
