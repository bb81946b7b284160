"""A loaded bundle model: the bundle, its activated Runner, what was chosen and why, the threshold.

The one object behind the Detector, the service (`dfx serve`) and Ray's inference actors.
`load_model` opens and verifies the bundle (manifest, hashes, signature when a key is given),
picks the runner as `dfx scan` does, activates it and, with `check=True`, runs it on one image
first, so a reload that would fail on the first request fails here instead, while the old model
keeps serving.
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
from dfx.runtime.scan.rows import RowFactory, RowHook
from dfx.runtime.scan.select import Choice


class ModelLoadError(DfxError):
    """A bundle could not be opened, activated or checked; the caller keeps what it had."""


@dataclass(frozen=True)
class LoadedModel:
    bundle: Bundle  # verified against its manifest when loaded
    runner: Runner  # active
    choice: Choice  # backend, precision, file and sha256 the runner loaded, and why
    threshold: float  # on the logit: logit >= threshold means "fake"

    @property
    def backend(self) -> str:
        return self.runner.backend

    @property
    def precision(self) -> str:
        return self.runner.precision

    @property
    def reason(self) -> str:  # why choose_runner picked this backend, for the log
        return self.choice.reason

    @property
    def sha256(self) -> str:  # of the model file the runner loaded: every row carries it
        return self.choice.sha256

    @property
    def file(self) -> str:  # bundle-relative name of that file
        return self.choice.file

    @property
    def input_size(self) -> tuple[int, int]:
        return self.bundle.input_size

    @property
    def fit(self) -> str:
        return self.bundle.fit

    def rows(self, hook: RowHook | None = None) -> RowFactory:
        """The factory of this model's rows (the bundle's calibrated P(fake), its threshold)."""
        return RowFactory(self.backend, self.precision, self.sha256, self.threshold, self.bundle.probability, hook)

    def row(self, name: str, logit: float, columns: dict[str, Any] | None = None, hook: RowHook | None = None) -> Result:
        """A scored row, the same fields and values as a `dfx scan` row."""
        return self.rows(hook).scored(name, logit, columns)

    def error_row(self, name: str, error: str, columns: dict[str, Any] | None = None, hook: RowHook | None = None) -> Result:
        return self.rows(hook).error(name, error, columns)

    def describe(self) -> dict[str, Any]:
        return {"bundle": os.fspath(self.bundle.root), "file": self.file, "sha256": self.sha256, "backend": self.backend,
                "precision": self.precision, "threshold": self.threshold, "input_size": list(self.input_size), "fit": self.fit}

    def close(self) -> None:
        self.runner.deactivate()


def open_bundle(bundle: Bundle | str | os.PathLike, public_key: Any = None) -> Bundle:
    """Open and verify a bundle; a trusted key (argument, else $DFX_PUBLIC_KEY) refuses unsigned
    or foreign bundles. An opened Bundle is checked against the key only. `public_key=False`:
    no signature check (the caller made it, e.g. Ray's driver before shipping the files)."""
    from dfx.signing import trusted_key_from_env

    key = None if public_key is False else public_key if public_key is not None else trusted_key_from_env()
    if isinstance(bundle, Bundle):
        if key is not None:
            bundle.require_signature(key)
        return bundle
    return Bundle.open(bundle, public_key=key)


def load_model(
    bundle: Bundle | str | os.PathLike,
    backend: str = "auto",
    precision: str | None = None,
    *,
    threads: int | None = None,
    threshold: float | None = None,
    public_key: Any = None,
    check: bool = True,
    check_parity: bool = False,
) -> LoadedModel:
    """Open, verify, activate and (with `check`) check a bundle's model. Raises ModelLoadError
    (or the SelectError/BundleError DfxError that says why) and leaves nothing active on failure.

    `check` runs one image of zeros through the model: a file that loads but cannot run (or gives
    NaN) is refused. `check_parity` runs the bundle's parity sample through the chosen backend and
    raises ParityCheckError when it misses its tolerance on this machine."""
    from dfx.runtime.scan.select import choose_runner

    name = os.fspath(bundle.root if isinstance(bundle, Bundle) else bundle)
    try:
        opened = open_bundle(bundle, public_key)
        runner, choice = choose_runner(opened, backend, precision, threads=threads)
    except DfxError:
        raise
    except Exception as exc:  # a malformed manifest can fail in many ways: say which bundle
        raise ModelLoadError(f"cannot open the bundle {name}: {type(exc).__name__}: {exc}") from exc
    try:
        runner.activate()
        if check:
            height, width = opened.input_size
            logit = float(runner.infer(np.zeros((1, height, width, 3), np.uint8))[0])
            if not math.isfinite(logit):
                raise ModelLoadError(f"{name}: the model's check gave a non-finite logit ({logit})")
        if check_parity:
            from dfx.runtime.scan.parity_check import require_parity

            require_parity(opened, runner)
    except BaseException as exc:
        runner.deactivate()
        if isinstance(exc, DfxError) or not isinstance(exc, Exception):
            raise
        raise ModelLoadError(f"cannot start {name} on {runner.backend}: {type(exc).__name__}: {exc}") from exc
    return LoadedModel(opened, runner, choice, opened.threshold if threshold is None else float(threshold))
