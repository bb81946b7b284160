"""The one row factory: logit -> decision -> row, and the hook outer rooms add columns through.

Every row dfx writes or answers with (`dfx scan`, the Detector, `dfx serve`, Ray) is made here,
so a new row field is added in one place. A `RowHook` reads extra columns from an input's
encoded bytes beside the pixels (the provenance room: C2PA) and may finish them once the
decision is known (the combined verdict); the scan core calls it without knowing what it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence

from dfx.bundle import sigmoid
from dfx.photo_data import most_fake
from dfx.runtime.scan.results import NO_FACE, Result


class RowHook(Protocol):
    """Columns a room adds to every row. Register their names with results.register_columns."""

    def read(self, data: bytes | None) -> dict[str, Any]:
        """The columns read from an input's encoded bytes; None: no bytes (an array, a PIL image,
        a file that could not be read). Never raises: a failure is a column value."""
        ...

    def finish(self, decision: str | None, columns: Mapping[str, Any]) -> dict[str, Any]:
        """The row's hook columns once the detector's decision is known (None: no score)."""
        ...


class ScanHook(RowHook, Protocol):
    """A row hook `dfx scan` also reports on: it sees every row and adds to the summary."""

    def tally(self, result: Result) -> None: ...

    def summary(self) -> dict[str, Any]:
        """Fields for the scan's JSON summary line."""
        ...

    def summary_line(self) -> str:
        """Text for the end of the terminal summary ("; 2 ai-declared"), or ""."""
        ...


@dataclass(frozen=True)
class RowFactory:
    """Makes the rows of one model: its identity, its threshold, its calibration, the hook."""

    backend: str  # the runner's backend, e.g. "ort-cpu"
    precision: str
    model_sha256: str  # of the model file the runner loaded
    threshold: float  # on the logit: logit >= threshold means "fake"
    probability: Callable[[float], float] = sigmoid  # logit -> calibrated P(fake) (Bundle.probability)
    hook: RowHook | None = None

    def decide(self, logit: float) -> str:
        return "fake" if logit >= self.threshold else "real"

    def read(self, data: bytes | None) -> dict[str, Any]:
        """The hook's columns for these bytes ({} without a hook)."""
        return self.hook.read(data) if self.hook is not None else {}

    def scored(self, name: str, logit: float, columns: Mapping[str, Any] | None = None) -> Result:
        logit = float(logit)
        decision = self.decide(logit)
        return Result(name, logit, self.probability(logit), decision, self.backend, self.precision, self.model_sha256,
                      None, extra=self._finish(decision, columns))

    def faced(self, name: str, boxes: Sequence[Any], logits: Sequence[float], columns: Mapping[str, Any] | None = None) -> Result:
        """The row of a whole photo from its faces (dfx.faces.FaceBox, the detector's logit on each
        face's crop, same order): every face with its box and scores, and the photo's decision
        is the most-fake face's (`fake` if any face is); no face found: `no_face`, never `real`."""
        if len(boxes) != len(logits):
            raise ValueError(f"{len(boxes)} faces but {len(logits)} logits")
        faces = []
        for box, logit in zip(boxes, logits):
            logit = float(logit)
            faces.append({"box": box.as_list(), "face_score": round(float(box.score), 4), "logit": logit,
                          "probability": self.probability(logit), "decision": self.decide(logit)})
        index = most_fake([f["logit"] for f in faces])  # the one rule, shared with dfx eval
        worst = faces[index] if index is not None else None
        decision = worst["decision"] if worst else NO_FACE
        extra = {**self._finish(decision, columns), "faces": len(faces), "face_boxes": faces}
        return Result(name, worst["logit"] if worst else None, worst["probability"] if worst else None, decision,
                      self.backend, self.precision, self.model_sha256, None, extra=extra)

    def windowed(self, name: str, boxes: Sequence[Any] | None, logits: Sequence[float],
                 columns: Mapping[str, Any] | None = None) -> Result:
        """The row of one input from the logits of its model windows: the image scored whole
        (`boxes` None: one logit), or face by face (one logit per box; none for no face)."""
        return self.scored(name, logits[0], columns) if boxes is None else self.faced(name, boxes, logits, columns)

    def error(self, name: str, error: str, columns: Mapping[str, Any] | None = None) -> Result:
        return Result(name, None, None, None, self.backend, self.precision, self.model_sha256, error,
                      extra=self._finish(None, columns))

    def _finish(self, decision: str | None, columns: Mapping[str, Any] | None) -> dict[str, Any]:
        if self.hook is None:
            return dict(columns or {})
        return self.hook.finish(decision, columns if columns is not None else self.hook.read(None))


def per_input(logits: Sequence[float], counts: Sequence[int]) -> list[list[float]]:
    """A batch's logits cut back into each input's: `counts[i]` windows (one, one per face, or none)."""
    out, at = [], 0
    for count in counts:
        out.append(list(logits[at:at + count]))
        at += count
    if at != len(logits):
        raise ValueError(f"{len(logits)} logits for {at} windows")
    return out
