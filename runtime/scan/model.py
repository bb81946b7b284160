"""The model a service runs: a bundle, its activated Runner, the threshold, and how to make rows.

`load_model` opens and verifies the bundle (manifest and hashes), picks the runner as `dfx scan`
does, activates it and checks it on one image before it may serve, so a reload that would fail
on the first request fails here instead, while the old model keeps serving.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from dfx.bundle import Bundle
from dfx.errors import DfxError
from dfx.runtime.runners.base import Runner
from dfx.runtime.scan.results import Result


class ModelLoadError(DfxError):
    """A bundle could not be opened, activated or checked; the caller keeps what it had."""


@dataclass(frozen=True)
class LoadedModel:
    bundle: Bundle  # verified against its manifest when loaded
    runner: Runner  # active; only the batcher's worker calls it
    reason: str  # why choose_runner picked this backend, for the log
    threshold: float  # on the logit: logit >= threshold means "fake"
    sha256: str  # of the model file the runner loaded: every row carries it
    file: str  # bundle-relative name of that file

    @property
    def backend(self) -> str:
        return self.runner.backend

    @property
    def precision(self) -> str:
        return self.runner.precision

    @property
    def input_size(self) -> tuple[int, int]:
        return self.bundle.input_size

    @property
    def fit(self) -> str:
        return self.bundle.fit

    def row(self, name: str, logit: float, provenance: Any = None) -> Result:
        """A scored row, the same fields and values as a `dfx scan` row. `provenance` is the
        image's dfx.runtime.provenance.Provenance (None: not read)."""
        decision = "fake" if logit >= self.threshold else "real"
        # The bundle's calibrated P(fake), as the scan pipeline uses.
        return Result(path=name, logit=logit, probability=self.bundle.probability(logit), decision=decision, backend=self.backend,
                      precision=self.precision, model_sha256=self.sha256, error=None, **_provenance(decision, provenance))

    def error_row(self, name: str, error: str, provenance: Any = None) -> Result:
        return Result(path=name, logit=None, probability=None, decision=None, backend=self.backend,
                      precision=self.precision, model_sha256=self.sha256, error=error, **_provenance(None, provenance))

    def describe(self) -> dict[str, Any]:
        return {"bundle": os.fspath(self.bundle.root), "file": self.file, "sha256": self.sha256, "backend": self.backend,
                "precision": self.precision, "threshold": self.threshold, "input_size": list(self.input_size), "fit": self.fit}

    def close(self) -> None:
        self.runner.deactivate()


def _provenance(decision: str | None, provenance: Any) -> dict[str, Any]:
    """The row's C2PA columns and combined verdict, as `dfx scan` writes them (when this dfx has
    provenance columns at all)."""
    try:
        from dfx.runtime.provenance.c2pa import NOT_READ, combined_verdict
    except ImportError:
        return {}
    prov = provenance if provenance is not None else NOT_READ
    return {"verdict": combined_verdict(decision, prov.c2pa, prov.ai_declared), **prov.columns()}


def load_model(
    bundle: str | os.PathLike,
    backend: str = "auto",
    precision: str | None = None,
    *,
    threads: int | None = None,
    threshold: float | None = None,
    public_key: Any = None,
) -> LoadedModel:
    """Open, verify, activate and check a bundle's model. Raises ModelLoadError (or the
    SelectError/BundleError DfxError that says why) and leaves nothing active on failure."""
    from dfx.runtime.scan.select import choose_runner
    from dfx.signing import trusted_key_from_env

    # A trusted key (argument, else $DFX_PUBLIC_KEY) refuses unsigned or foreign bundles.
    key = public_key if public_key is not None else trusted_key_from_env()
    try:
        opened = Bundle.open(bundle, public_key=key)
        runner, reason = choose_runner(opened, backend, precision, threads=threads)
    except DfxError:
        raise
    except Exception as exc:  # a malformed manifest can fail in many ways: say which bundle
        raise ModelLoadError(f"cannot open the bundle {os.fspath(bundle)}: {type(exc).__name__}: {exc}") from exc
    try:
        runner.activate()
        # One image of zeros through the model: a file that loads but cannot run (or gives
        # NaN) is refused before it serves anyone.
        height, width = opened.input_size
        logit = float(runner.infer(np.zeros((1, height, width, 3), np.uint8))[0])
        if not math.isfinite(logit):
            raise ModelLoadError(f"{os.fspath(bundle)}: the model's check gave a non-finite logit ({logit})")
    except Exception as exc:
        runner.deactivate()
        if isinstance(exc, DfxError):
            raise
        raise ModelLoadError(f"cannot start {os.fspath(bundle)} on {runner.backend}: {type(exc).__name__}: {exc}") from exc
    return LoadedModel(
        bundle=opened,
        runner=runner,
        reason=reason,
        threshold=opened.threshold if threshold is None else float(threshold),
        sha256=str(getattr(runner, "model_sha256", "")),
        file=str(getattr(runner, "model_file", "")),
    )
