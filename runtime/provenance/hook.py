"""The provenance room's row hook: C2PA columns from the bytes the decode worker read, and the
combined verdict once the detector has decided. The scan calls it as any `RowHook`."""

from __future__ import annotations

import os
from typing import Any, Mapping

from dfx.runtime.provenance.c2pa import NOT_READ, ProvenanceReader, combined_verdict


class ProvenanceHook:
    """Adds the provenance columns to every row. Without a reader (off, or no `c2pa` extra)
    the columns stay null and the verdict is the detector's decision."""

    def __init__(self, reader: ProvenanceReader | None = None):
        self.reader = reader
        self.verdicts: dict[str, int] = {}  # the combined verdicts beyond fake/real that `dfx scan` counted

    @classmethod
    def maybe(cls, enabled: bool = True, trust_anchors: str | os.PathLike | None = None) -> "ProvenanceHook":
        return cls(ProvenanceReader.maybe(enabled, trust_anchors))

    @property
    def reading(self) -> bool:
        return self.reader is not None

    def read(self, data: bytes | None) -> dict[str, Any]:
        prov = self.reader.read(data) if self.reader is not None and data is not None else NOT_READ
        return prov.columns()

    def finish(self, decision: str | None, columns: Mapping[str, Any]) -> dict[str, Any]:
        return {**columns, "verdict": combined_verdict(decision, columns.get("c2pa"), columns.get("ai_declared"))}

    # ---- what `dfx scan` reports ----------------------------------------------------------------
    def tally(self, result: Any) -> None:
        verdict = result.extra.get("verdict")
        if verdict not in (None, "fake", "real", result.decision):  # beyond the detector's own call (no_face too)
            self.verdicts[verdict] = self.verdicts.get(verdict, 0) + 1

    def summary(self) -> dict[str, Any]:
        return {"provenance": self.reading, "verdicts": dict(self.verdicts)}

    def summary_line(self) -> str:
        return "".join(f"; {n} {verdict}" for verdict, n in sorted(self.verdicts.items()))
