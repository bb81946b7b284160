"""The service without HTTP: the batcher, the model it serves, readiness, reload and drain.

States: loading (live, not ready) -> ready -> draining (live, not ready; in-flight requests
finish) -> closed; `failed` when the first load failed (nothing to serve). A reload loads and
checks the new bundle beside the old one and swaps it in between two batches; if it fails, the
old model keeps serving and the error goes to the log and to /metrics.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Callable

from dfx.errors import DfxError
from dfx.runtime.serve.batcher import DynamicBatcher
from dfx.runtime.serve.config import ServeConfig
from dfx.runtime.serve.metrics import ServeMetrics
from dfx.runtime.scan.model import LoadedModel, load_model
from dfx.runtime.scan.rows import RowHook

log = logging.getLogger("dfx.serve")


class ReloadError(DfxError):
    """A reload failed; the model that was serving still is."""


class Service:
    def __init__(self, config: ServeConfig, *, on_fatal: Callable[[str], None] | None = None):
        self.config = config
        self.metrics = ServeMetrics()
        self.batcher = DynamicBatcher(config.batch, observer=self.metrics, hook=_provenance_hook(config),
                                      faces=config.faces, no_face=config.no_face, min_face=config.min_face)
        self.metrics.track_admitted(lambda: self.batcher.admitted)
        self.metrics.ready.set_function(lambda: 1.0 if self.ready else 0.0)
        self.state = "loading"
        self.load_error: str | None = None  # why the first load failed (state "failed")
        self._on_fatal = on_fatal  # the CLI stops the server when there is nothing to serve
        self._reload_lock = threading.Lock()  # one reload at a time
        self.bundle_path = os.fspath(config.bundle)

    # ---- lifecycle ---------------------------------------------------------------------------------
    @property
    def model(self) -> LoadedModel | None:
        return self.batcher.model

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def live(self) -> bool:
        return self.state in ("loading", "ready", "draining")

    def start(self, model: LoadedModel | None = None, *, background: bool = True) -> None:
        """Serve `model`, or load the configured bundle (in a thread when `background`, so the
        HTTP server answers liveness at once and readiness once the model is up)."""
        if model is not None:
            self._install(model)
            self.state = "ready"
            return
        if background:
            threading.Thread(target=self._first_load, name="dfx-serve-load", daemon=True).start()
        else:
            self._first_load()

    def _first_load(self) -> None:
        try:
            model = self._load(self.bundle_path)
        except Exception as exc:
            self.load_error = str(exc)
            self.state = "failed"
            log.error("dfx serve: cannot load %s: %s", self.bundle_path, exc)
            if self._on_fatal is not None:
                self._on_fatal(self.load_error)
            return
        if self.state == "loading":  # not closed meanwhile
            self._install(model)
            self.state = "ready"
            log.info("dfx serve: ready: %s", model.reason)
        else:
            model.close()

    def _load(self, path: str) -> LoadedModel:
        c = self.config
        return load_model(path, c.backend, c.precision, threads=c.threads, threshold=c.threshold, public_key=c.public_key)

    def _install(self, model: LoadedModel) -> LoadedModel | None:
        old = self.batcher.swap(model)
        self.metrics.set_model(self.config.model_name, model.describe())
        return old

    # ---- reload ----------------------------------------------------------------------------------
    def reload(self, bundle: str | os.PathLike | None = None) -> LoadedModel:
        """Load `bundle` (default: the configured folder, re-read), check it, swap it in.

        On failure raises ReloadError and keeps the old model; the error is logged and shown in
        /metrics (dfx_model_reload_failed, dfx_model_reload_error)."""
        path = os.fspath(bundle) if bundle is not None else self.bundle_path
        with self._reload_lock:
            if self.state not in ("ready", "loading"):
                raise ReloadError(f"cannot reload while {self.state}")
            try:
                model = self._load(path)
            except Exception as exc:
                error = f"reload of {path} failed, the old model keeps serving: {exc}"
                log.error("dfx serve: %s", error)
                self.metrics.reloaded(str(exc))
                raise ReloadError(error) from exc
            old = self._install(model)
            self.bundle_path = path
            if self.state == "loading":
                self.state = "ready"
            self.metrics.reloaded(None)
            log.info("dfx serve: reloaded %s: %s (sha256 %s)", path, model.reason, model.sha256[:12])
        if old is not None:
            old.close()  # swap waited for the batch that used it: nothing runs on it now
        return model

    # ---- drain and close -------------------------------------------------------------------------
    def begin_drain(self) -> None:
        """Not ready from now on; refuse new requests; queued images run without waiting."""
        if self.state in ("loading", "ready"):
            self.state = "draining"
            log.info("dfx serve: draining (%d images in flight)", self.batcher.admitted)
        self.batcher.stop_accepting()

    def close(self, timeout_s: float | None = None) -> None:
        self.begin_drain()
        model = self.batcher.close(self.config.drain_timeout_s if timeout_s is None else timeout_s)
        self.state = "closed"
        if model is not None:
            model.close()


def _provenance_hook(config: ServeConfig) -> RowHook:
    """The provenance room's row hook: C2PA columns when reading (on, and the `c2pa` extra
    installed), else null columns and the detector's decision as the verdict."""
    from dfx.runtime.provenance.hook import ProvenanceHook

    return ProvenanceHook.maybe(config.provenance, config.trust_anchors)
