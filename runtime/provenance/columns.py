"""The provenance columns every row carries (null when not read), registered into the row schema
when `dfx.runtime` is imported. Light: no C2PA code is imported here."""

from __future__ import annotations

from dfx.runtime.scan.results import Column, register_columns

COLUMNS = (
    Column("c2pa", "text"),  # "none" | "valid" | "trusted" | "invalid"
    Column("c2pa_failures", "text"),  # validation failure codes, "; "-joined, when invalid
    Column("claim_generator", "text"),  # the active manifest's claim generator
    Column("ai_declared", "flag"),  # the manifest (or a carried ingredient) declares AI; None: says nothing
    Column("verdict", "text"),  # c2pa.combined_verdict(): ai-declared | conflict | invalid-manifest | fake | real
    Column("provenance_error", "text"),  # why the manifest could not be read
)

register_columns(*COLUMNS)
