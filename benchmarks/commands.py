"""Subcommands of this part (registered by dfx.cli)."""

from __future__ import annotations


def register(sub) -> None:
    pass
