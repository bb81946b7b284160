"""Typed errors. The CLI prints a DfxError as one line (plus its hint), never a traceback."""

from __future__ import annotations

import importlib
from types import ModuleType


class DfxError(Exception):
    """An error a user can act on. `hint` says what to try."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


class MissingExtraError(DfxError, ImportError):
    """An optional framework is not installed; the message names the pip command that fixes it."""

    def __init__(self, module: str, extra: str, why: str):
        super().__init__(
            f"{why} needs the Python module '{module}', which is not installed",
            hint=f"pip install 'dfx[{extra}]'",
        )
        self.module = module
        self.extra = extra


def require(module: str, extra: str, why: str) -> ModuleType:
    """Import an optional framework or raise MissingExtraError with the install hint."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name and not module.startswith(exc.name.split(".")[0]):
            raise  # the module exists but one of *its* imports failed: show that, not ours
        raise MissingExtraError(module, extra, why) from exc
